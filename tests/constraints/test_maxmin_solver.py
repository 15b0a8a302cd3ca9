"""MaxMin solver: reduces to the plain objective, matches the oracle, equalises active groups."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from safealign.config import GroupsConfig, PolicyConfig, SafetyConfig
from safealign.constraints.align import Scorers, optimize_policy
from safealign.constraints.bounds import mean_plus_k_std, pessimism_k
from safealign.constraints.candidates import Candidates
from safealign.constraints.group_rewards import normalize_group_rewards
from safealign.constraints.maxmin_pessimistic import group_cost_lambdas, solve_maxmin_pessimistic
from safealign.constraints.maxmin_solver import solve_maxmin
from safealign.constraints.oracle import solve_maxmin_oracle, solve_maxmin_pessimistic_oracle
from safealign.constraints.solvers import (
    kl_rows,
    policy_objective,
    solve_constrained,
    solve_pessimistic,
    solve_unconstrained,
)
from safealign.errors import DataError, InfeasibleError

FAST = settings(max_examples=4, deadline=None, derandomize=True)
REL_GAP = 1e-6


def _instance(seed: int, groups: int = 3, n: int = 10, k: int = 5):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(groups, n, k, generator=gen, dtype=torch.float64)
    rewards += 0.3 * torch.arange(groups, dtype=torch.float64)[:, None, None]  # unequal groups
    log_p = torch.randn(n, k, generator=gen, dtype=torch.float64)
    costs = 0.5 * rewards.mean(0) + torch.rand(n, k, generator=gen, dtype=torch.float64)
    return rewards, log_p, costs


def _assert_equalised(result) -> None:
    """Groups with positive weight share the worst reward (stationarity of the dual on the simplex)."""
    worst = float(result.group_rewards.min())
    weighted = result.weights > 1e-6
    assert float((result.group_rewards[weighted] - worst).abs().max()) <= 1e-8
    assert abs(float(result.weights.sum()) - 1.0) <= 1e-12 and bool((result.weights >= 0).all())


@FAST
@given(seed=st.integers(0, 10_000), beta=st.floats(0.05, 2.0))
def test_one_group_equals_the_plain_objective(seed: int, beta: float) -> None:
    rewards, log_p, _ = _instance(seed, groups=1)
    result = solve_maxmin(rewards, beta=beta, log_p=log_p)
    plain = solve_unconstrained(rewards[0], beta=beta, log_p=log_p)
    torch.testing.assert_close(result.q, plain, rtol=0, atol=1e-12)
    assert result.objective == pytest.approx(
        policy_objective(plain, rewards[0], beta=beta, log_p=log_p), rel=1e-12
    )
    assert result.weights.tolist() == [1.0]


def test_identical_groups_equal_one_group() -> None:
    rewards, log_p, _ = _instance(1, groups=1)
    twice = solve_maxmin(rewards.expand(2, -1, -1), beta=0.3, log_p=log_p)
    once = solve_maxmin(rewards, beta=0.3, log_p=log_p)
    torch.testing.assert_close(twice.q, once.q)


@FAST
@given(seed=st.integers(0, 10_000), beta=st.floats(0.05, 2.0), groups=st.sampled_from([2, 3, 4]))
def test_maxmin_equals_oracle_and_equalises_groups(seed: int, beta: float, groups: int) -> None:
    rewards, log_p, _ = _instance(seed, groups=groups)
    result = solve_maxmin(rewards, beta=beta, log_p=log_p)
    oracle = solve_maxmin_oracle(rewards, beta=beta, log_p=log_p)
    assert abs(result.objective - oracle.objective) <= REL_GAP * max(1.0, abs(oracle.objective))
    assert -1e-12 <= result.duality_gap <= 1e-9  # a certificate: dual minus primal
    _assert_equalised(result)


def test_a_dominating_group_gets_zero_weight() -> None:
    rewards, log_p, _ = _instance(2, groups=2)
    rewards = torch.cat([rewards, rewards[:1] + 5.0])  # group 2 always beats group 0
    result = solve_maxmin(rewards, beta=0.5, log_p=log_p)
    assert float(result.weights[2]) == 0.0
    assert float(result.group_rewards[2]) > float(result.group_rewards.min()) + 1.0


@FAST
@given(seed=st.integers(0, 10_000), beta=st.floats(0.1, 1.0), frac=st.floats(0.1, 0.8))
def test_cost_constrained_maxmin_equals_oracle(seed: int, beta: float, frac: float) -> None:
    rewards, log_p, costs = _instance(seed)
    unconstrained = solve_maxmin(rewards, beta=beta, log_p=log_p)
    floor = float(costs.min(-1).values.mean())
    tau = floor + frac * ((unconstrained.q * costs).sum(-1).mean().item() - floor)
    result = solve_maxmin(rewards, beta=beta, log_p=log_p, costs=costs, cost_threshold=tau)
    oracle = solve_maxmin_oracle(rewards, beta=beta, log_p=log_p, costs=costs, cost_threshold=tau)
    assert abs(result.objective - oracle.objective) <= REL_GAP * max(1.0, abs(oracle.objective))
    assert result.cost_lambda > 0 and result.expected_cost == pytest.approx(tau, abs=1e-9)
    _assert_equalised(result)


def test_one_group_with_cost_equals_the_constrained_solver() -> None:
    rewards, log_p, costs = _instance(3, groups=1)
    tau = float(costs.min(-1).values.mean()) + 0.2
    result = solve_maxmin(rewards, beta=0.4, log_p=log_p, costs=costs, cost_threshold=tau)
    plain = solve_constrained(rewards[0], costs, beta=0.4, thresholds=tau, log_p=log_p)
    assert result.cost_lambda == pytest.approx(float(plain.lambdas[0]), rel=1e-7)
    assert result.objective == pytest.approx(plain.objective, rel=1e-9)


def test_slack_cost_constraint_changes_nothing() -> None:
    rewards, log_p, costs = _instance(4)
    free = solve_maxmin(rewards, beta=0.4, log_p=log_p)
    slack = solve_maxmin(rewards, beta=0.4, log_p=log_p, costs=costs, cost_threshold=1e6)
    assert slack.cost_lambda == 0.0
    torch.testing.assert_close(slack.q, free.q)


def test_infeasible_cost_threshold_raises_with_the_numbers() -> None:
    rewards, log_p, costs = _instance(5)
    floor = float(costs.min(-1).values.mean())
    with pytest.raises(InfeasibleError, match=f"{floor:.6g}"):
        solve_maxmin(rewards, beta=0.4, log_p=log_p, costs=costs, cost_threshold=floor - 0.05)


def test_inconsistent_arguments_are_rejected() -> None:
    rewards, log_p, costs = _instance(6)
    with pytest.raises(DataError, match="give both or neither"):
        solve_maxmin(rewards, beta=0.4, costs=costs)
    with pytest.raises(DataError, match=r"\[G, N, K\]"):
        solve_maxmin(rewards[0], beta=0.4)


# --- MaxMin under the pessimistic cost bound (HC-RLHF step 1) ------------------------------------


def _mean_plus_k_std(k: float):
    return functools.partial(mean_plus_k_std, k=k)


def _pessimistic_instance(seed: int, groups: int = 3, n: int = 12, k: int = 5):
    """Costs that favour one group's best candidates: the cost tilt pulls the groups apart."""
    rewards, log_p, _ = _instance(seed, groups=groups, n=n, k=k)
    gen = torch.Generator().manual_seed(seed + 1)
    costs = 0.8 * rewards[0] + 0.5 * torch.rand(n, k, generator=gen, dtype=torch.float64)
    return rewards, log_p, costs


