"""Closed-form KL-regularised policies over candidate sets, with expectation constraints.

Every prompt ``n`` comes with ``K`` candidate responses sampled from the reference policy, so a
policy is a row-stochastic matrix ``q`` of shape ``[N, K]``. We maximise the prompt-averaged

    E_q[r] - beta * KL(q || p)

(``p`` the reference distribution renormalised over the candidates; uniform when ``log_p`` is
omitted, because the candidates were sampled from pi_ref) subject to expectation constraints
``E_q[c_m] <= tau_m``, either on the prompt average ("global") or on every prompt ("per_prompt").
The Gibbs variational principle gives ``q_lambda = softmax(log p + (r - sum_m lambda_m c_m)/beta)``
and the concave dual ``g(lambda) = beta * lse(log p + (r - lambda.c)/beta) + lambda.tau``
(HC-RLHF, Chittepu et al. 2025, tilting over candidates; DESIGN.md "Closed forms"), which we
minimise over ``lambda >= 0``. Everything is batched torch, on the tensors' device, in float64.

The dual and its checks are in :mod:`~safealign.constraints.kl_dual`, the methods that minimise
it in :mod:`~safealign.constraints.dual_search`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from safealign.constraints.dual_search import _newton_bisect, _projected_newton, _smallest_passing
from safealign.constraints.kl_dual import _build_dual, _Dual, _prepare
from safealign.errors import DataError, InfeasibleError

Scope = Literal["global", "per_prompt"]
BoundFn = Callable[[Tensor], "float | Tensor"]


@dataclass(frozen=True)
class SolverResult:
    """Solution of a (constrained) KL-regularised problem over candidate sets.

    Attributes:
        q: Optimal policy over the candidates, ``[N, K]``, rows sum to one.
        lambdas: Lagrange multipliers, ``[M]`` for global constraints, ``[N, M]`` per prompt.
        objective: Prompt-averaged ``E_q[r] - beta * KL(q || p)``.
        expected_reward: Prompt-averaged ``E_q[r]``.
        expected_costs: Prompt-averaged ``E_q[c_m]``, ``[M]``.
        prompt_costs: Per-prompt ``E_q[c_m]``, ``[N, M]``.
        iterations: Dual evaluations used by the root finder / Newton method.
        upper_bound: The user-supplied bound at the solution (pessimistic solver only), else None.
    """

    q: Tensor
    lambdas: Tensor
    objective: float
    expected_reward: float
    expected_costs: Tensor
    prompt_costs: Tensor
    iterations: int
    upper_bound: float | None = None


def solve_unconstrained(
    r: Tensor, *, beta: float, log_p: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The unconstrained optimum ``q* = softmax(log p + r / beta)`` per prompt.

    Args:
        r: Rewards, ``[N, K]``.
        beta: KL coefficient, ``> 0``.
        log_p: Reference log-probabilities ``[N, K]`` (``-inf`` masks a candidate); uniform if None.
        dtype: Floating type of the computation.

    Returns:
        ``q`` of shape ``[N, K]``.
    """
    r, log_p = _prepare(r, log_p, beta=beta, dtype=dtype)
    return torch.softmax(log_p + r / beta, dim=-1)


def policy_objective(q: Tensor, r: Tensor, *, beta: float, log_p: Tensor | None = None) -> float:
    """Prompt-averaged ``E_q[r] - beta * KL(q || p)`` with ``0 log 0 = 0``.

    Args:
        q: Policy ``[N, K]``.
        r: Rewards ``[N, K]``.
        beta: KL coefficient.
        log_p: Reference log-probabilities ``[N, K]``; uniform if None.
    """
    r, log_p = _prepare(r, log_p, beta=beta, dtype=torch.float64)
    q = q.to(r)
    return float(((q * r).sum(-1) - beta * kl_rows(q, log_p)).mean())


def kl_rows(q: Tensor, log_p: Tensor) -> Tensor:
    """Per-prompt ``KL(q || p)``, ``[N]``, with ``0 log 0 = 0`` (so masked candidates are fine)."""
    log_ratio = torch.where(q > 0, torch.log(q.clamp_min(1e-300)) - log_p, 0.0)
    return (q * log_ratio).sum(-1)


