"""What identifies a budget (privacy units, declared id), and faults found when the ledger opens.

The attack (issue 12, finding 2): editing the data, or running from another working directory,
must not open a fresh budget over the same people. Measured on the old code: dropping 1 of 60
records, one trailing space, padding with dummies and a second working directory each got a
fresh budget (5 of 5 runs at ε ≈ 3 accepted, composed ε 6.71 under a budget of 4).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest

from safealign.cli import main
from safealign.data.records import PairDataset, PreferencePair, normalise_text
from safealign.errors import ConfigError, PrivacyError
from safealign.privacy.identity import default_ledger_path, unit_keys
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.ledger_store import SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[2]
PAIRS = tuple(
    PreferencePair(
        f"How do I fix bike {i}?", f"Check chain {i}.", f"No idea {i}.", user_id=f"u{i % 7}"
    )
    for i in range(60)
)


def _register(ledger, pairs, *, unit="pair", dataset_id=None, epsilon=4.0):
    dataset = PairDataset(tuple(pairs), name="prefs")
    return ledger.register(
        dataset, privacy_unit=unit, budget_epsilon=epsilon, budget_delta=1e-5,
        dataset_id=dataset_id, name=dataset.name,
    ).budget_ids  # fmt: skip


def test_normalised_text_ignores_invisible_differences():
    base = "Hello World"
    for variant in ("hello world", " Hello  World ", "Hello\u200bWorld".replace("W", " W"),
                    "Ｈｅｌｌｏ Ｗｏｒｌｄ", "Hello\tWorld\n", "HELLO\u00a0WORLD"):  # fmt: skip
        assert normalise_text(variant) == normalise_text(base), variant
    assert normalise_text("Hello Word") != normalise_text(base)


def test_unit_keys_are_keyed_and_order_free():
    pair = PAIRS[0]
    swapped = PreferencePair(pair.prompt, pair.rejected, pair.chosen, safer="chosen")
    assert unit_keys(b"k" * 32, [pair], "pair") == unit_keys(b"k" * 32, [swapped], "pair")
    assert unit_keys(b"k" * 32, [pair], "pair") != unit_keys(b"j" * 32, [pair], "pair")
    assert len(unit_keys(b"k" * 32, [pair], "user")) == 2  # the pair and its user


@pytest.mark.parametrize(
    "edit",
    ["drop one", "trailing space", "dummies", "zero-width", "re-cased", "responses swapped"],
)
def test_an_edited_copy_is_charged_on_the_same_budget(tmp_path, edit):
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    first = _register(ledger, PAIRS)
    p = PAIRS[0]
    edited = {
        "drop one": PAIRS[1:],
        "trailing space": (PreferencePair(p.prompt + " ", p.chosen, p.rejected), *PAIRS[1:]),
        "dummies": PAIRS + tuple(PreferencePair(f"d{i}", "a", "b") for i in range(100)),
        "zero-width": tuple(
            PreferencePair(q.prompt.replace(" ", " \u200b"), q.chosen, q.rejected) for q in PAIRS
        ),
        "re-cased": tuple(PreferencePair(q.prompt.upper(), q.chosen, q.rejected) for q in PAIRS),
        "responses swapped": tuple(PreferencePair(q.prompt, q.rejected, q.chosen) for q in PAIRS),
    }[edit]
    assert _register(ledger, edited) == first
    other = _register(ledger, [PreferencePair("unrelated", "a", "b")])
    assert other != first


def test_user_level_budget_follows_the_users_and_a_declared_id_joins_budgets(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    (users,) = _register(ledger, PAIRS, unit="user")
    # New pairs from the same annotators: under user-level DP these are the same people.
    fresh = [PreferencePair(f"new {i}", "x", "y", user_id=f" U{i % 7}") for i in range(10)]
    assert _register(ledger, fresh, unit="user") == (users,)
    (declared,) = _register(ledger, [PreferencePair("other", "a", "b")], dataset_id="chats-2024")
    assert declared != users
    # Shares units with the first budget and the declared id of the second: charged on both.
    both = _register(ledger, [*PAIRS[:3], PreferencePair("z", "a", "b")], dataset_id="Chats-2024")
    assert both == (users, declared)
    later = _register(ledger, [PreferencePair("z", "a", "b")])  # only the last one's new unit
    assert later == (users, declared)
    names = [(d.name, d.dataset_id) for d in ledger.spent(declared).datasets]
    assert ("prefs", "chats-2024") in names


def test_a_release_on_two_budgets_must_fit_both(tmp_path):
    from safealign.errors import BudgetExceededError
    from safealign.privacy.accounting import Mechanism

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    run = Mechanism(1.0, 0.01, 1000)  # ε ≈ 2.1 alone; two compose to ≈ 2.9
    a = ledger.register(PairDataset(PAIRS[:30]), privacy_unit="pair", budget_epsilon=2.5,
                        budget_delta=1e-5)  # fmt: skip
    b = ledger.register(PairDataset(PAIRS[30:]), privacy_unit="pair", budget_epsilon=2.5,
                        budget_delta=1e-5)  # fmt: skip
    ledger.reserve(a, run, label="on a", accountant="rdp")
    union = ledger.register(PairDataset(PAIRS), privacy_unit="pair", budget_epsilon=2.5,
                            budget_delta=1e-5)  # fmt: skip
    assert union.budget_ids == a.budget_ids + b.budget_ids
    with pytest.raises(BudgetExceededError, match=f"budget #{a.budget_ids[0]}"):
        ledger.reserve(union, run, label="on both", accountant="rdp")
    ledger.reserve(b, run, label="on b", accountant="rdp")  # b alone still has room


def test_default_ledger_is_per_user(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEALIGN_HOME", str(tmp_path / "home"))
    assert PrivacyLedger().path == tmp_path / "home" / "ledger.sqlite" == default_ledger_path()


TINY = [
    "data.synthetic.num_users=6", "data.synthetic.pairs_per_user=10",
    "data.synthetic.num_prompts=40", "reward_model.train.batch_size=12",
    "reward_model.train.epochs=2", "reward_model.privacy.accountant=rdp",
    "reward_model.privacy.target_delta=1e-3", "budget.delta=1e-3",
    "reward_model.privacy.target_epsilon=3.0", "cost_model.privacy.target_epsilon=3.0",
    "cost_model.privacy.target_delta=1e-3", "budget.epsilon=4", "data.format=jsonl",
]  # fmt: skip


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_edits_and_another_working_directory_do_not_reset_the_budget(tmp_path, monkeypatch, capsys):
    # One run at ε ≈ 3 fits a budget of 4; a second one on the same people (composed ≈ 4.15)
    # does not. The old ledger (keyed on the exact bytes, in ./) accepted all five runs.
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in PAIRS]
    variants = {
        "drop_one": rows[1:],
        "trailing_space": [{**rows[0], "prompt": rows[0]["prompt"] + " "}, *rows[1:]],
        "dummies": rows
        + [{"prompt": f"dummy {i}", "chosen": "a", "rejected": "b"} for i in range(5)],
    }

    def train(name: str, data: Path) -> int:
        out = str(tmp_path / "out" / name)
        config = str(REPO / "examples" / "synthetic.yaml")
        return main(["train-reward", config, "--out", out, *TINY, f"data.source={data}"])

    original = _write(tmp_path / "original.jsonl", rows)
    monkeypatch.chdir(tmp_path)
    assert train("original", original) == 0
    for name, data in variants.items():
        assert train(name, _write(tmp_path / f"{name}.jsonl", data)) == 2, name
        assert "on the same people" in capsys.readouterr().err
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert train("second_cwd", original) == 2
    (budget,) = PrivacyLedger().summary(accountant="rdp")
    assert [r.status for r in budget.releases] == ["committed"]
    assert budget.epsilon <= budget.budget_epsilon
    assert main(["ledger", "show"]) == 0
    shown = capsys.readouterr().out
    assert "budget #1 (original.jsonl)" in shown and "original.jsonl: " in shown


def test_delta_not_below_one_over_n_is_refused_before_anything_is_spent(tmp_path, capsys):
    data = _write(tmp_path / "d.jsonl", [{"prompt": p.prompt, "chosen": p.chosen,
                                          "rejected": p.rejected} for p in PAIRS])  # fmt: skip
    ledger = tmp_path / "ledger.sqlite"
    base = ["train-reward", str(REPO / "examples" / "synthetic.yaml"), "--out",
            str(tmp_path / "out"), *TINY, f"data.source={data}", f"budget.ledger={ledger}"]  # fmt: skip
    # 60 pairs: 1/n ≈ 0.0167. With δ = 0.02 the report's ε would look smaller, at no cost.
    assert main([*base, "budget.delta=0.02", "reward_model.privacy.target_delta=0.02"]) == 2
    err = capsys.readouterr().err
    assert "budget.delta: 0.02 is not below 1/n = 0.0167 for the 60 privacy units" in err
    # Nothing spent or written: no ledger, and at most the empty directory pre-flight checked.
    assert not ledger.exists() and not any((tmp_path / "out").glob("*"))
    assert main([*base, "budget.delta=0.05", "reward_model.privacy.target_delta=0.02"]) == 2
    assert "budget.delta: 0.05" in capsys.readouterr().err


# ---- faults found when the ledger is opened (issue 18, finding 5) -----------------------------


def _real_ledger(path: Path) -> Path:
    ledger = PrivacyLedger(path)
    for i in range(40):  # a few pages of data, so that truncation cuts through tables
        _register(ledger, [PreferencePair(f"p{i}-{j}", "a", "b") for j in range(50)])
    return path


def test_a_directory_or_a_path_under_a_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a ledger file"):
        PrivacyLedger(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="lies under .*file, which is a regular file"):
        PrivacyLedger(tmp_path / "file" / "sub" / "ledger.sqlite")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zeroed page"])
def test_a_corrupt_or_truncated_ledger_is_refused_with_its_path(tmp_path, damage):
    path = _real_ledger(tmp_path / "ledger.sqlite")
    data = path.read_bytes()
    assert len(data) > 8 * 4096
    damaged = {
        "garbage": b"this is not a database" * 100,
        "truncated": data[: len(data) // 2],
        "zeroed page": data[:4096] + b"\0" * 4096 + data[8192:],
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(PrivacyError, match=f"{path}: not a readable privacy ledger.*backup"):
        PrivacyLedger(path)


def test_a_ledger_locked_past_the_busy_timeout_is_a_clear_error(tmp_path):
    path = _real_ledger(tmp_path / "ledger.sqlite")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a reservation
    try:
        with pytest.raises(
            PrivacyError, match="stayed locked by another process for more than 0.2 s"
        ):
            PrivacyLedger(path, busy_timeout_s=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    PrivacyLedger(path, busy_timeout_s=0.2)  # free again


def test_a_read_only_directory_is_found_when_opening(tmp_path, monkeypatch):
    path = _real_ledger(tmp_path / "ro" / "ledger.sqlite")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # As root (this machine's CI) chmod does not stop writes: make the probe see EACCES.
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(ConfigError, match="cannot write in .*ro .Permission denied"):
        PrivacyLedger(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_for_real(tmp_path):
    path = _real_ledger(tmp_path / "ro" / "ledger.sqlite")
    os.chmod(path.parent, 0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write in"):
            PrivacyLedger(path)
    finally:
        os.chmod(path.parent, 0o700)


_V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    fingerprint TEXT PRIMARY KEY,
    name TEXT,
    budget_epsilon REAL NOT NULL CHECK (budget_epsilon > 0),
    budget_delta REAL NOT NULL CHECK (budget_delta > 0 AND budget_delta < 1),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL REFERENCES datasets (fingerprint),
    label TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'committed', 'released')),
    accountant TEXT NOT NULL,
    fallback_reason TEXT,
    planned_epsilon REAL NOT NULL,
    actual_epsilon REAL,
    composed_epsilon REAL NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    run_info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mechanisms (
    release_id INTEGER NOT NULL REFERENCES releases (id),
    phase TEXT NOT NULL CHECK (phase IN ('planned', 'actual')),
    position INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    PRIMARY KEY (release_id, phase, position)
);
CREATE INDEX IF NOT EXISTS releases_by_dataset ON releases (fingerprint, status);
"""


