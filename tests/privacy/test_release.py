"""Training under the ledger: refusal leaves everything unchanged; interruptions are charged once."""

from __future__ import annotations

import sqlite3

import pytest

from safealign.cli import main
from safealign.config import load_config
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import BudgetExceededError
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.release import train_and_record

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
    return train_and_record(
        pairs,
        kind="reward",
        config=config.reward_model,
        budget=config.budget,
        dataset_fingerprint=pairs.fingerprint,
        dataset_name="w",
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
    alone = PrivacyLedger(ledger_path).spent(fingerprint, accountant="rdp").epsilon

    import safealign.privacy.release as release

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
    statuses = [r.status for r in PrivacyLedger(ledger_path).spent(fingerprint).releases]
    assert statuses == ["committed", "committed"]  # the 2 steps taken are charged
    resumed = _run(config, pairs, tmp_path / "run")
    assert resumed.result.receipt.epsilon == pytest.approx(reference.result.receipt.epsilon)
    summary = PrivacyLedger(ledger_path).spent(fingerprint, accountant="rdp")
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
    import safealign.run_stages as run_stages

    ledger_path = tmp_path / "ledger.sqlite"
    config = load_config(None, [*TINY, "budget.epsilon=5", f"budget.ledger={ledger_path}"])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # after the data may have been touched

    monkeypatch.setattr(run_stages, "run_privacy_audit", crash)
    with pytest.raises(KeyboardInterrupt):
        run_stages.privacy_audit_stage(
            config, out_dir=tmp_path / "audit", num_canaries=8, noise_off=False, progress=False
        )
    releases = [r for s in PrivacyLedger(ledger_path).summary() for r in s.releases]
    assert [(r.label, r.status) for r in releases] == [("privacy audit", "committed")]
