"""Training under the ledger: refusal leaves everything unchanged; interruptions are charged once.

The failure policy of :func:`safealign.privacy.release.charge`, path by path: in each, the
ledger's final composed ε for the dataset is at least the receipt's ε of the released model.
Measured on the old code (issue 12, finding 3): killed at step 63 of 96, a retry with another
batch size exited 2 but *released* the killed run's reservation, and the correct re-run was
charged 33 of 96 steps (ledger ε 0.542, receipt ε 0.999).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3

import pytest

import safealign.privacy.release as release
from safealign.cli import main
from safealign.config import load_config
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import BudgetExceededError, ConfigError, PrivacyError
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.release import train_on_budget

TINY = [
    "data.synthetic.num_users=6",
    "data.synthetic.pairs_per_user=10",
    "data.synthetic.num_prompts=40",
    "reward_model.train.batch_size=12",
    "reward_model.train.epochs=1",
    "reward_model.privacy.accountant=rdp",
    "reward_model.privacy.target_delta=1e-3",
    "budget.delta=1e-3",
    "reward_model.privacy.target_epsilon=1.0",
    "cost_model.privacy.target_epsilon=1.0",
    "cost_model.privacy.target_delta=1e-3",
]


def _dump(path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def _run(config, pairs, out, **kwargs):
    return train_on_budget(
        pairs,
        kind="reward",
        config=config.reward_model,
        budget=config.budget,
        source=pairs,
        seed=0,
        out_dir=out,
        progress=False,
        **kwargs,
    )


def test_second_run_over_budget_is_refused_and_changes_nothing(tmp_path):
    config = load_config(
        None, [*TINY, "budget.epsilon=1.2", f"budget.ledger={tmp_path / 'ledger.sqlite'}"]
    )
    pairs = SyntheticWorld(config.data.synthetic, seed=0).pairs
    first = _run(config, pairs, tmp_path / "a")
    assert first.result.receipt.epsilon <= 1.0 and first.release_id == 1
    before = _dump(tmp_path / "ledger.sqlite")
    with pytest.raises(BudgetExceededError, match="budget"):
        _run(config, pairs, tmp_path / "b")
    assert _dump(tmp_path / "ledger.sqlite") == before
    assert not (tmp_path / "b").exists()


def test_interrupted_run_is_charged_once(tmp_path):
    ledger_path = tmp_path / "ledger.sqlite"
    config = load_config(None, [*TINY, "budget.epsilon=5", f"budget.ledger={ledger_path}"])
    pairs = SyntheticWorld(config.data.synthetic, seed=0).pairs
    reference = _run(config, pairs, tmp_path / "ref")
    fingerprint = pairs.fingerprint
    alone = PrivacyLedger(ledger_path).dataset_spend(fingerprint, accountant="rdp").epsilon

    original = release.train_scoring_model

    def interrupted(*args, on_step=None, **kwargs):
        def stop(step):
            on_step(step)
            if step == 2:
                raise KeyboardInterrupt

        return original(*args, on_step=stop, **kwargs)

    release.train_scoring_model = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(config, pairs, tmp_path / "run")
    finally:
        release.train_scoring_model = original
    spend = PrivacyLedger(ledger_path).dataset_spend(fingerprint)
    statuses = [r.status for r in spend.releases]
    assert statuses == ["committed", "committed"]  # the 2 steps taken are charged
    resumed = _run(config, pairs, tmp_path / "run")
    assert resumed.result.receipt.epsilon == pytest.approx(reference.result.receipt.epsilon)
    summary = PrivacyLedger(ledger_path).dataset_spend(fingerprint, accountant="rdp")
    # Two full runs' worth composed: the interrupted one is charged exactly once in total.
    assert len(summary.releases) == 3
    from safealign.privacy.accounting import compute_epsilon

    mech = reference.result.receipt.mechanism
    expected = compute_epsilon(
        [mech, mech], target_delta=config.budget.delta, accountant="rdp"
    ).epsilon
    assert summary.epsilon == pytest.approx(expected, rel=1e-6)
    assert summary.epsilon > alone


def test_cli_refusal_exits_2_and_ledger_show(tmp_path, capsys):
    ledger_path = tmp_path / "ledger.sqlite"
    args = [*TINY, "budget.epsilon=1.2", f"budget.ledger={ledger_path}"]
    assert (
        main(["train-reward", "examples/synthetic.yaml", "--out", str(tmp_path / "a"), *args]) == 0
    )
    assert (tmp_path / "a" / "receipt.json").exists() and (
        tmp_path / "a" / "model" / "scalar_model.json"
    ).exists()
    assert (
        main(["train-reward", "examples/synthetic.yaml", "--out", str(tmp_path / "b"), *args]) == 2
    )
    err = capsys.readouterr().err
    assert "error:" in err and "budget" in err and "Traceback" not in err
    assert main(["ledger", "show", "--ledger", str(ledger_path)]) == 0
    out = capsys.readouterr().out
    assert "reward model" in out and "committed" in out


def test_privacy_audit_is_charged_even_when_it_fails(tmp_path, monkeypatch):
    import safealign.run.privacy_audit as privacy_audit
    from safealign.run import Workspace

    ledger_path = tmp_path / "ledger.sqlite"
    config = load_config(None, [*TINY, "budget.epsilon=5", f"budget.ledger={ledger_path}"])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # after the data may have been touched

    monkeypatch.setattr(privacy_audit, "run_privacy_audit", crash)
    with pytest.raises(KeyboardInterrupt):
        privacy_audit.audit_privacy(
            Workspace(config, tmp_path / "audit"), num_canaries=8, noise_off=False, progress=False
        )
    releases = [r for s in PrivacyLedger(ledger_path).summary() for r in s.releases]
    assert [(r.label, r.status) for r in releases] == [("privacy audit", "committed")]


# ---- every failure path of charge(): the ledger never ends below the receipt ------------------

STEPS = [*TINY, "reward_model.train.epochs=3", "budget.epsilon=5"]  # 15 steps of q = 0.2


def _setup(tmp_path, *extra):
    config = load_config(None, [*STEPS, f"budget.ledger={tmp_path / 'ledger.sqlite'}", *extra])
    return config, SyntheticWorld(config.data.synthetic, seed=0).pairs


def _interrupting(at_step: int, how):
    """train_scoring_model, with ``how()`` called at step ``at_step`` (after its checkpoint)."""
    original = release.train_scoring_model

    def train(*args, on_step=None, **kwargs):
        def hook(step):
            if step == at_step:
                how()
            on_step(step)

        return original(*args, on_step=hook, **kwargs)

    return train


def _killed(config, pairs, out, at_step: int, monkeypatch) -> None:
    """Run in a forked child that SIGKILLs itself at ``at_step``: a hard crash, no handler runs."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child never returns)
        try:
            kill = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
            monkeypatch.setattr(release, "train_scoring_model", _interrupting(at_step, kill))
            _run(config, pairs, out)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _ledger_at_least_receipt(config, pairs, receipt) -> float:
    ledger = PrivacyLedger(config.budget.ledger)
    spend = ledger.dataset_spend(pairs.fingerprint, accountant="rdp")
    assert spend.epsilon >= receipt.epsilon * (1 - 1e-9), (spend.epsilon, receipt.epsilon)
    return spend.epsilon