def _constrained_regret(rewards, costs, *, beta, tau, bound_fn, log_p):
    """``r_g`` minus the per-prompt objective of group g's own pessimistic tilt (from primitives)."""
    shifted = []
    for r in rewards:
        own = solve_pessimistic(
            r, costs, beta=beta, cost_threshold=tau, bound_fn=bound_fn, log_p=log_p
        )
        q, lp = own.q, torch.log_softmax(log_p, -1)
        value = (q * r).sum(-1) - beta * (q * (torch.log(q.clamp_min(1e-300)) - lp)).sum(-1)
        shifted.append(r - value[:, None])
    return torch.stack(shifted)


def test_constrained_regret_puts_each_groups_own_constrained_optimum_at_zero() -> None:
    rewards, log_p, costs = _pessimistic_instance(7)
    bound_fn, beta = _mean_plus_k_std(0.6), 0.3
    tau = float(costs.mean()) - 0.1
    lambdas = group_cost_lambdas(
        rewards, costs, beta=beta, cost_threshold=tau, bound_fn=bound_fn, log_p=log_p
    )
    assert bool((lambdas > 0).any())
    normalized = normalize_group_rewards(
        rewards, mode="regret", beta=beta, log_p=log_p, costs=costs, cost_lambdas=lambdas
    )
    expected = _constrained_regret(
        rewards, costs, beta=beta, tau=tau, bound_fn=bound_fn, log_p=log_p
    )
    torch.testing.assert_close(normalized, expected, rtol=0, atol=1e-10)
    plain = normalize_group_rewards(rewards, mode="regret", beta=beta, log_p=log_p)
    zero = normalize_group_rewards(
        rewards, mode="regret", beta=beta, log_p=log_p, costs=costs,
        cost_lambdas=torch.zeros(rewards.shape[0]),
    )  # fmt: skip
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-12)


