"""DP calibration of a cost model's level: unbiased, inside the planned mechanism, on the receipt."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from safealign.config import load_config
from safealign.data.synthetic import SyntheticWorld
from safealign.privacy.accounting import Mechanism, compute_epsilon
from safealign.privacy.calibration import fit_shift
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.plan import plan_training
from safealign.privacy.release import train_on_budget
from safealign.privacy.training import train_cost_model, train_reward_model


def _biased_world(n: int, offset: float, seed: int = 0):
    """Costs that are the true log-odds minus ``offset``: the right shift is about ``offset``."""
    g = torch.Generator().manual_seed(seed)
    true = 3.0 * torch.randn(n, 2, generator=g, dtype=torch.float64) - 1.0
    unsafe = (torch.rand(n, 2, generator=g, dtype=torch.float64) < torch.sigmoid(true)).double()
    weights = torch.full((n, 2), 0.5, dtype=torch.float64)
    return true - offset, unsafe, weights


def _mle_shift(costs, unsafe) -> float:
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], max_iter=200, tolerance_grad=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(costs + b, unsafe)
        loss.backward()
        return loss

    opt.step(closure)
    return float(b.detach())


def test_without_noise_full_batch_descent_reaches_the_maximum_likelihood_shift():
    costs, unsafe, weights = _biased_world(4000, offset=2.0)
    n = len(costs)
    shift = fit_shift(
        costs, unsafe, weights, torch.arange(n), n,
        sample_rate=1.0, noise_multiplier=0.0, max_grad_norm=1.0, steps=400,
    )  # fmt: skip
    assert shift == pytest.approx(_mle_shift(costs, unsafe), abs=1e-3)
    assert shift == pytest.approx(2.0, abs=0.3)


def test_clipping_at_one_never_binds_so_the_step_is_unbiased():
    # A pair's gradient in b is a weighted mean of sigmoid(c + b) - y over its labelled responses,
    # so at max_grad_norm >= 1 clipping cannot change it: without noise and with every pair in
    # every batch, the fitted shift is the same at a clipping norm of 1 as at one far above.
    # Pairs with one label (weight 1) and with two (weights 1/2 each), confidently wrong and right.
    costs, unsafe, weights = _biased_world(2000, offset=2.0)
    costs = costs * 50
    weights[::3] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    n = len(costs)

    def shift(norm: float) -> float:
        return fit_shift(
            costs, unsafe, weights, torch.arange(n), n,
            sample_rate=1.0, noise_multiplier=0.0, max_grad_norm=norm, steps=30,
        )  # fmt: skip

    assert shift(1.0) == shift(1e6)
    assert shift(0.01) != shift(1e6)  # a norm below the gradients does bind: the check can fail


def test_dp_shift_recovers_the_offset_across_draws():
    # Poisson-sampled, noised at sigma = 1.5 like the demo: the error is noise, not bias.
    costs, unsafe, weights = _biased_world(2000, offset=2.0)
    n = len(costs)
    target = _mle_shift(costs, unsafe)
    shifts = torch.tensor([
        fit_shift(
            costs, unsafe, weights, torch.arange(n), n,
            sample_rate=0.1, noise_multiplier=1.5, max_grad_norm=1.0, steps=20,
        )
        for _ in range(20)
    ])  # fmt: skip
    assert abs(float(shifts.mean()) - target) < 0.1
    assert float(shifts.std()) < 0.25


def _tiny(tmp_path, *extra):
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
            "reward_model.backbone=features",
            "reward_model.lora=null",
            "reward_model.privacy.accountant=rdp",
            "reward_model.privacy.target_delta=1e-3",
            "budget.delta=1e-3",
            f"budget.ledger={tmp_path / 'ledger.sqlite'}",
            *extra,
        ],
    )


def test_calibration_steps_are_planned_spent_and_charged_inside_the_budget(tmp_path):
    config = _tiny(tmp_path)
    pairs = SyntheticWorld(config.data.synthetic, seed=0).pairs
    plan = plan_training(len(pairs), config.cost_model, calibration=True)
    assert plan.calibration_steps == 2 * round(len(pairs) / 16)
    recorded = train_on_budget(
        pairs, kind="cost", config=config.cost_model, budget=config.budget,
        source=pairs, seed=0,
        out_dir=tmp_path / "cost", progress=False,
    )  # fmt: skip
    receipt = recorded.result.receipt
    assert receipt.steps == receipt.planned_steps == plan.steps
    assert receipt.calibration_steps == plan.calibration_steps
    assert "train/calibration_shift" in receipt.metrics
    # The receipt's (sigma, q, steps) are the whole mechanism: epsilon recomputed from them is the
    # receipt's, within the target, and the ledger charged exactly that mechanism.
    again = compute_epsilon(
        Mechanism(receipt.noise_multiplier, receipt.sample_rate, receipt.steps),
        target_delta=receipt.target_delta,
        accountant="rdp",
    )
    assert again.epsilon == pytest.approx(receipt.epsilon) and receipt.epsilon <= 2.0
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    spent = ledger.dataset_spend(pairs.fingerprint, accountant="rdp")
    assert spent.epsilon == pytest.approx(receipt.epsilon, rel=1e-6)


def test_reward_and_non_private_cost_models_do_not_calibrate(tmp_path):
    config = _tiny(tmp_path, "cost_model.privacy.target_epsilon=null")
    pairs = SyntheticWorld(config.data.synthetic, seed=0).pairs
    cost = train_cost_model(pairs, config=config.cost_model, seed=0, progress=False).receipt
    reward = train_reward_model(pairs, config=config.reward_model, seed=0, progress=False).receipt
    for receipt in (cost, reward):
        assert receipt.calibration_steps == 0
        assert "train/calibration_shift" not in receipt.metrics
