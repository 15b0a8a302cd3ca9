"""DP-SGD correctness: per-pair clipping (folded per-sequence gradients, and ghost clipping on one
row per pair) against a pair-by-pair reference, ε against an independent accountant, LoRA
freezing, resume, user-level units, empty batches, the non-private mode."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import dp_accounting
import pytest
import torch
from dp_accounting import pld
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from safealign.config import load_config
from safealign.data.records import PairDataset, PreferencePair
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError, DataError
from safealign.models.pairs import encode_pairs
from safealign.models.scalar import build_scoring_model, load_scoring_model
from safealign.privacy.dp_sgd import fold_grad_samples, make_step, pair_losses, run_dp_sgd
from safealign.privacy.plan import TrainingPlan, plan_training
from safealign.privacy.training import save_training_output, train_cost_model, train_reward_model

SMALL = [
    "data.synthetic.num_users=8",
    "data.synthetic.pairs_per_user=12",
    "data.synthetic.num_prompts=60",
]


@pytest.fixture(scope="module")
def world_pairs():
    cfg = load_config(None, SMALL)
    return SyntheticWorld(cfg.data.synthetic, seed=0).pairs


def _model_config(*overrides):
    base = [
        "reward_model.train.batch_size=16",
        "reward_model.train.epochs=1",
        "reward_model.train.lr=0.01",
        "budget.delta=0.1",
        "budget.epsilon=10",
    ]
    return load_config(None, base + list(overrides)).reward_model


def _reference_grads(model, batch, kind, index):
    """Gradient of pair ``index``'s loss alone, computed with a plain (un-hooked) model."""
    model.zero_grad(set_to_none=True)
    pair_losses(model, batch.select(torch.tensor([index])), kind).sum().backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.filterwarnings("ignore:In CPU autocast")  # functorch in float64
@pytest.mark.parametrize(
    ("kind", "backbone", "lora", "functorch"),
    [
        ("reward", "tiny", True, False),
        ("cost", "tiny", True, False),
        ("reward", "tiny", False, False),
        ("cost", "tiny", False, True),
        ("reward", "features", False, False),
        ("cost", "features", False, False),
        ("reward", "features", False, True),
        ("cost", "features", False, True),
    ],
)
def test_folded_per_pair_gradients_equal_pair_by_pair_reference(
    world_pairs, kind, backbone, lora, functorch
):
    """float64 throughout: in float32 the fold and the reference sum the same terms in different
    orders, and an element near 1 then differs by a few ulp (1.2e-6 was seen against an absolute
    1e-6), so agreement to 1e-10 here means the fold is exact, not lucky."""
    config = _model_config(
        f"reward_model.backbone={backbone}", *([] if lora else ["reward_model.lora=null"])
    )
    scoring = build_scoring_model(config, kind=kind, seed=0)
    scoring.model.double()
    batch = encode_pairs(scoring, world_pairs[:6])
    reference_model = copy.deepcopy(scoring.model)
    references = [_reference_grads(reference_model, batch, kind, i) for i in range(6)]

    gsm = GradSampleModule(
        scoring.model, batch_first=True, loss_reduction="mean", force_functorch=functorch
    )
    params = [p for p in scoring.model.parameters() if p.requires_grad]
    (pair_losses(gsm, batch, kind).sum() / 6).backward()
    assert params[0].grad_sample.shape[0] == 12  # Opacus sees 2P sequences...
    fold_grad_samples(params, torch.arange(6).repeat_interleave(2), 6)
    for p, *_ in zip(params, strict=True):
        assert p.grad_sample.shape[0] == 6  # ...we clip P pairs
    for i in range(6):
        for p, ref in zip(params, references[i], strict=True):
            torch.testing.assert_close(p.grad_sample[i], ref, atol=1e-10, rtol=1e-9)

    # DPOptimizer without noise: the update direction is Σ_i clip(g_i) / P, clipped per *pair*.
    max_grad_norm = 0.01
    optimizer = DPOptimizer(
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=max_grad_norm,
        expected_batch_size=6,
    )
    optimizer.pre_step()
    norms = torch.stack([torch.cat([g.flatten() for g in refs]).norm() for refs in references])
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    for j, p in enumerate(params):
        expected = sum(factors[i] * references[i][j] for i in range(6)) / 6
        torch.testing.assert_close(p.grad, expected, atol=1e-10, rtol=1e-9)
    gsm.remove_hooks()


