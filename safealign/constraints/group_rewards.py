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
    costs: Tensor | None = None,
    cost_lambdas: Tensor | None = None,
) -> Tensor:
    """Make group rewards ``[G, N, K]`` comparable before MaxMin takes their minimum.

    Bradley–Terry rewards are defined up to a per-prompt shift (different for every group model),
    so a raw minimum compares arbitrary offsets.

    * ``reference`` (default): ``r_g - E_p[r_g]`` per prompt under the reference distribution p
      over the candidates: 0 means "as good as the reference policy" for every group; needs no β.
    * ``regret``: ``r_g - β log Z_g``, ``Z_g = sum_k p_k exp(r_g / β)`` per prompt: each group's
      own optimum ``max_q E_q[r] - β KL(q || p)`` is then exactly 0. With ``costs`` and
      ``cost_lambdas`` (each group's own pessimistic multiplier λ_g,
      :func:`~safealign.constraints.maxmin_pessimistic.group_cost_lambdas`), against the group's
      *constrained* optimum instead, its best tilt ``q_g ∝ p exp((r_g - λ_g c) / β)`` that also
      passes the cost bound: ``r_g - β log Z_g(λ_g) - λ_g E_{q_g}[c]``, so that
      ``E_{q_g}[r_g] - β KL(q_g || p)`` is exactly 0 on every prompt (λ_g = 0 is the plain regret).

    Args:
        rewards: ``[G, N, K]``.
        mode: ``reference`` or ``regret``.
        beta: The policy's KL coefficient (required by ``regret``).
        log_p: Reference log-probabilities ``[N, K]``; uniform over the candidates if None.
        costs: The constrained metric per candidate ``[N, K]`` (``regret`` with ``cost_lambdas``).
        cost_lambdas: Each group's own cost multiplier ``[G]``, or None.
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
    if (costs is None) != (cost_lambdas is None):
        raise DataError("costs and cost_lambdas go together: give both or neither")
    if costs is None:
        return r - beta * torch.logsumexp(log_p + r / beta, dim=-1, keepdim=True)
    return r - _constrained_optimum(r, costs, cost_lambdas, beta=beta, log_p=log_p)


def _constrained_optimum(
    r: Tensor, costs: Tensor, cost_lambdas: Tensor, *, beta: float, log_p: Tensor
) -> Tensor:
    """Per group and prompt, ``E_{q_g}[r_g] - β KL(q_g || p)`` of the tilt at λ_g, ``[G, N, 1]``.

    It equals ``β lse(log p + (r_g - λ_g c) / β) + λ_g E_{q_g}[c]``; computed with each row's
    cheapest cost subtracted (a per-prompt constant that cancels), so that r stays resolvable.
    """
    c = costs.to(r)
    lam = torch.as_tensor(cost_lambdas).to(r).reshape(-1)
    if c.shape != r.shape[1:] or lam.shape != (r.shape[0],):
        raise DataError(
            f"costs {tuple(c.shape)} and cost_lambdas {tuple(lam.shape)} must be "
            f"{tuple(r.shape[1:])} and ({r.shape[0]},)"
        )
    if not bool(torch.isfinite(c).all() & torch.isfinite(lam).all() & (lam >= 0).all()):
        raise DataError("costs must be finite and cost_lambdas finite and >= 0")
    masked = torch.isinf(log_p)
    shifted = torch.where(
        masked, 0.0, c - torch.where(masked, torch.inf, c).min(-1).values[:, None]
    )
    z = log_p + (r - lam[:, None, None] * shifted) / beta
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    q = torch.exp(z - lse)
    return beta * lse + lam[:, None, None] * (q * shifted).sum(-1, keepdim=True)


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