def solve_constrained(
    r: Tensor,
    costs: Tensor,
    *,
    beta: float,
    thresholds: float | Sequence[float] | Tensor,
    log_p: Tensor | None = None,
    scope: Scope = "global",
    tol: float = 1e-12,
    max_iter: int = 200,
    dtype: torch.dtype = torch.float64,
) -> SolverResult:
    """Maximise ``E_q[r] - beta KL(q||p)`` subject to ``E_q[c_m] <= tau_m`` for every ``m``.

    One constraint is solved by safeguarded Newton-bisection on ``lambda >= 0`` (``lambda = 0``
    when already feasible); several by projected Newton on the dual. ``scope="global"`` constrains
    the uniform average over prompts; ``"per_prompt"`` gives every prompt its own multipliers.

    Args:
        r: Rewards, ``[N, K]``.
        costs: Costs, ``[N, K]`` (one constraint) or ``[M, N, K]``.
        beta: KL coefficient, ``> 0``.
        thresholds: ``tau``, a scalar or ``M`` values.
        log_p: Reference log-probabilities ``[N, K]``; uniform if None.
        scope: ``"global"`` or ``"per_prompt"``.
        tol: Stopping tolerance on the constraint residual, relative to the cost scale.
        max_iter: Cap on Newton iterations.
        dtype: Floating type of the computation.

    Raises:
        InfeasibleError: A threshold is below the smallest achievable expected cost, or the
            constraints are jointly infeasible.
    """
    dual = _build_dual(
        r, costs, beta=beta, thresholds=thresholds, log_p=log_p, scope=scope, dtype=dtype
    )
    dual.check_feasible()
    ftol = tol * dual.cost_scale
    if dual.c.shape[0] == 1:
        lam, iterations = _newton_bisect(dual, ftol=ftol, max_iter=max_iter)
    else:
        lam, iterations = _projected_newton(dual, ftol=ftol, max_iter=max_iter)
    return _result(dual, lam, iterations)


def solve_pessimistic(
    r: Tensor,
    costs: Tensor,
    *,
    beta: float,
    cost_threshold: float,
    bound_fn: BoundFn,
    log_p: Tensor | None = None,
    rtol: float = 1e-12,
    max_iter: int = 200,
    dtype: torch.dtype = torch.float64,
) -> SolverResult:
    """Smallest ``lambda >= 0`` whose tilted policy passes a pessimistic bound (HC-RLHF step 1).

    HC-RLHF (Chittepu et al. 2025) replaces ``E[c] <= tau`` by ``bound(per-prompt E_q[c]) <= tau``,
    e.g. mean + k * std with the k of ``bounds.pessimism_k``, treating the per-prompt expected costs
    as the i.i.d. units. Larger lambda lowers every per-prompt cost, so for a bound that grows with
    the costs the smallest passing lambda (the most rewarding such policy) is found by bisection.

    Args:
        r: Rewards, ``[N, K]``.
        costs: Costs, ``[N, K]``.
        beta: KL coefficient, ``> 0``.
        cost_threshold: ``tau``.
        bound_fn: Maps per-prompt expected costs ``[N]`` to a scalar upper bound.
        log_p: Reference log-probabilities ``[N, K]``; uniform if None.
        rtol: Relative width of the final bracket on lambda.
        max_iter: Cap on bisection steps.
        dtype: Floating type of the computation.

    Raises:
        InfeasibleError: The bound exceeds ``tau`` even when every prompt takes its cheapest
            candidate (the ``lambda -> infinity`` limit).
    """
    dual = _build_dual(
        r, costs, beta=beta, thresholds=cost_threshold, log_p=log_p, scope="global", dtype=dtype
    )
    if dual.c.shape[0] != 1:
        raise DataError(
            f"solve_pessimistic takes one cost, costs of shape [N, K]; got {tuple(costs.shape)}"
        )

    def bound_at(lam: float) -> float:
        q = torch.softmax(dual.logits(dual.r.new_full((1, 1), lam)), dim=-1)
        return float(bound_fn((q * dual.c[0]).sum(-1) + dual.cmin[0]))

    limit = float(bound_fn(dual.cmin[0]))
    if limit > cost_threshold:
        raise InfeasibleError(
            f"the pessimistic bound is {limit:.6g} > cost_threshold {cost_threshold:.6g} even with every "
            f"prompt on its cheapest candidate (lambda -> infinity, {dual.r.shape[0]} prompts); add safer "
            "candidates, more prompts, or raise cost_threshold"
        )
    lam, value, iterations = _smallest_passing(
        bound_at, cost_threshold, start=dual.lambda_start, rtol=rtol, max_iter=max_iter
    )
    return replace(_result(dual, dual.r.new_full((1, 1), lam), iterations), upper_bound=value)


def _result(dual: _Dual, lam: Tensor, iterations: int) -> SolverResult:
    q = torch.softmax(dual.logits(lam), dim=-1)
    prompt_costs = torch.einsum("nk,mnk->nm", q, dual.c) + dual.cmin.T
    reward = (q * dual.r).sum(-1)
    objective = reward - dual.beta * kl_rows(q, dual.log_p)
    return SolverResult(
        q=q,
        lambdas=lam if dual.per_prompt else lam[0],
        objective=float(objective.mean()),
        expected_reward=float(reward.mean()),
        expected_costs=prompt_costs.mean(0),
        prompt_costs=prompt_costs,
        iterations=iterations,
    )