def _step(scoring, data, config, plan, kind, *, lr):
    """The production step (Opacus wrapping as ``run_dp_sgd`` builds it) over plain SGD."""
    params = [p for p in scoring.model.parameters() if p.requires_grad]
    noise = torch.Generator().manual_seed(0)
    inner = torch.optim.SGD(params, lr=lr)
    units = torch.arange(len(data))
    step = make_step(
        scoring.model, data, units, plan, config=config, kind=kind, inner=inner, noise=noise
    )
    return step, params


@pytest.mark.filterwarnings("ignore:In CPU autocast")  # functorch in float64
@pytest.mark.parametrize(
    ("mode", "kind", "backbone", "lora"),
    [
        ("ghost", "reward", "tiny", True),
        ("ghost", "cost", "tiny", True),
        ("ghost", "reward", "features", False),
        ("ghost", "cost", "features", False),
        ("ghost", "reward", "tiny-gpt2", True),
        ("ghost", "cost", "tiny", False),  # embeddings and LayerNorm trained too
        ("hooks", "reward", "tiny", True),
        ("functorch", "cost", "features", False),
    ],
)
def test_dp_step_sums_the_pairs_own_clipped_gradients(world_pairs, mode, kind, backbone, lora):
    """With σ = 0 the step's gradient is Σ_i clip(g_i) / B, g_i pair i's own gradient computed
    alone (per-sequence layout, no Opacus). float64, so agreement to 1e-9 means exact; the
    clipping norm is the median pair norm, so some pairs are clipped and others not."""
    config = _model_config(
        f"reward_model.backbone={backbone}",
        f"reward_model.privacy.grad_sample_mode={mode}",
        *([] if lora else ["reward_model.lora=null"]),
    )
    scoring = build_scoring_model(config, kind=kind, seed=0)
    scoring.model.double()
    batch = encode_pairs(scoring, world_pairs[:6])
    reference_model = copy.deepcopy(scoring.model)
    references = [_reference_grads(reference_model, batch, kind, i) for i in range(6)]
    norms = torch.stack([torch.cat([g.flatten() for g in refs]).norm() for refs in references])
    max_grad_norm = float(norms.median())
    privacy = dataclasses.replace(config.privacy, max_grad_norm=max_grad_norm)
    config = dataclasses.replace(config, privacy=privacy)
    plan = TrainingPlan(True, 6, 0.5, 1, 0.0, 3.0)  # σ = 0; divisor q·N = 3

    step, params = _step(scoring, batch, config, plan, kind, lr=0.0)
    step(torch.arange(6))
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    assert 0 < int((factors < 1).sum()) < 6
    for j, p in enumerate(params):
        expected = sum(factors[i] * references[i][j] for i in range(6)) / 3
        torch.testing.assert_close(p.grad, expected, atol=1e-10, rtol=1e-9)
    if mode == "ghost":  # Opacus clipped one gradient per pair, of the pair's own norm
        torch.testing.assert_close(step.model.per_sample_gradient_norms, norms, rtol=1e-9, atol=0)
    step.model.remove_hooks()


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_an_empty_poisson_batch_still_takes_a_noisy_step(world_pairs, mode):
    config = _model_config(
        "reward_model.backbone=features",
        "reward_model.lora=null",
        f"reward_model.privacy.grad_sample_mode={mode}",
    )
    scoring = build_scoring_model(config, kind="reward", seed=0)
    batch = encode_pairs(scoring, world_pairs[:4])
    plan = TrainingPlan(True, 4, 0.5, 1, 2.0, 2.0)  # σ = 2, divisor 2
    step, params = _step(scoring, batch, config, plan, "reward", lr=1.0)
    before = [p.detach().clone() for p in params]
    assert math.isnan(step(torch.tensor([], dtype=torch.long)))
    noise = torch.cat([p.grad.flatten() for p in params])
    # Only noise, N(0, σ²C²) / divisor, over the ~2900 weights of the feature model.
    assert noise.std().item() == pytest.approx(2.0 * config.privacy.max_grad_norm / 2, rel=0.1)
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    step.model.remove_hooks()


def test_per_sequence_clipping_would_differ(world_pairs):
    """The bug the fold prevents: clipping 2P sequence gradients bounds a pair's contribution by
    2·max_grad_norm, not max_grad_norm. This shows the test above can fail."""
    scoring = build_scoring_model(_model_config(), kind="reward", seed=0)
    batch = encode_pairs(scoring, world_pairs[:4])
    gsm = GradSampleModule(scoring.model, batch_first=True, loss_reduction="mean")
    params = [p for p in scoring.model.parameters() if p.requires_grad]
    (pair_losses(gsm, batch, "reward").sum() / 4).backward()
    rows = torch.stack([torch.cat([p.grad_sample[r].flatten() for p in params]) for r in range(8)])
    per_sequence = rows.norm(dim=1).view(4, 2)
    per_pair = (rows.view(4, 2, -1).sum(1) * 0.5).norm(dim=1)
    assert not torch.allclose(per_sequence.sum(1), per_pair)
    gsm.remove_hooks()


