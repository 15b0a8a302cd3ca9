"""The SQLite privacy ledger: lifecycle, refusals that change nothing, crashes, racing processes.

Budget identity (overlap of privacy units) and opening faults: tests/privacy/test_budget_identity.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safealign.data.records import PairDataset, PreferencePair
from safealign.errors import BudgetExceededError, PrivacyError
from safealign.privacy.accounting import Mechanism, compute_epsilon, naive_epsilon_sum
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.ledger_records import format_ledger

PAIRS = PairDataset(
    tuple(PreferencePair(f"prompt {i}", f"yes {i}", f"no {i}") for i in range(20)), name="synthetic"
)
TARGET_DELTA = 1e-5
REPO = Path(__file__).resolve().parents[2]
# ε ≈ 2.10 alone (RDP, δ = 1e-5); two of them compose to ≈ 2.87, and the naive sum is > 4.
RUN = Mechanism(noise_multiplier=1.0, sample_rate=0.01, steps=1000)


def _epsilon(mechanisms, accountant="rdp"):
    return compute_epsilon(mechanisms, target_delta=TARGET_DELTA, accountant=accountant).epsilon


def _dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def _register(ledger: PrivacyLedger, epsilon: float = 2.5):
    return ledger.register(
        PAIRS, privacy_unit="pair", budget_epsilon=epsilon, budget_delta=TARGET_DELTA,
        name="synthetic",
    )  # fmt: skip


@pytest.fixture
def ledger(tmp_path):
    return PrivacyLedger(tmp_path / "nested" / "ledger.sqlite")


@pytest.fixture
def people(ledger):  # the budgets PAIRS is charged on
    return _register(ledger)


def _spent(ledger, fp, accountant="rdp"):
    return ledger.spent(fp.budget_ids[0], accountant=accountant)


def test_file_is_sqlite_in_wal_mode(ledger):
    conn = sqlite3.connect(ledger.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"budgets", "units", "datasets", "releases", "charges", "mechanisms"} <= tables


def test_reserve_commit_release_lifecycle(ledger, people):
    first = ledger.reserve(people, RUN, label="reward_model", accountant="rdp", run_info={"run": 1})
    assert first.planned_epsilon == pytest.approx(_epsilon([RUN]))
    assert _spent(ledger, people).epsilon == pytest.approx(_epsilon([RUN]))
    # Early stop: the actual spend (600 steps) is recorded, not the planned one.
    early = Mechanism(1.0, 0.01, 600)
    record = ledger.commit(first.id, mechanisms=early, run_info={"stopped_at": 600})
    assert record.status == "committed" and record.actual == (early,)
    assert record.run_info == {"run": 1, "stopped_at": 600}
    assert record.actual_epsilon == pytest.approx(_epsilon([early]))
    # A second run that fails before publishing anything is released: its budget comes back.
    second = ledger.reserve(
        people, Mechanism(2.0, 0.01, 1000), label="cost_model", accountant="rdp"
    )
    with_second = _spent(ledger, people).epsilon
    assert with_second == pytest.approx(_epsilon([early, Mechanism(2.0, 0.01, 1000)]))
    assert ledger.release(second.id).status == "released"
    spend = _spent(ledger, people)
    assert spend.epsilon == pytest.approx(_epsilon([early]))
    assert spend.epsilon < with_second
    assert spend.committed_epsilon == spend.epsilon
    assert [(r.label, r.status) for r in spend.releases] == [
        ("reward_model", "committed"),
        ("cost_model", "released"),
    ]
    with pytest.raises(PrivacyError, match="already committed"):
        ledger.commit(first.id)
    with pytest.raises(PrivacyError, match="already committed"):
        ledger.release(first.id)
    assert ledger.release(second.id).status == "released"  # idempotent


def test_budget_is_checked_by_composition_not_by_sum(ledger, people):
    ledger.reserve(people, RUN, label="reward_model", accountant="rdp")
    # The sum of the two ε's (≈ 4.2) exceeds 3.0, their composition (≈ 2.87) does not.
    ledger.set_budget(people.budget_ids[0], budget_epsilon=3.0, budget_delta=TARGET_DELTA)
    second = ledger.reserve(people, RUN, label="cost_model", accountant="rdp")
    assert 2 * _epsilon([RUN]) > 3.0
    assert second.composed_epsilon == pytest.approx(_epsilon([RUN, RUN]))
    assert second.composed_epsilon < 3.0
    spend = _spent(ledger, people)
    naive = naive_epsilon_sum([RUN, RUN], target_delta=TARGET_DELTA, accountant="rdp")
    assert spend.naive_epsilon == pytest.approx(naive)
    assert spend.naive_epsilon > spend.epsilon


def test_refusal_leaves_the_database_unchanged(ledger, people):
    ledger.reserve(people, RUN, label="reward_model", accountant="rdp")
    before = _dump(ledger.path)
    with pytest.raises(BudgetExceededError) as error:
        ledger.reserve(people, RUN, label="cost_model", accountant="rdp")
    message = str(error.value)
    for number in (_epsilon([RUN]), _epsilon([RUN, RUN])):
        assert f"{number:.4f}" in message  # already spent / requested alone; composed
    assert "budget epsilon=2.5" in message and "cost_model" in message
    assert _dump(ledger.path) == before


def test_a_crashed_run_stays_reserved_and_counts(ledger, people):
    ledger.reserve(people, RUN, label="crashed", accountant="rdp")
    path = ledger.path
    del ledger  # the process dies here: neither commit nor release
    reopened = PrivacyLedger(path)
    spend = _spent(reopened, people)
    assert [(r.label, r.status) for r in spend.releases] == [("crashed", "reserved")]
    assert spend.epsilon == pytest.approx(_epsilon([RUN]))
    assert spend.committed_epsilon == 0.0
    with pytest.raises(BudgetExceededError):
        reopened.reserve(people, RUN, label="next", accountant="rdp")
    assert "reserved" in format_ledger(reopened.summary(accountant="rdp"))


def test_budget_changes_are_explicit(ledger, people):
    _register(ledger)  # unchanged: no-op
    before = _dump(ledger.path)
    with pytest.raises(PrivacyError, match="never changed by a config edit"):
        _register(ledger, epsilon=10.0)
    assert _dump(ledger.path) == before
    ledger.reserve(people, RUN, label="reward_model", accountant="rdp")
    (budget_id,) = people.budget_ids
    with pytest.raises(BudgetExceededError, match="below"):
        ledger.set_budget(
            budget_id, budget_epsilon=1.0, budget_delta=TARGET_DELTA, accountant="rdp"
        )
    ledger.set_budget(budget_id, budget_epsilon=4.0, budget_delta=TARGET_DELTA)
    assert _spent(ledger, people).budget_epsilon == 4.0


def test_no_budget_no_reservation(ledger, people):
    from dataclasses import replace

    with pytest.raises(PrivacyError, match="no privacy budget #99"):
        ledger.reserve(replace(people, budget_ids=(99,)), RUN, label="reward_model")


def test_overspend_is_recorded_then_reported(ledger, people):
    reservation = ledger.reserve(people, Mechanism(2.0, 0.01, 100), label="run", accountant="rdp")
    with pytest.raises(PrivacyError, match="spent more than it reserved"):
        ledger.commit(reservation.id, mechanisms=Mechanism(2.0, 0.01, 200))
    (record,) = _spent(ledger, people).releases
    assert record.status == "committed" and record.actual == (Mechanism(2.0, 0.01, 200),)


def test_prv_ledger_and_format(ledger, people):
    reward, cost = Mechanism(2.0, 0.05, 100), Mechanism(3.0, 0.02, 300)
    ledger.commit(
        ledger.reserve(people, reward, label="reward_model").id
    )  # default accountant: PRV
    ledger.reserve(people, cost, label="cost_model")
    summary = ledger.summary()
    (spend,) = summary
    assert spend.accountant == "prv" and spend.fallback_reason is None
    assert spend.epsilon == _epsilon([reward, cost], accountant="prv")
    assert spend.committed_epsilon < spend.epsilon < spend.naive_epsilon
    text = format_ledger(summary)
    assert "budget #1 (synthetic)" in text and "dataset   synthetic: 21 unit hashes" in text
    assert ledger.key.hex() not in text and people.dataset_key not in text
    assert f"epsilon={spend.epsilon:.4f} composed" in text
    for expected in ("reward_model", "committed", "cost_model", "reserved", "0.02", "budget"):
        assert expected in text
    assert "no budgets" in format_ledger(())


def test_a_release_may_hold_several_mechanisms(ledger, people):
    schedule = [Mechanism(3.0, 0.01, 200), Mechanism(2.0, 0.02, 100)]
    reservation = ledger.reserve(people, schedule, label="two_phase", accountant="rdp")
    assert reservation.planned_epsilon == pytest.approx(_epsilon(schedule))
    lines = format_ledger(_spent(ledger, people)).splitlines()
    assert any("two_phase" in line and "0.01" in line for line in lines)
    assert any("two_phase" not in line and "0.02" in line for line in lines)  # continuation
    record = ledger.commit(reservation.id, mechanisms=schedule[:1])
    assert record.planned == tuple(schedule) and record.actual == tuple(schedule[:1])
    assert _spent(ledger, people).epsilon == pytest.approx(_epsilon(schedule[:1]))


_CHILD = """
import json, os, sys, time
from pathlib import Path
from safealign.data.records import PairDataset, PreferencePair
from safealign.errors import BudgetExceededError
from safealign.privacy.accounting import Mechanism
from safealign.privacy.ledger import PrivacyLedger