def test_one_group_pessimistic_maxmin_equals_the_tilting_path() -> None:
    rewards, log_p, costs = _pessimistic_instance(8, groups=1)
    bound_fn, tau = _mean_plus_k_std(0.8), float(costs.mean()) - 0.1
    result = solve_maxmin_pessimistic(
        rewards, costs, beta=0.4, cost_threshold=tau, bound_fn=bound_fn, log_p=log_p
    )
    plain = solve_pessimistic(
        rewards[0], costs, beta=0.4, cost_threshold=tau, bound_fn=bound_fn, log_p=log_p
    )
    assert plain.lambdas[0] > 0
    assert result.cost_lambda == pytest.approx(float(plain.lambdas[0]), rel=1e-12)
    torch.testing.assert_close(result.q, plain.q, rtol=0, atol=1e-12)
    assert result.upper_bound == pytest.approx(plain.upper_bound, rel=1e-12)


@FAST
@given(seed=st.integers(0, 10_000), beta=st.floats(0.1, 1.0), k=st.floats(0.1, 1.5))
def test_pessimistic_maxmin_is_the_constrained_optimum_at_its_own_cost(
    seed: int, beta: float, k: float
) -> None:
    """Cross-check with Clarabel: the exact MaxMin optimum under the mean cost the policy has,
    the smallest passing lambda, and below the cone program's optimum over all policies."""
    rewards, log_p, costs = _pessimistic_instance(seed)
    bound_fn = _mean_plus_k_std(k)
    free = solve_maxmin(rewards, beta=beta, log_p=log_p)
    floor = float(bound_fn(costs.min(-1).values))
    tau = floor + 0.5 * (float(bound_fn((free.q * costs).sum(-1))) - floor)
    result = solve_maxmin_pessimistic(
        rewards, costs, beta=beta, cost_threshold=tau, bound_fn=bound_fn, log_p=log_p
    )
    assert result.cost_lambda > 0 and result.upper_bound <= tau
    assert result.upper_bound == pytest.approx(tau, abs=1e-9)  # the bound is active
    assert -1e-12 <= result.duality_gap <= 1e-9
    _assert_equalised(result)
    oracle = solve_maxmin_oracle(
        rewards, beta=beta, log_p=log_p, costs=costs, cost_threshold=result.expected_cost
    )
    assert abs(result.objective - oracle.objective) <= REL_GAP * max(1.0, abs(oracle.objective))
    # Minimality: a slightly smaller lambda's MaxMin optimum fails the bound.
    cheaper = solve_maxmin(
        rewards, beta=beta, log_p=log_p, costs=costs,
        cost_threshold=float(result.expected_cost) + 1e-6,
    )  # fmt: skip
    assert float(bound_fn((cheaper.q * costs).sum(-1))) > tau
    cone = solve_maxmin_pessimistic_oracle(
        rewards, costs, beta=beta, cost_threshold=tau, k=k, log_p=log_p
    )
    assert result.objective <= cone.objective + 1e-7


def test_pessimistic_maxmin_infeasible_threshold_raises() -> None:
    rewards, log_p, costs = _pessimistic_instance(9)
    bound_fn = _mean_plus_k_std(0.5)
    limit = float(bound_fn(costs.min(-1).values))
    with pytest.raises(InfeasibleError, match=f"{limit:.6g}"):
        solve_maxmin_pessimistic(
            rewards, costs, beta=0.4, cost_threshold=limit - 0.01, bound_fn=bound_fn, log_p=log_p
        )


