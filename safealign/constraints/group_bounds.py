"""Per-group bounds from the safety test's own sample: each group's cost and reward, certified.

The HC-RLHF safety test (:func:`safealign.constraints.hc_rlhf.certify`) samples one response per
safety prompt from the released policy. With user groups, the *same* picks also give each group a
one-sided upper confidence bound on its expected cost and a lower bound on its expected model
reward, over the safety prompts that count for it. They sit next to the population certificate
and never change it: whether the policy is released is decided by the population test alone.

* Which prompts count: where groups are given, a safety prompt counts for every group whose
  safety pairs carry it (a prompt asked by users of two groups counts for both); for EM clusters,
  which are not released per user, every prompt counts for every cluster (``prompts: "all"``).
  A group's bound is then about its own prompts' distribution, assuming they too are i.i.d.
* Rewards are normalised per prompt over that prompt's K fresh candidates (``groups.normalize``):
  Bradley–Terry rewards have no fixed zero, so bounding raw scores would mean nothing.
* Coverage (``safety.group_coverage``): by default simultaneous, every one of the 2G bounds at
  ``delta / (2G)`` so all hold together with probability at least the certificate's confidence
  (union bound); ``individual`` computes each at ``delta`` on its own (then all 2G hold together
  only with probability ``1 - 2G delta``; measured coverage 0.83-0.87 at nominal 0.90, issue 13).
  The block's ``simultaneous`` says which is shown.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from safealign.constraints.bounds import upper_bound
from safealign.constraints.tilting import metric_costs, prompt_expectations
from safealign.data.records import PairDataset
from safealign.errors import ConfigError, DataError

#: Where a group's prompts come from: its own pairs' prompts, or every prompt.
GROUP_PROMPTS: tuple[str, ...] = ("own", "all")

# One prompt's groups: a name, several names, or None (the prompt counts for no group).
PromptGroups = str | Collection[str] | None


def group_rows(prompt_groups: Sequence[PromptGroups], name: str) -> list[int]:
    """Positions of the prompts that count for group ``name``.

    Args:
        prompt_groups: Per prompt, the group it belongs to, a collection of groups (a prompt
            asked by users of several groups counts for each), or None.
        name: The group.
    """
    return [i for i, entry in enumerate(prompt_groups) if name in _names(entry)]


def safety_prompt_groups(pairs: PairDataset) -> tuple[frozenset[str], ...]:
    """Each distinct prompt's groups (in ``pairs.prompts`` order): the groups of its pairs."""
    groups: dict[str, set[str]] = {p: set() for p in pairs.prompts}
    for pair in pairs:
        if pair.group is not None:
            groups[pair.prompt].add(pair.group)
    return tuple(frozenset(g) for g in groups.values())