path, ready, go, out = sys.argv[1:5]
ledger = PrivacyLedger(path)
pairs = PairDataset(
    tuple(PreferencePair(f"prompt {{i}}", f"yes {{i}}", f"no {{i}}") for i in range(20)),
    name="synthetic",
)
# The same people as the parent's: the same budget, found through the units.
budgets = ledger.register(pairs, privacy_unit="pair", budget_epsilon=2.5, budget_delta=1e-5)
Path(ready).touch()
deadline = time.monotonic() + 60
while not Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.0002)
try:
    reservation = ledger.reserve(
        budgets, Mechanism(1.0, 0.01, 1000), label="child", accountant="rdp"
    )
    result = {{"won": True, "id": reservation.id}}
except BudgetExceededError as exc:
    result = {{"won": False, "error": str(exc)}}
Path(out).write_text(json.dumps(result))
os._exit(0)  # crash on purpose: a winner never commits
"""


def _reserve_last_budget(ledger: PrivacyLedger, fp) -> dict[str, object]:
    try:
        reservation = ledger.reserve(fp, RUN, label="parent", accountant="rdp")
    except BudgetExceededError as exc:
        return {"won": False, "error": str(exc)}
    return {"won": True, "id": reservation.id}  # and never committed: a crash


def test_two_processes_racing_for_the_last_budget_exactly_one_wins(ledger, people, tmp_path):
    # This process and one child (importing opacus costs seconds, so only one) reserve RUN at
    # the same instant: it fits alone (ε ≈ 2.10 <= 2.5) but not twice (composed ≈ 2.87). The
    # reserve transaction holds the write lock for the whole accounting (~50 ms), so the two
    # attempts overlap; with a deferred BEGIN the loser dies with "database is locked" or both win.
    ready, go, out = (tmp_path / name for name in ("ready", "go", "out"))
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD.format(),
            str(ledger.path),
            str(ready),
            str(go),
            str(out),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and child.poll() is None, "the child did not start"
        time.sleep(0.005)
    go.touch()
    results = [_reserve_last_budget(ledger, people)]
    assert child.wait(timeout=60) == 0
    results.append(json.loads(out.read_text()))
    winners = [r for r in results if r["won"]]
    assert len(winners) == 1, results
    (loser,) = [r for r in results if not r["won"]]
    assert "budget epsilon=2.5" in loser["error"]
    (record,) = _spent(ledger, people).releases
    assert (record.id, record.status) == (winners[0]["id"], "reserved")  # the crash stays visible