class _Table:
    """A scoring model that looks each response up in a table (``Candidates.score`` calls it)."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def score(self, prompts, responses, *, batch_size: int) -> torch.Tensor:
        return torch.tensor([self.values[r] for r in responses], dtype=torch.float64)


def _table(names: list[list[str]], values: torch.Tensor) -> _Table:
    return _Table(
        {
            t: float(v)
            for row, vs in zip(names, values, strict=True)
            for t, v in zip(row, vs, strict=True)
        }
    )


def _table_instance(seed: int):
    """A table-scored 2-group instance with a binding pessimistic threshold (the reference's)."""
    rewards, log_p, costs = _pessimistic_instance(seed, groups=2, n=30, k=6)
    n, k = costs.shape
    names = [[f"p{i} r{j}" for j in range(k)] for i in range(n)]
    candidates = Candidates(
        prompts=tuple(f"p{i}" for i in range(n)), responses=tuple(map(tuple, names)),
        log_p=log_p, source="test",
    )  # fmt: skip
    scorers = Scorers(
        cost=_table(names, costs),
        group_rewards={"a": _table(names, rewards[0]), "b": _table(names, rewards[1])},
    )
    safety = SafetyConfig(metric="expected_cost", bound="student_t", cost_threshold=0.0,
                          confidence=0.9)  # fmt: skip
    n_safety, beta = 200, 0.3
    bound_fn = _mean_plus_k_std(pessimism_k(n, n_safety, confidence=0.9))
    tau = float(bound_fn(costs.mean(-1)))  # the reference policy's bound: a binding threshold
    safety = dataclasses.replace(safety, cost_threshold=tau)
    return rewards, log_p, costs, candidates, scorers, safety, bound_fn, n_safety, beta


def _align(candidates, scorers, safety, n_safety, beta):
    return optimize_policy(
        candidates, scorers, policy=PolicyConfig(beta=beta), safety=safety,
        groups=GroupsConfig(mode="given", normalize="regret"), n_safety=n_safety, seed=0,
        reference_sampler={},
    )  # fmt: skip


def _aligned_worst_group_gap(seed: int):
    """optimize_policy on a table-scored instance; its MaxMin objective's gap to the constrained
    optimum at the policy's own mean cost (Clarabel), in regret against each group's constrained
    optimum, and its step-1 bound."""
    instance = _table_instance(seed)
    rewards, log_p, costs, candidates, scorers, safety, bound_fn, n_safety, beta = instance
    tau = safety.cost_threshold
    aligned = _align(candidates, scorers, safety, n_safety, beta)
    normalized = _constrained_regret(
        rewards, costs, beta=beta, tau=tau, bound_fn=bound_fn, log_p=log_p
    )
    w = torch.tensor([aligned.group_weights[g] for g in ("a", "b")], dtype=torch.float64)
    q = aligned.selection.policy.probabilities(
        torch.einsum("g,gnk->nk", w, rewards), costs, log_p=log_p
    )
    kl = float(kl_rows(q, torch.log_softmax(log_p, -1)).mean())
    groups = torch.einsum("nk,gnk->g", q, normalized) / q.shape[0]
    mean_cost = float((q * costs).sum(-1).mean())
    oracle = solve_maxmin_oracle(
        normalized, beta=beta, log_p=log_p, costs=costs, cost_threshold=mean_cost
    )
    gap = oracle.objective - (float(groups.min()) - beta * kl)
    return gap, aligned.selection.selection_bound, tau, groups


def test_attack_sequential_maxmin_then_tilt_misses_the_constrained_optimum() -> None:
    """Weights found without the cost bound, then tilted by cost (the old method), lose the worst
    group reward that the same mean cost allows; the joint solve reaches the optimum, under tau."""
    gap, bound, tau, groups = _aligned_worst_group_gap(11)
    assert bound <= tau
    assert abs(gap) <= 1e-6, (
        f"worst group {gap:.4f} below the constrained optimum (groups {groups})"
    )
    assert float(groups.max() - groups.min()) <= 1e-6  # both groups supported and equalised


def test_infeasible_step1_with_groups_is_a_no_solution_result() -> None:
    rewards, log_p, costs, candidates, scorers, safety, bound_fn, n_safety, beta = _table_instance(
        11
    )
    limit = float(bound_fn(costs.min(-1).values))
    aligned = _align(
        candidates,
        scorers,
        dataclasses.replace(safety, cost_threshold=limit - 0.01),
        n_safety,
        beta,
    )
    assert not aligned.selection.feasible and aligned.selection.policy is None
    assert "cheapest candidate" in aligned.selection.reason
    assert set(aligned.group_weights) == {"a", "b"} and aligned.group_rewards is None