@pytest.mark.parametrize("at_step", [1, 7])
def test_a_killed_run_stays_charged_and_its_resume_is_charged_once(tmp_path, monkeypatch, at_step):
    config, pairs = _setup(tmp_path)
    _killed(config, pairs, tmp_path / "run", at_step, monkeypatch)
    (record,) = PrivacyLedger(config.budget.ledger).dataset_spend(pairs.fingerprint).releases
    assert record.status == "reserved" and record.planned[0].steps == 15
    done = _run(config, pairs, tmp_path / "run")
    assert done.result.receipt.steps == 15 and done.release_id == record.id  # reused
    spent = _ledger_at_least_receipt(config, pairs, done.result.receipt)
    assert spent == pytest.approx(done.result.receipt.epsilon, rel=1e-9)  # and not twice


def test_a_changed_retry_leaves_the_killed_run_charged(tmp_path, monkeypatch):
    config, pairs = _setup(tmp_path)
    _killed(config, pairs, tmp_path / "run", 7, monkeypatch)
    before = _dump(config.budget.ledger)
    changed, _ = _setup(tmp_path, "reward_model.train.batch_size=13")
    with pytest.raises(ConfigError, match="holds an interrupted run .* another plan"):
        _run(changed, pairs, tmp_path / "run")
    assert _dump(config.budget.ledger) == before  # nothing released, nothing reserved
    other = SyntheticWorld(config.data.synthetic, seed=0).pairs[:-1]  # other data, same plan?
    with pytest.raises(ConfigError, match="another (data|plan)"):
        _run(config, other, tmp_path / "run")
    done = _run(config, pairs, tmp_path / "run")
    assert done.result.receipt.steps == 15
    _ledger_at_least_receipt(config, pairs, done.result.receipt)


