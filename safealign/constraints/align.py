"""Align a policy over candidate sets: score, (MaxMin over groups), pessimistic tilt (HC-RLHF step 1).

With groups, MaxMin-RLHF's dual weights ``w`` (Chakraborty et al. 2024) turn the group rewards into
one egalitarian reward ``Σ_g w_g r_g``, and the cost multiplier λ of HC-RLHF step 1 is found
*with* them: ``(w, λ)`` is the MaxMin optimum under the same pessimistic bound the tilting path
uses (:func:`~safealign.constraints.maxmin_pessimistic.solve_maxmin_pessimistic`). Finding ``w``
without the constraint and tilting afterwards left the worst group below what the same expected
cost allows. Normalising the group rewards (``groups.normalize``: a per-prompt shift per group)
matters only for finding ``w``: a per-prompt shift cancels inside the softmax, so the deployed
policy uses the raw scores. ``regret`` measures each group against its own *constrained*
optimum (its best tilt that also passes the bound, at its own multiplier λ_g); the rewards
reported per group (:attr:`AlignResult.group_rewards`) use the same units, and so does the
safety test, which recomputes them on fresh candidates with the recorded λ_g
(:func:`normalized_groups`, ``Scorers.group_cost_lambdas``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from safealign.config import GroupsConfig, PolicyConfig, SafetyConfig
from safealign.constraints.candidates import Candidates
from safealign.constraints.group_rewards import normalize_group_rewards
from safealign.constraints.hc_rlhf import check_safety_config
from safealign.constraints.maxmin_pessimistic import group_cost_lambdas, solve_maxmin_pessimistic
from safealign.constraints.maxmin_solver import MaxMinResult, solve_maxmin
from safealign.constraints.selection import (
    SelectionResult,
    select_candidate_policy,
    selection_summary,
    step1_bound,
    step1_inputs,
    step1_policy,
)
from safealign.errors import InfeasibleError
from safealign.models.scalar import ScoringModel


@dataclass(frozen=True)
class Scorers:
    """The models that score candidates; ``group_rewards`` replaces ``reward`` when groups are on.

    ``group_weights`` (the MaxMin dual weights) are set once alignment has found them, and with
    ``groups.normalize: regret`` so is ``group_cost_lambdas``: each group's own pessimistic cost
    multiplier λ_g, which puts the group's constrained optimum at 0 (:func:`normalized_groups`).
    """

    cost: ScoringModel
    reward: ScoringModel | None = None
    group_rewards: Mapping[str, ScoringModel] | None = None
    group_weights: Mapping[str, float] | None = None
    group_cost_lambdas: Mapping[str, float] | None = None


@dataclass(frozen=True)
class ScoredCandidates:
    """Scores ``[N, K]`` of each candidate (and ``[G, N, K]`` per group)."""

    rewards: torch.Tensor
    costs: torch.Tensor
    log_p: torch.Tensor
    group_rewards: torch.Tensor | None = None


def score_candidates(candidates: Candidates, scorers: Scorers) -> ScoredCandidates:
    """Score every candidate with the cost model and the (combined) reward model(s)."""
    costs = candidates.score(scorers.cost)
    if scorers.group_rewards is None:
        return ScoredCandidates(candidates.score(scorers.reward), costs, candidates.log_p)
    stacked = torch.stack([candidates.score(m) for m in scorers.group_rewards.values()])
    return _combined(ScoredCandidates(stacked[0], costs, candidates.log_p, stacked), scorers)


def _combined(scored: ScoredCandidates, scorers: Scorers) -> ScoredCandidates:
    """The scalar reward ``Σ_g w_g r_g`` from already-computed group scores (uniform w until set)."""
    names = list(scorers.group_rewards)
    weights = scorers.group_weights or {g: 1.0 / len(names) for g in names}
    rewards = sum(weights[g] * scored.group_rewards[i] for i, g in enumerate(names))
    return ScoredCandidates(rewards, scored.costs, scored.log_p, scored.group_rewards)


@dataclass(frozen=True)
class AlignResult:
    """The selected policy and how it was chosen.

    Attributes:
        selection: HC-RLHF step 1's result (``selection.policy`` is None when infeasible).
        scorers: The scorers with the MaxMin weights filled in (what the deployed policy uses).
        group_weights: MaxMin dual weights per group (None without groups), solved jointly with
            the policy's λ under step 1's bound.
        group_rewards: Per group, the expected normalised model reward under the selected policy
            (``groups.normalize`` per prompt, as the safety test recomputes it on fresh
            candidates: for ``regret`` against each group's constrained optimum).
    """

    selection: SelectionResult
    scorers: Scorers
    group_weights: dict[str, float] | None
    group_rewards: dict[str, float] | None


def optimize_policy(
    candidates: Candidates,
    scorers: Scorers,
    *,
    policy: PolicyConfig,
    safety: SafetyConfig,
    groups: GroupsConfig,
    n_safety: int,
    seed: int,
    reference_sampler: Mapping[str, Any],
) -> AlignResult:
    """Choose the tilted policy on the candidate prompts (never on the safety prompts)."""
    scored = score_candidates(candidates, scorers)
    if scored.group_rewards is None:
        selection = select_candidate_policy(
            scored.rewards,
            scored.costs,
            beta=policy.beta,
            safety=safety,
            n_safety=n_safety,
            log_p=scored.log_p,
            reference_sampler=reference_sampler,
            seed=seed,
        )
        return AlignResult(selection, scorers, None, None)
    names = list(scorers.group_rewards)
    check_safety_config(safety)
    maxmin, lambdas = _joint_maxmin(
        scored, beta=policy.beta, safety=safety, groups=groups, n_safety=n_safety
    )
    if maxmin is None:
        # Step 1 is infeasible (the bound fails even on the cheapest candidates, whatever the
        # reward): the weights of unconstrained MaxMin are recorded, and selection reports NSF.
        maxmin = solve_maxmin(_plain_normalized(scored, policy, groups), beta=policy.beta,
                              log_p=scored.log_p)  # fmt: skip
    weights = {g: float(w) for g, w in zip(names, maxmin.weights, strict=True)}
    own = None if lambdas is None else {g: float(v) for g, v in zip(names, lambdas, strict=True)}
    scorers = Scorers(cost=scorers.cost, group_rewards=scorers.group_rewards, group_weights=weights,
                      group_cost_lambdas=own)  # fmt: skip
    scored = _combined(scored, scorers)  # reweight the scores we have; do not score again
    common = {"beta": policy.beta, "safety": safety, "n_safety": n_safety, "log_p": scored.log_p}
    if maxmin.upper_bound is None:
        selection = select_candidate_policy(
            scored.rewards, scored.costs, **common, reference_sampler=reference_sampler, seed=seed
        )
    else:
        selection = _joint_selection(
            scored, maxmin, **common, reference_sampler=reference_sampler, seed=seed
        )
    group_values = None
    if selection.policy is not None:
        q = selection.policy.probabilities(scored.rewards, scored.costs, log_p=scored.log_p)
        normalized = normalized_groups(scored, scorers, beta=policy.beta, safety=safety,
                                       mode=groups.normalize)  # fmt: skip
        group_values = {g: float((q * normalized[i]).sum(-1).mean()) for i, g in enumerate(names)}
    return AlignResult(selection, scorers, weights, group_values)


def _plain_normalized(scored: ScoredCandidates, policy: PolicyConfig, groups: GroupsConfig):
    """Group rewards normalised per prompt without the cost constraint (infeasible step 1)."""
    return normalize_group_rewards(
        scored.group_rewards, mode=groups.normalize, beta=policy.beta, log_p=scored.log_p
    )


def normalized_groups(
    scored: ScoredCandidates, scorers: Scorers, *, beta: float, safety: SafetyConfig, mode: str
) -> torch.Tensor:
    """Each group's reward ``[G, N, K]`` normalised per prompt as alignment and the safety test
    both report it: with ``scorers.group_cost_lambdas`` (``regret``), against each group's
    *constrained* optimum (its own tilt at λ_g of the certified metric); else plainly."""
    lambdas = scorers.group_cost_lambdas
    if lambdas is None or mode != "regret":
        return normalize_group_rewards(scored.group_rewards, mode=mode, beta=beta,
                                       log_p=scored.log_p)  # fmt: skip
    _, costs, log_p = step1_inputs(scored.rewards, scored.costs, scored.log_p, safety=safety)
    own = torch.tensor([lambdas[g] for g in scorers.group_rewards], dtype=torch.float64)
    return normalize_group_rewards(scored.group_rewards, mode=mode, beta=beta, log_p=log_p,
                                   costs=costs, cost_lambdas=own)  # fmt: skip


def _joint_maxmin(
    scored: ScoredCandidates,
    *,
    beta: float,
    safety: SafetyConfig,
    groups: GroupsConfig,
    n_safety: int,
) -> tuple[MaxMinResult | None, torch.Tensor | None]:
    """MaxMin under step 1's pessimistic bound, regret against each group's constrained optimum.

    Returns:
        The result and each group's λ_g (None unless ``regret``); ``(None, None)`` when step 1
        is infeasible.
    """
    _, costs, log_p = step1_inputs(scored.rewards, scored.costs, scored.log_p, safety=safety)
    bound_fn = step1_bound(safety, n_safety)
    constraint = {"cost_threshold": safety.cost_threshold, "bound_fn": bound_fn}
    try:
        lambdas = None
        if groups.normalize == "regret":
            lambdas = group_cost_lambdas(
                scored.group_rewards, costs, beta=beta, log_p=log_p, **constraint
            )
        normalized = normalize_group_rewards(
            scored.group_rewards, mode=groups.normalize, beta=beta, log_p=log_p,
            costs=None if lambdas is None else costs, cost_lambdas=lambdas,
        )  # fmt: skip
        solved = solve_maxmin_pessimistic(normalized, costs, beta=beta, log_p=log_p, **constraint)
    except InfeasibleError:
        return None, None
    return solved, lambdas


def _joint_selection(
    scored: ScoredCandidates,
    maxmin: MaxMinResult,
    *,
    beta: float,
    safety: SafetyConfig,
    n_safety: int,
    log_p: torch.Tensor,
    reference_sampler: Mapping[str, Any],
    seed: int,
) -> SelectionResult:
    """HC-RLHF step 1's result for the jointly solved ``(w, λ)`` (``scored`` combined with w)."""
    rewards, costs, _ = step1_inputs(scored.rewards, scored.costs, log_p, safety=safety)
    tilted = step1_policy(
        safety,
        beta=beta,
        lambda_=float(maxmin.cost_lambda),
        num_candidates=rewards.shape[1],
        reference_sampler=reference_sampler,
        seed=seed,
    )
    # The solver's q: the tilt of the metric step 1 constrains (clipped to a declared range),
    # which is what the deployed policy computes (step1_policy records the same metric and range).
    q = maxmin.q
    return selection_summary(
        (q * costs).sum(-1),
        method="hc_rlhf",
        metric=safety.metric,
        bound_fn=step1_bound(safety, n_safety),
        n_safety=n_safety,
        policy=tilted,
        expected_reward=float((q * rewards).sum(-1).mean()),
    )
