"""Group rewards for MaxMin: comparable across group models, reported and certified per group.

:func:`normalize_group_rewards` removes each group model's per-prompt offset before MaxMin takes
the minimum; :func:`group_report` gives each group's expected reward under a policy with a
confidence interval. Per-group bounds for a certificate come from the safety test's own sample
(:mod:`safealign.constraints.group_bounds`). The models themselves come from
:mod:`safealign.groups.training`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from scipy import stats
from torch import Tensor

from safealign.constraints.group_bounds import PromptGroups, group_rows
from safealign.constraints.solvers import _prepare
from safealign.errors import ConfigError, DataError


def normalize_group_rewards(
    rewards: Tensor,
    *,
    mode: str = "reference",
    beta: float | None = None,
    log_p: Tensor | None = None,
) -> Tensor:
    """Make group rewards ``[G, N, K]`` comparable before MaxMin takes their minimum.

    Bradley–Terry rewards are defined up to a per-prompt shift (different for every group model),
    so a raw minimum compares arbitrary offsets.

    * ``reference`` (default): ``r_g - E_p[r_g]`` per prompt under the reference distribution p
      over the candidates: 0 means "as good as the reference policy" for every group; needs no β.
    * ``regret``: ``r_g - β log Z_g``, ``Z_g = sum_k p_k exp(r_g / β)`` per prompt: each group's
      own optimum ``max_q E_q[r] - β KL(q || p)`` is then exactly 0.

    Args:
        rewards: ``[G, N, K]``.
        mode: ``reference`` or ``regret``.
        beta: The policy's KL coefficient (required by ``regret``).
        log_p: Reference log-probabilities ``[N, K]``; uniform over the candidates if None.
    """
    if rewards.ndim != 3:
        raise DataError(f"rewards must have shape [G, N, K] (got {tuple(rewards.shape)})")
    if mode not in ("reference", "regret"):
        raise ConfigError(f"groups.normalize must be 'reference' or 'regret' (got {mode!r})")
    if mode == "regret" and beta is None:
        raise ConfigError("normalize 'regret' needs beta, the policy's KL coefficient")
    scale = beta if mode == "regret" else 1.0  # _prepare validates beta; reference needs none
    prepared = [_prepare(r, log_p, beta=scale, dtype=torch.float64) for r in rewards]
    r = torch.stack([x for x, _ in prepared])
    log_p = prepared[0][1]
    if mode == "reference":
        p = log_p.exp()
        return r - (p * r).sum(-1, keepdim=True)
    return r - beta * torch.logsumexp(log_p + r / beta, dim=-1, keepdim=True)


def _per_prompt(q, values: Tensor, name: str, prompt_groups) -> Tensor:
    """``sum_k q[n, k] values[n, k]`` over the prompts of ``name`` (all if no prompt_groups)."""
    policy = (q.q if hasattr(q, "q") else q).double()  # a tensor or a solver result
    if values.shape != policy.shape:
        raise DataError(f"rewards/costs {tuple(values.shape)} do not match q {tuple(policy.shape)}")
    rows = torch.arange(policy.shape[0])
    if prompt_groups is not None:
        if len(prompt_groups) != policy.shape[0]:
            raise DataError(
                f"prompt_groups has {len(prompt_groups)} entries for {len(rows)} prompts"
            )
        rows = torch.tensor(group_rows(prompt_groups, name), dtype=torch.long)
    if rows.numel() < 2:
        raise DataError(f"group {name!r} has {rows.numel()} evaluation prompts; at least 2 needed")
    return (policy[rows] * values[rows].to(policy)).sum(-1)


def group_report(
    q,
    rewards: Tensor,
    *,
    names: Sequence[str],
    sizes: Mapping[str, int] | None = None,
    prompt_groups: Sequence[PromptGroups] | None = None,
    confidence: float = 0.95,
) -> dict:
    """Each group's expected reward under ``q`` with a Student-t interval, and the worst group.

    The i.i.d. units are prompts, ``v_n = sum_k q[n, k] r_g[n, k]``; the interval is
    ``mean ± t_{(1+confidence)/2}(n-1) s / sqrt(n)``.

    Args:
        q: Policy ``[N, K]`` or a result with ``.q`` (``MaxMinResult``, ``SolverResult``).
        rewards: ``[G, N, K]``, true (synthetic) or normalised model rewards.
        names: Group names, parallel to ``rewards``.
        sizes: Group sizes (users); default the number of evaluation prompts.
        prompt_groups: Each prompt's group, or a collection of groups (a prompt asked by users
            of several groups counts for each), to evaluate a group on its own prompts only
            (default: every prompt counts for every group).
        confidence: Coverage of the two-sided interval.

    Returns:
        ``{name: {"size", "reward", "reward_ci": [lo, hi]}, ..., "worst_group": name}``.
    """
    if rewards.ndim != 3 or len(names) != rewards.shape[0]:
        raise DataError(f"rewards {tuple(rewards.shape)} must be [G, N, K] with G = {len(names)}")
    report: dict = {}
    for g, name in enumerate(names):
        values = _per_prompt(q, rewards[g], name, prompt_groups)
        n, mean = values.numel(), float(values.mean())
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(values.std()) / math.sqrt(n)
        report[name] = {
            "size": int(sizes[name] if sizes is not None else n),
            "reward": mean,
            "reward_ci": [mean - half, mean + half],
        }
    report["worst_group"] = min(names, key=lambda name: report[name]["reward"])
    return report