def test_a_version_1_ledger_is_migrated_with_its_spend(tmp_path):
    from safealign.privacy.accounting import Mechanism, compute_epsilon

    path = tmp_path / "ledger.sqlite"
    dataset = PairDataset(PAIRS, name="prefs")
    conn = sqlite3.connect(path)
    conn.executescript(_V1_SCHEMA)
    conn.execute(
        "INSERT INTO datasets VALUES (?, 'prefs', 4.0, 1e-5, 't0')", (dataset.fingerprint,)
    )
    conn.execute(
        "INSERT INTO releases VALUES (7, ?, 'reward model', 'committed', 'rdp', NULL, 2.1, 2.1, "
        "2.1, 't0', 't1', '{}')",
        (dataset.fingerprint,),
    )
    conn.executemany(
        "INSERT INTO mechanisms VALUES (7, ?, 0, 1.0, 0.01, 1000)", [("planned",), ("actual",)]
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    ledger = PrivacyLedger(path)
    # The same data finds its old budget (through the exact fingerprint), spend included; from
    # then on its units are known, so an edited copy lands there too.
    assert _register(ledger, PAIRS) == (1,)
    assert _register(ledger, PAIRS[1:]) == (1,)
    spend = ledger.spent(1, accountant="rdp")
    assert [(r.id, r.status, r.budget_ids) for r in spend.releases] == [(7, "committed", (1,))]
    run = Mechanism(1.0, 0.01, 1000)
    assert spend.epsilon == compute_epsilon([run], target_delta=1e-5, accountant="rdp").epsilon
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert not any(name.startswith("v1_") for name in tables)


def test_an_unknown_schema_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE budgets (id INTEGER)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(PrivacyError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        PrivacyLedger(path)


@pytest.mark.parametrize("fault", ["directory", "corrupt"])
def test_the_cli_turns_ledger_faults_into_exit_2(tmp_path, capsys, fault):
    path = tmp_path / "ledger.sqlite"
    if fault == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"SQLite format 3\0" + b"\xff" * 5000)
    assert main(["ledger", "show", "--ledger", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_the_old_default_ledger_in_the_working_directory_is_not_forgotten(tmp_path, monkeypatch):
    from safealign.config import BudgetConfig
    from safealign.privacy.release import LEGACY_LEDGER, open_ledger

    monkeypatch.chdir(tmp_path)
    PrivacyLedger(tmp_path / LEGACY_LEDGER)
    with pytest.raises(ConfigError, match=f"holds {LEGACY_LEDGER}, a ledger of an earlier"):
        open_ledger(BudgetConfig())
    assert open_ledger(BudgetConfig(ledger=LEGACY_LEDGER)).path == Path(LEGACY_LEDGER)