def test_user_level_units_fold_all_pairs_of_a_user(world_pairs):
    scoring = build_scoring_model(_model_config(), kind="reward", seed=0)
    scoring.model.double()  # exact comparison (see the pair-level test)
    batch = encode_pairs(scoring, world_pairs[:6])
    reference_model = copy.deepcopy(scoring.model)
    references = [_reference_grads(reference_model, batch, "reward", i) for i in range(6)]
    units = torch.tensor([0, 0, 0, 1, 2, 2])  # three users with 3, 1 and 2 pairs
    gsm = GradSampleModule(scoring.model, batch_first=True, loss_reduction="mean")
    params = [p for p in scoring.model.parameters() if p.requires_grad]
    (pair_losses(gsm, batch, "reward").sum() / 3).backward()
    fold_grad_samples(params, units.repeat_interleave(2), 3)
    for j, p in enumerate(params):
        for u in range(3):
            expected = sum(references[i][j] for i in range(6) if units[i] == u)
            torch.testing.assert_close(p.grad_sample[u], expected, atol=1e-10, rtol=1e-9)
    gsm.remove_hooks()


def _independent_epsilon(receipt: dict) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            receipt["sample_rate"], dp_accounting.GaussianDpEvent(receipt["noise_multiplier"])
        ),
        receipt["steps"],
    )
    accountant = pld.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(event)
    return accountant.get_epsilon(receipt["target_delta"])


def test_receipt_epsilon_confirmed_by_independent_accountant(world_pairs, tmp_path):
    config = _model_config(
        "reward_model.privacy.target_epsilon=1.0",
        "reward_model.train.epochs=2",
        "reward_model.privacy.target_delta=1e-3",
    )
    result = train_reward_model(
        world_pairs, config=config, seed=0, eval_pairs=world_pairs[:20], progress=False
    )
    save_training_output(result, tmp_path)
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    for key in (
        "epsilon",
        "target_delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "max_grad_norm",
        "accountant",
        "privacy_unit",
        "dataset_fingerprint",
        "grad_sample_mode",
    ):
        assert key in receipt
    assert receipt["private"] and receipt["epsilon"] <= 1.0
    assert receipt["steps"] == 2 * round(len(world_pairs) / 16)
    independent = _independent_epsilon(receipt)
    assert abs(receipt["epsilon"] - independent) / independent < 0.05, (
        receipt["epsilon"],
        independent,
    )
    assert "eval/pair_accuracy" in receipt["metrics"]
    loaded = load_scoring_model(tmp_path / "model")
    prompts, responses = [p.prompt for p in world_pairs[:5]], [p.chosen for p in world_pairs[:5]]
    torch.testing.assert_close(
        loaded.score(prompts, responses),
        result.model.score(prompts, responses),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_lora_trains_adapters_and_head_only(world_pairs, mode):
    config = _model_config(f"reward_model.privacy.grad_sample_mode={mode}")
    before = build_scoring_model(config, kind="reward", seed=0).model.state_dict()
    result = train_reward_model(world_pairs, config=config, seed=0, progress=False)
    after = result.model.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k or k.startswith("head.") for k in changed), changed
    assert any("lora_" in k for k in changed) and any(k.startswith("head.") for k in changed)
    assert result.receipt.grad_sample_mode == mode


class Interrupted(Exception):
    pass


def _crash_at(step):
    def crash(taken):
        if taken == step:
            raise Interrupted

    return crash


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_resume_gives_the_same_epsilon_and_steps(world_pairs, tmp_path, mode):
    """A private run's resume draws fresh secret sampling and noise (privacy/loop.py), so its
    weights are not the uninterrupted run's; its schedule and ε are."""
    config = _model_config(
        "reward_model.train.epochs=2", f"reward_model.privacy.grad_sample_mode={mode}"
    )
    full = train_reward_model(world_pairs, config=config, seed=3, progress=False)
    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Interrupted):
        train_reward_model(
            world_pairs, config=config, seed=3, checkpoint=checkpoint, on_step=_crash_at(5),
            progress=False,
        )  # fmt: skip
    resumed = train_reward_model(
        world_pairs, config=config, seed=3, checkpoint=checkpoint, progress=False
    )
    assert resumed.receipt.steps == full.receipt.steps
    assert resumed.receipt.epsilon == pytest.approx(full.receipt.epsilon, rel=1e-9)
    assert len(resumed.losses) == full.receipt.steps - 5