def certify_group_samples(
    costs: Tensor,
    group_rewards: Mapping[str, Tensor],
    *,
    metric: str,
    confidence: float,
    bound: str,
    value_range: tuple[float, float] | None,
    prompt_groups: Sequence[PromptGroups] | None = None,
    reward_normalization: str | None = None,
    simultaneous: bool = True,
    weights: Tensor | None = None,
) -> dict[str, Any]:
    """Each group's cost upper bound and reward lower bound from one response per safety prompt.

    The cost bound is the population test's own bound (``metric``, ``bound``, ``value_range``) on
    the group's prompts; the reward bound is ``-upper_bound(-rewards)``, with the same bound where
    it applies to a reward: ``hoeffding`` needs a declared range and ``clopper_pearson`` 0/1
    outcomes, which normalised rewards have not, so those two give a Student t reward bound (the
    block's ``reward_bound`` says which). A group with fewer than 2 prompts gets nulls and a
    ``reason``.

    Args:
        costs: Raw cost-model scores of the picked responses, ``[n]`` (the metric is applied here).
        group_rewards: Per group, the normalised model reward of the same picks, ``[n]``.
        metric: The population test's metric (``safety.metric``).
        confidence: ``1 - delta`` of every bound.
        bound: The population test's bound kind.
        value_range: The declared range of the per-response metric, if any.
        prompt_groups: Per prompt, its group(s) (see :func:`group_rows`); None: every prompt
            counts for every group.
        reward_normalization: How ``group_rewards`` were normalised (recorded).
        simultaneous: True: every one of the ``2G`` bounds is computed at ``delta / (2G)``, so
            all hold together with probability at least ``confidence`` (union bound); False:
            each at ``delta`` on its own (measured: 0.83-0.87 coverage at nominal 0.90, issue 13).
        weights: With ``safety.unit: prompt_expectation``, the resampler's probabilities ``[n, K]``;
            ``costs`` and every group's rewards are then ``[n, K]`` and each prompt contributes
            its expectation under ``weights``.

    Returns:
        ``{"confidence", "per_bound_confidence", "metric", "cost_bound", "reward_bound",
        "reward_normalization", "simultaneous", "note", "groups": {name: {"n", "prompts", "cost_mean",
        "cost_upper_bound", "reward_mean", "reward_lower_bound", "reason"}}}``.
    """
    if weights is not None:  # a padded slot (weight 0) may hold anything
        costs = torch.where(weights > 0, torch.as_tensor(costs, dtype=torch.float64), 0.0)
    values = metric_costs(
        costs, metric, cost_range=value_range if metric == "expected_cost" else None
    )
    if weights is not None:  # each prompt's expectation under the resampler (Rao-Blackwellised)
        values = prompt_expectations(values, weights)
        group_rewards = {
            name: prompt_expectations(torch.as_tensor(r, dtype=torch.float64), weights)
            for name, r in group_rewards.items()
        }
    n = values.shape[0]
    if prompt_groups is not None and len(prompt_groups) != n:
        raise DataError(f"prompt_groups has {len(prompt_groups)} entries for {n} prompts")
    rewards = {name: _checked(r, name, n) for name, r in group_rewards.items()}
    reward_bound = "student_t"  # normalised rewards are neither 0/1 nor in a declared range
    # Union bound: 2 bounds per group, each at delta / (2G), all hold with prob >= confidence.
    each = 1 - (1 - confidence) / (2 * len(rewards)) if simultaneous and rewards else confidence
    groups = {}
    for name, reward in rewards.items():
        rows = list(range(n)) if prompt_groups is None else group_rows(prompt_groups, name)
        entry: dict[str, Any] = {
            "n": len(rows),
            "prompts": "all" if prompt_groups is None else "own",
            "cost_mean": None,
            "cost_upper_bound": None,
            "reward_mean": None,
            "reward_lower_bound": None,
            "reason": None,
        }
        if len(rows) < 2:
            entry["reason"] = (
                f"{len(rows)} safety prompt(s) count for this group; a bound needs at least 2"
            )
            groups[name] = entry
            continue
        index = torch.tensor(rows, dtype=torch.long)
        cost = upper_bound(values[index], confidence=each, bound=bound, value_range=value_range)
        lower = upper_bound(-reward[index], confidence=each, bound=reward_bound)
        entry.update(
            cost_mean=cost.mean,
            cost_upper_bound=float(cost.upper_bound),
            reward_mean=-lower.mean,
            reward_lower_bound=-float(lower.upper_bound),
        )
        groups[name] = entry
    return {
        "confidence": confidence,
        "per_bound_confidence": each,
        "metric": metric,
        "cost_bound": bound,
        "reward_bound": reward_bound,
        "reward_normalization": reward_normalization,
        "simultaneous": simultaneous,
        "note": _note(confidence, len(groups), bound, reward_bound, simultaneous=simultaneous),
        "groups": groups,
    }


def check_group_prompts(group_prompts: str) -> None:
    """Reject an unknown ``group_prompts`` before anything is unsealed."""
    if group_prompts not in GROUP_PROMPTS:
        raise ConfigError(
            f"group_prompts must be one of {', '.join(GROUP_PROMPTS)} (got {group_prompts!r})"
        )


def _names(entry: PromptGroups) -> Collection[str]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else entry


def _checked(values: Tensor, name: str, n: int) -> Tensor:
    reward = torch.as_tensor(values).detach().to(torch.float64)
    if reward.shape != (n,):
        raise DataError(
            f"group {name!r}: one reward per safety prompt needed, [{n}] (got {tuple(reward.shape)})"
        )
    if not bool(torch.isfinite(reward).all()):
        raise DataError(f"group {name!r}: rewards contain NaN or infinite values")
    return reward


def _note(
    confidence: float, groups: int, bound: str, reward_bound: str, *, simultaneous: bool
) -> str:
    if simultaneous:
        text = (
            f"Simultaneous: all {2 * groups} group bounds hold together with probability at least "
            f"{confidence:g} (each at {1 - (1 - confidence) / max(2 * groups, 1):.4g}, union bound)."
        )
    else:
        joint = 1 - (1 - confidence) * 2 * groups
        text = (
            f"Each group's bound holds with probability {confidence:g} on its own, not "
            f"simultaneously: all {2 * groups} bounds hold together with probability at least "
            f"{max(joint, 0.0):g} (union bound)."
        )
    text += (
        " They come from the safety test's own sample, one response per prompt, and do not enter "
        "the release decision."
    )
    if reward_bound != bound:
        text += (
            f" Rewards use the {reward_bound} bound (approximate): normalised rewards are neither "
            f"0/1 nor in a declared range, which {bound} needs."
        )
    return text
