"""The deployed tilted policy is the policy step 1 selected, also when costs leave cost_range.

With ``safety.metric: expected_cost`` and a declared ``cost_range``, step 1 bounds the mean of
costs clipped to the range. The deployed :class:`TiltedPolicy` must tilt on exactly that clipped
cost: a candidate scored far outside the range (here 100 for a range of [0, 1]) would otherwise
get weight ``exp(-lambda * 100 / beta)`` in deployment where step 1 gave it
``exp(-lambda * 1 / beta)``, so the policy certified and released would not be the one whose
pessimistic bound step 1 checked (nor the one whose reward it reported).
"""

from __future__ import annotations

import json

import pytest
import torch

from safealign.config import GroupsConfig, PolicyConfig, SafetyConfig
from safealign.constraints.align import Scorers, optimize_policy
from safealign.constraints.candidates import Candidates
from safealign.constraints.selection import select_candidate_policy, step1_bound
from safealign.constraints.tilting import TiltedPolicy
from safealign.errors import ConfigError

LOW, HIGH, OUTLIER, BETA, N_SAFETY = 0.0, 1.0, 100.0, 0.1, 200


def _instance(n: int = 40, k: int = 4, groups: int = 0, seed: int = 0):
    """Rewards ``[N, K]`` (``[G, N, K]`` with groups) and costs in [0, 1], except candidate 0 of
    every prompt: the most rewarded, scored ``OUTLIER``, far above the declared range."""
    g = torch.Generator().manual_seed(seed)
    shape = (groups, n, k) if groups else (n, k)
    rewards = torch.randn(shape, generator=g, dtype=torch.float64)
    rewards[..., 0] += 1.0
    costs = torch.rand(n, k, generator=g, dtype=torch.float64)
    costs[:, 0] = OUTLIER
    return rewards, costs


def _safety(costs: torch.Tensor) -> SafetyConfig:
    """Hoeffding on [LOW, HIGH] with a threshold halfway between the cheapest policy's step-1
    bound and the reference policy's: feasible, and binding (lambda > 0)."""
    base = SafetyConfig(
        metric="expected_cost", bound="hoeffding", cost_range=(LOW, HIGH), cost_threshold=1.0
    )
    bound_fn = step1_bound(base, N_SAFETY)
    clipped = costs.clamp(LOW, HIGH)
    cheapest, reference = bound_fn(clipped.min(-1).values), bound_fn(clipped.mean(-1))
    return SafetyConfig(
        metric="expected_cost",
        bound="hoeffding",
        cost_range=(LOW, HIGH),
        cost_threshold=(cheapest + reference) / 2,
    )


def _deployed_step1_numbers(policy: TiltedPolicy, rewards, costs, safety, log_p=None):
    """What step 1 should have reported for ``policy`` as deployed: the mean and bound of its
    per-prompt expected clipped cost (the certified quantity)."""
    per_prompt = policy.expectation(costs.clamp(LOW, HIGH), rewards, costs, log_p=log_p)
    return float(per_prompt.mean()), float(step1_bound(safety, N_SAFETY)(per_prompt))


def test_attack_the_deployed_policy_tilts_on_the_clipped_cost_step_1_bounded() -> None:
    rewards, costs = _instance()
    safety = _safety(costs)
    result = select_candidate_policy(
        rewards, costs, beta=BETA, safety=safety, n_safety=N_SAFETY, seed=0
    )
    assert result.feasible and result.lambda_ > 0
    mean, bound = _deployed_step1_numbers(result.policy, rewards, costs, safety)
    # Old code: the deployed tilt saw cost 100 and all but dropped the outlier (mean ~0.2)
    # while step 1 selected a policy that still picks it now and then (mean ~0.5).
    assert mean == pytest.approx(result.mean_cost, abs=1e-9)
    assert bound == pytest.approx(result.selection_bound, abs=1e-9)
    assert bound <= safety.cost_threshold + 1e-9
    assert result.policy.cost_range == (LOW, HIGH)
    q = result.policy.probabilities(rewards, costs)
    assert float(q[:, 0].mean()) > 0.05  # the outlier is still chosen: the tilt sees cost 1


class _Table:
    """A scoring model that looks each response up in a table (``Candidates.score`` calls it)."""

    def __init__(self, names, values: torch.Tensor) -> None:
        self.values = {
            name: float(v)
            for row, vs in zip(names, values, strict=True)
            for name, v in zip(row, vs, strict=True)
        }

    def score(self, prompts, responses, *, batch_size: int) -> torch.Tensor:
        return torch.tensor([self.values[r] for r in responses], dtype=torch.float64)


def test_attack_with_groups_the_deployed_policy_is_the_jointly_selected_one() -> None:
    rewards, costs = _instance(n=30, k=6, groups=2, seed=1)
    safety = _safety(costs)
    n, k = costs.shape
    names = [[f"p{i} r{j}" for j in range(k)] for i in range(n)]
    log_p = torch.zeros(n, k, dtype=torch.float64)
    candidates = Candidates(
        prompts=tuple(f"p{i}" for i in range(n)),
        responses=tuple(map(tuple, names)),
        log_p=log_p,
        source="test",
    )
    scorers = Scorers(
        cost=_Table(names, costs),
        group_rewards={"a": _Table(names, rewards[0]), "b": _Table(names, rewards[1])},
    )
    aligned = optimize_policy(
        candidates,
        scorers,
        policy=PolicyConfig(beta=BETA),
        safety=safety,
        groups=GroupsConfig(mode="given", normalize="reference"),
        n_safety=N_SAFETY,
        seed=0,
        reference_sampler={},
    )
    selection = aligned.selection
    assert selection.feasible and selection.lambda_ > 0
    w = aligned.group_weights
    combined = w["a"] * rewards[0] + w["b"] * rewards[1]  # what the deployed policy is given
    mean, bound = _deployed_step1_numbers(selection.policy, combined, costs, safety, log_p)
    assert mean == pytest.approx(selection.mean_cost, abs=1e-7)
    assert bound == pytest.approx(selection.selection_bound, abs=1e-7)


def test_cost_range_is_recorded_and_validated() -> None:
    policy = TiltedPolicy(beta=0.5, lambda_=1.0, num_candidates=2, cost_range=[-1, 2])
    assert policy.cost_range == (-1.0, 2.0)
    settings = json.loads(json.dumps(policy.sampler_settings()))
    assert settings["cost_range"] == [-1.0, 2.0]
    assert "clip(c" in settings["weights"]
    # Without a range nothing changes in what a policy records (old certificates stay as they are).
    assert (
        "cost_range" not in TiltedPolicy(beta=0.5, lambda_=1.0, num_candidates=2).sampler_settings()
    )
    for bad in ((1.0, 1.0), (0.0, float("inf")), (0.0,), ("a", 1.0)):
        with pytest.raises(ConfigError, match="cost_range"):
            TiltedPolicy(beta=0.5, lambda_=1.0, num_candidates=2, cost_range=bad)
    with pytest.raises(ConfigError, match="cost_range"):
        TiltedPolicy(
            beta=0.5, lambda_=1.0, num_candidates=2, metric="unsafe_rate", cost_range=(0, 1)
        )
