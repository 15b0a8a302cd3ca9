"""A cost model's DP calibration is charged once, also when its run is interrupted and resumed.

A private cost model's plan ends with the calibration steps (:mod:`safealign.privacy.calibration`),
which no checkpoint records. Once training ends, the charge counts the calibration as started, so
a run interrupted then is charged the whole plan; its resume restores the checkpoint (the
training steps) and runs the calibration again, on that charge: the interrupted calibration's
shift was never written anywhere. Measured on the old code: the resume reserved and committed
the calibration steps a second time (two ledger rows, 30 + 20 steps for a 30-step plan of 10
training and 20 calibration steps), so the dataset's ε was above the released model's. A
calibration that may have reached the run directory (a crash after the commit, while the model
was being written) is a release of its own, and a new one is still charged.
"""

from __future__ import annotations

import os
import signal

import pytest

import safealign.privacy.release as release
import safealign.privacy.training as training
from safealign.config import load_config
from safealign.data.synthetic import SyntheticWorld
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.plan import plan_training
from safealign.privacy.release import train_on_budget


def _config(tmp_path):
    return load_config(
        None,
        [
            "data.synthetic.num_users=8",
            "data.synthetic.pairs_per_user=20",
            "data.synthetic.num_prompts=60",
            "cost_model.backbone=features",
            "cost_model.lora=null",
            "cost_model.train.batch_size=16",
            "cost_model.train.epochs=1",
            "cost_model.train.calibration_epochs=2",
            "cost_model.privacy.accountant=rdp",
            "cost_model.privacy.target_epsilon=2.0",
            "cost_model.privacy.target_delta=1e-3",
            "budget.epsilon=20",
            "budget.delta=1e-3",
            f"budget.ledger={tmp_path / 'ledger.sqlite'}",
        ],
    )


@pytest.fixture
def setup(tmp_path):
    config = _config(tmp_path)
    pairs = SyntheticWorld(config.data.synthetic, seed=0).pairs
    plan = plan_training(len(pairs), config.cost_model, calibration=True)
    assert plan.calibration_steps > 0
    return config, pairs, plan


def _train(config, pairs, out):
    return train_on_budget(
        pairs, kind="cost", config=config.cost_model, budget=config.budget,
        source=pairs, seed=0, out_dir=out, progress=False,
    )  # fmt: skip


def _rows(config, pairs):
    """``[(status, steps counted)]`` of the dataset's ledger releases, and its composed ε."""
    spend = PrivacyLedger(config.budget.ledger).dataset_spend(pairs.fingerprint, accountant="rdp")
    return [(r.status, sum(m.steps for m in r.counted)) for r in spend.releases], spend.epsilon


def _stop():
    raise KeyboardInterrupt


def test_attack_a_resume_after_training_does_not_recharge_the_calibration(
    setup, tmp_path, monkeypatch
):
    config, pairs, plan = setup
    out = tmp_path / "cost"
    monkeypatch.setattr(training, "fit_shift", lambda *a, **k: _stop())
    for _ in range(2):  # interrupted in the calibration, then its resume interrupted there too
        with pytest.raises(KeyboardInterrupt):
            _train(config, pairs, out)
        assert _rows(config, pairs)[0] == [("committed", plan.steps)]
    monkeypatch.undo()
    done = _train(config, pairs, out)
    receipt = done.result.receipt
    assert receipt.steps == plan.steps and receipt.calibration_steps == plan.calibration_steps
    assert "train/calibration_shift" in receipt.metrics
    rows, epsilon = _rows(config, pairs)
    assert rows == [("committed", plan.steps)]  # old code: a second row, the calibration again
    assert epsilon == pytest.approx(receipt.epsilon, rel=1e-9)


def test_a_run_killed_in_the_calibration_is_charged_once(setup, tmp_path, monkeypatch):
    config, pairs, plan = setup
    out = tmp_path / "cost"
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child never returns)
        try:
            kill = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
            monkeypatch.setattr(training, "fit_shift", kill)
            _train(config, pairs, out)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert _rows(config, pairs)[0] == [("reserved", plan.steps)]
    done = _train(config, pairs, out)
    rows, epsilon = _rows(config, pairs)
    assert rows == [("committed", plan.steps)]
    assert epsilon == pytest.approx(done.result.receipt.epsilon, rel=1e-9)


def test_a_calibration_that_may_have_been_written_is_charged_again(setup, tmp_path, monkeypatch):
    """The first run committed (its block ended) and then crashed writing the model: its shift
    may lie in the run directory, so the resume's new calibration is a new release."""
    config, pairs, plan = setup
    out = tmp_path / "cost"
    original = release.save_training_output

    def crash_after_the_model(result, out_dir):
        original(result, out_dir)
        (out_dir / "receipt.json").unlink()  # the model and its shift are written; no receipt
        raise KeyboardInterrupt

    monkeypatch.setattr(release, "save_training_output", crash_after_the_model)
    with pytest.raises(KeyboardInterrupt):
        _train(config, pairs, out)
    monkeypatch.undo()
    assert _rows(config, pairs)[0] == [("committed", plan.steps)]
    done = _train(config, pairs, out)
    rows, epsilon = _rows(config, pairs)
    assert rows == [("committed", plan.steps), ("committed", plan.calibration_steps)]
    assert epsilon >= done.result.receipt.epsilon * (1 + 1e-6)
