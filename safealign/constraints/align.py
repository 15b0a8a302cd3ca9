"""Align a policy over candidate sets: score, (MaxMin over groups), pessimistic tilt (HC-RLHF step 1).

With groups, MaxMin-RLHF's dual weights ``w`` (Chakraborty et al. 2024) turn the group rewards into
one egalitarian reward ``Σ_g w_g r_g``, and HC-RLHF step 1 then picks the cost multiplier λ for it.
Normalising the group rewards (``groups.normalize``: a per-prompt shift per group, regret or
centring on the reference samples) matters only for finding ``w``: a per-prompt shift cancels
inside the softmax, so the deployed policy uses the raw scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from safealign.config import GroupsConfig, PolicyConfig, SafetyConfig
from safealign.constraints.candidates import Candidates
from safealign.constraints.group_rewards import normalize_group_rewards
from safealign.constraints.maxmin_solver import solve_maxmin
from safealign.constraints.selection import SelectionResult, select_candidate_policy
from safealign.models.scalar import ScoringModel


@dataclass(frozen=True)
class Scorers:
    """The models that score candidates; ``group_rewards`` replaces ``reward`` when groups are on.

    ``group_weights`` (the MaxMin dual weights) are set once alignment has found them.
    """

    cost: ScoringModel
    reward: ScoringModel | None = None
    group_rewards: Mapping[str, ScoringModel] | None = None
    group_weights: Mapping[str, float] | None = None


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
        group_weights: MaxMin dual weights per group (None without groups).
        group_rewards: Per group, the expected normalised model reward under the selected policy.
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
    weights = normalized = None
    if scored.group_rewards is not None:
        names = list(scorers.group_rewards)
        normalized = normalize_group_rewards(
            scored.group_rewards, mode=groups.normalize, beta=policy.beta, log_p=scored.log_p
        )
        maxmin = solve_maxmin(normalized, beta=policy.beta, log_p=scored.log_p)
        weights = {g: float(w) for g, w in zip(names, maxmin.weights, strict=True)}
        scorers = Scorers(
            cost=scorers.cost, group_rewards=scorers.group_rewards, group_weights=weights
        )
        scored = _combined(scored, scorers)  # reweight the scores we have; do not score again
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
    group_values = None
    if selection.policy is not None and scored.group_rewards is not None:
        q = selection.policy.probabilities(scored.rewards, scored.costs, log_p=scored.log_p)
        group_values = {
            g: float((q * normalized[i]).sum(-1).mean())
            for i, g in enumerate(scorers.group_rewards)
        }
    return AlignResult(selection, scorers, weights, group_values)