@pytest.mark.parametrize("mode", ["hooks", "ghost", "non-private"])
def test_resume_restores_weights_and_optimizer_exactly(world_pairs, tmp_path, mode):
    """Where the run has no secret randomness to redraw the resume is the uninterrupted run, bit
    for bit: private with every unit in every step (q = 1) and σ = 0, or non-private (its seeded
    sampler is fast-forwarded). A weight or an Adam moment not restored would break this."""
    non_private = mode == "non-private"
    config = _model_config(
        "reward_model.train.epochs=2",
        "reward_model.privacy.target_epsilon=null"
        if non_private
        else f"reward_model.privacy.grad_sample_mode={mode}",
    )
    pairs = world_pairs[:24]
    units = torch.arange(len(pairs))
    plan = (
        plan_training(len(pairs), config)
        if non_private
        else TrainingPlan(True, len(pairs), 1.0, 8, 0.0, float(len(pairs)))
    )

    def train(checkpoint=None, on_step=None):
        scoring = build_scoring_model(config, kind="reward", seed=1)
        data = encode_pairs(scoring, pairs)
        steps, _ = run_dp_sgd(
            scoring, data, units, plan, config=config, kind="reward", seed=1,
            checkpoint=checkpoint, on_step=on_step, progress=False,
        )  # fmt: skip
        return steps, scoring.model.state_dict()

    full_steps, full = train()
    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Interrupted):
        train(checkpoint, _crash_at(3))
    steps, resumed = train(checkpoint)
    assert steps == full_steps == plan.steps
    before = build_scoring_model(config, kind="reward", seed=1).model.state_dict()
    assert any(not torch.equal(before[k], full[k]) for k in full)  # training moved the model
    for name, value in full.items():
        assert torch.equal(value, resumed[name]), name


def test_non_private_mode_is_labelled(world_pairs):
    config = _model_config("reward_model.privacy.target_epsilon=null")
    receipt = train_reward_model(world_pairs, config=config, seed=0, progress=False).receipt
    assert receipt.private is False and receipt.epsilon is None and receipt.noise_multiplier is None


def test_cost_model_needs_labels_and_user_level_needs_ids():
    unlabelled = PairDataset((PreferencePair("p", "a", "b"), PreferencePair("q", "a", "b")))
    with pytest.raises(DataError, match="needs safety labels"):
        train_cost_model(unlabelled, config=_model_config(), seed=0, progress=False)
    with pytest.raises(DataError, match="needs a user_id on every pair"):
        train_reward_model(
            unlabelled,
            config=_model_config(
                "reward_model.privacy.privacy_unit=user", "reward_model.privacy.target_delta=1e-3"
            ),
            seed=0,
            progress=False,
        )


def test_user_level_privacy_counts_users(world_pairs):
    config = _model_config(
        "reward_model.privacy.privacy_unit=user",
        "reward_model.train.batch_size=2",
        "reward_model.privacy.target_delta=1e-2",
        "reward_model.privacy.target_epsilon=8",
    )
    receipt = train_reward_model(world_pairs, config=config, seed=0, progress=False).receipt
    assert (
        receipt.privacy_unit == "user"
        and receipt.num_units == 8
        and receipt.num_pairs == len(world_pairs)
    )


def test_ghost_clipping_is_refused_where_a_unit_spans_several_rows(world_pairs):
    with pytest.raises(ConfigError, match="'ghost' clips each row"):
        _model_config(
            "reward_model.privacy.grad_sample_mode=ghost", "reward_model.privacy.privacy_unit=user"
        )
    with pytest.raises(ConfigError, match="groups.mode 'em' trains with user-level DP"):
        load_config(None, ["reward_model.privacy.grad_sample_mode=ghost", "groups.mode=em"])
    # A config built in code is checked again when the model is built, before any step.
    config = _model_config("reward_model.privacy.grad_sample_mode=ghost")
    user_level = dataclasses.replace(
        config, privacy=dataclasses.replace(config.privacy, privacy_unit="user")
    )
    with pytest.raises(ConfigError, match="'ghost' clips each row"):
        train_reward_model(world_pairs, config=user_level, seed=0, progress=False)