def test_an_interrupted_resume_never_releases_the_killed_runs_steps(tmp_path, monkeypatch):
    config, pairs = _setup(tmp_path)
    _killed(config, pairs, tmp_path / "run", 7, monkeypatch)

    def stop():
        raise KeyboardInterrupt

    original = release.train_scoring_model

    def before_any_step(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the checkpoint is restored

    monkeypatch.setattr(release, "train_scoring_model", before_any_step)
    with pytest.raises(KeyboardInterrupt):
        _run(config, pairs, tmp_path / "run")
    (record,) = PrivacyLedger(config.budget.ledger).dataset_spend(pairs.fingerprint).releases
    assert record.status == "committed" and record.actual[0].steps == 7  # the checkpoint's
    monkeypatch.setattr(release, "train_scoring_model", original)
    monkeypatch.setattr(release, "train_scoring_model", _interrupting(10, stop))
    with pytest.raises(KeyboardInterrupt):
        _run(config, pairs, tmp_path / "run")
    monkeypatch.setattr(release, "train_scoring_model", original)
    done = _run(config, pairs, tmp_path / "run")
    spend = PrivacyLedger(config.budget.ledger).dataset_spend(pairs.fingerprint, accountant="rdp")
    assert [sum(m.steps for m in r.counted) for r in spend.releases] == [7, 3, 5]
    assert _ledger_at_least_receipt(config, pairs, done.result.receipt) == pytest.approx(
        done.result.receipt.epsilon, rel=1e-9
    )


def test_a_failure_before_the_first_step_is_released(tmp_path, monkeypatch):
    config, pairs = _setup(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory while building the model")

    monkeypatch.setattr(release, "train_scoring_model", broken)
    with pytest.raises(RuntimeError):
        _run(config, pairs, tmp_path / "run")
    spend = PrivacyLedger(config.budget.ledger).dataset_spend(pairs.fingerprint)
    assert [r.status for r in spend.releases] == ["released"] and spend.epsilon == 0.0


def test_a_checkpoint_without_its_charge_record_is_refused(tmp_path, monkeypatch):
    config, pairs = _setup(tmp_path)
    _killed(config, pairs, tmp_path / "run", 7, monkeypatch)
    (tmp_path / "run" / release.RESERVATION_FILE).unlink()
    with pytest.raises(PrivacyError, match="checkpoint at step 7 but no reservation.json"):
        _run(config, pairs, tmp_path / "run")


def test_the_torchrun_entry_point_charges_the_ledger_like_train_reward(tmp_path, capsys):
    from safealign.cli import distributed

    ledger_path = tmp_path / "ledger.sqlite"
    config = tmp_path / "config.yaml"
    config.write_text("reward_model: {backbone: tiny}\n")
    args = [*TINY, "budget.epsilon=1.2", f"budget.ledger={ledger_path}"]
    # Without torchrun it is one rank: the same entry point, charged by rank 0.
    assert distributed.main([str(config), "--out", str(tmp_path / "a"), *args]) == 0
    receipt = json.loads((tmp_path / "a" / "receipt.json").read_text())
    (budget,) = PrivacyLedger(ledger_path).summary(accountant="rdp")
    assert [(r.status, r.actual[0].steps) for r in budget.releases] == [
        ("committed", receipt["steps"])
    ]
    assert budget.epsilon == pytest.approx(receipt["epsilon"], rel=1e-9)
    assert distributed.main([str(config), "--out", str(tmp_path / "b"), *args]) == 2
    assert "refusing" in capsys.readouterr().err and not (tmp_path / "b").exists()
