"""MaxMin under HC-RLHF's pessimistic cost constraint: group weights and cost multiplier, jointly.

Step 1 of HC-RLHF (Chittepu et al. 2025) asks the candidate policy to pass a pessimistic bound
``B(v) <= cost_threshold`` of the per-prompt expected costs ``v_n = E_{q_n}[c]`` (for Student t
HC-RLHF's ``mean + k * std``, the ``k`` of :func:`bounds.pessimism_k`; in general
:func:`bounds.anticipated_bound`). MaxMin-RLHF (Chakraborty et al. 2024) asks for the policy that
serves the worst group. Finding the group weights without the constraint and tilting by cost
afterwards (the sequential method) leaves the worst group below what the same expected cost allows:
the cost tilt moves the groups apart again, and the weights no longer equalise them.

Here both are solved together. For a cost price ``lambda >= 0`` the MaxMin optimum of the
penalised problem ``max_q min_g E_q[r_g] - lambda E_q[c] - beta KL(q || p)`` is the Gibbs policy
``q_{w(lambda), lambda}``, ``w(lambda)`` the minimiser of the dual over the simplex
(:mod:`~safealign.constraints.maxmin_solver`); by Lagrange duality it is also the exact MaxMin
optimum under the *mean* constraint ``E_q[c] <= t(lambda)``, its own mean cost, and ``t`` falls
as ``lambda`` grows (Danskin). We return the smallest ``lambda`` whose MaxMin optimum passes the
pessimistic bound, exactly as the tilting path returns the smallest passing ``lambda`` for one
reward: with one group the two coincide. What is guaranteed: the policy passes the bound, and no
policy over the candidates with mean cost at most its own serves the worst group better (the
returned ``duality_gap`` certifies it). It is optimal along that path, not over every policy that
passes the bound: the exact optimum of ``mean + k * std <= tau`` gives each prompt its own
multiplier (a second-order cone program, :func:`oracle.solve_maxmin_pessimistic_oracle`), which
a deployed single-``lambda`` tilt cannot express; ``benchmarks/maxmin_constrained.py`` measures
that gap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from safealign.constraints.dual_search import _LAMBDA_LIMIT
from safealign.constraints.maxmin_solver import (
    MaxMinResult,
    _gap,
    _newton_polish,
    _Problem,
    _result,
    _shifted_cost,
    _solve_weights,
)
from safealign.constraints.solvers import _prepare
from safealign.errors import DataError, InfeasibleError

BoundFn = Callable[[Tensor], "float | Tensor"]


def solve_maxmin_pessimistic(
    rewards: Tensor,
    costs: Tensor,
    *,
    beta: float,
    cost_threshold: float,
    bound_fn: BoundFn,
    log_p: Tensor | None = None,
    tol: float = 1e-11,
    rtol: float = 1e-12,
    max_iter: int = 20_000,
    dtype: torch.dtype = torch.float64,
) -> MaxMinResult:
    """MaxMin whose policy passes ``bound_fn(per-prompt E_q[c]) <= cost_threshold``.

    Args:
        rewards: Normalised group rewards ``[G, N, K]``.
        costs: The constrained metric per candidate, ``[N, K]``.
        beta: KL coefficient, ``> 0``.
        cost_threshold: ``tau``.
        bound_fn: Maps per-prompt expected costs ``[N]`` to a scalar upper bound (step 1's).
        log_p: Reference log-probabilities ``[N, K]``; uniform if None.
        tol: Duality-gap tolerance of each weight solve, relative to the reward scale.
        rtol: Relative width of the final bracket on lambda (as :func:`solve_pessimistic`).
        max_iter: Cap on FISTA iterations per weight solve.
        dtype: Floating type of the computation.

    Returns:
        A :class:`MaxMinResult`; ``expected_cost`` is the policy's mean cost ``t``,
        ``duality_gap`` that of the MaxMin problem under ``E_q[c] <= t``, and ``upper_bound``
        the pessimistic bound at the solution.

    Raises:
        InfeasibleError: The bound exceeds ``cost_threshold`` even when every prompt takes its
            cheapest candidate (``lambda -> infinity``), as in :func:`solve_pessimistic`.
    """
    if rewards.ndim != 3:
        raise DataError(f"rewards must have shape [G, N, K] (got {tuple(rewards.shape)})")
    _, log_p = _prepare(rewards[0], log_p, beta=beta, dtype=dtype)
    group_rewards = rewards.to(log_p)
    if not bool(torch.isfinite(group_rewards).all()):
        raise DataError("rewards contain NaN or infinite values")
    cost, cmin = _shifted_cost(costs, log_p)
    problem = _Problem(log_p=log_p, rewards=group_rewards, cost=cost, beta=float(beta))
    limit = float(bound_fn(cmin))
    if limit > cost_threshold:
        raise InfeasibleError(
            f"the pessimistic bound is {limit:.6g} > cost_threshold {cost_threshold:.6g} even with every "
            f"prompt on its cheapest candidate (lambda -> infinity, {cmin.numel()} prompts); add safer "
            "candidates, more prompts, or raise cost_threshold"
        )
    gap_tol = tol * max(float(group_rewards.abs().max()), float(beta), 1e-300)
    weights: dict[float, Tensor] = {}
    state = {"w": log_p.new_full((rewards.shape[0],), 1.0 / rewards.shape[0]), "iterations": 0}

    def bound_at(lam: float) -> float:
        # Warm start from the last weights: neighbouring lambdas have nearby weights, usually on
        # the same support, where Newton alone converges; FISTA only when it does not.
        w, used = _newton_polish(problem, state["w"], lam, gap_tol=gap_tol)
        if _gap(w, problem.evaluate(w, lam)[1]) > gap_tol:
            w, more = _solve_weights(problem, w, lam, gap_tol=gap_tol, max_iter=max_iter)
            used += more
        state["w"], state["iterations"] = w, state["iterations"] + used
        weights[lam] = w
        q = problem.evaluate(w, lam)[2]
        return float(bound_fn((q * problem.cost).sum(-1) + cmin))

    lam, value = _smallest_passing_secant(
        bound_at, cost_threshold, start=_lambda_start(problem, cmin), rtol=rtol
    )
    w = weights[lam]
    mean_cost = float((problem.evaluate(w, lam)[2] * problem.cost).sum(-1).mean() + cmin.mean())
    # The mean constraint active at the solution is E_q[c] <= its own mean cost: the gap is that
    # problem's (zero up to the weight solve's tolerance).
    result = _result(problem, w, lam, cmin, mean_cost, int(state["iterations"]))
    return replace(result, upper_bound=value)


def _smallest_passing_secant(
    bound_at: Callable[[float], float], cost_threshold: float, *, start: float, rtol: float
) -> tuple[float, float]:
    """Smallest ``lambda >= 0`` with ``bound_at(lambda) <= cost_threshold``, and the bound there.

    :func:`dual_search._smallest_passing`'s doubling bracket, then Illinois regula falsi instead
    of bisection (each evaluation is a weight solve, so the ~40 bisection steps cost most of the
    time); the passing end of the bracket is returned, so the policy satisfies the bound exactly.
    Bisection takes over whenever the secant leaves the bracket or stops shrinking it.
    """
    if (value := bound_at(0.0)) <= cost_threshold:
        return 0.0, value
    lo, f_lo = 0.0, value - cost_threshold
    hi = start
    while (f_hi := bound_at(hi) - cost_threshold) > 0:
        lo, f_lo, hi = hi, f_hi, 2.0 * hi
        if hi > _LAMBDA_LIMIT * start:
            raise InfeasibleError(
                f"the pessimistic bound is still {f_hi + cost_threshold:.6g} > cost_threshold "
                f"{cost_threshold:.6g} at lambda={lo:.3g}; the threshold is at the limit, raise it slightly"
            )
    ftol = 1e-13 * max(abs(cost_threshold), 1.0)
    side, width, steps = 0, hi - lo, 0
    for _ in range(200):
        if hi - lo <= rtol * hi or f_hi >= -ftol:
            break
        lam = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        steps += 1
        if not lo < lam < hi or steps > 3:
            lam = 0.5 * (lo + hi)  # bisect: the secant left the bracket or did not halve it
        f_mid = bound_at(lam) - cost_threshold
        if f_mid <= 0:  # Illinois: halve the stale end's value so the secant keeps shrinking
            hi, f_hi, f_lo, side = lam, f_mid, (0.5 * f_lo if side == -1 else f_lo), -1
        else:
            lo, f_lo, f_hi, side = lam, f_mid, (0.5 * f_hi if side == 1 else f_hi), 1
        if hi - lo <= 0.5 * width:
            width, steps = hi - lo, 0
    return hi, f_hi + cost_threshold


def _lambda_start(problem: _Problem, cmin: Tensor) -> float:
    """Where ``r / beta`` and ``lambda c / beta`` balance: ``_Dual.lambda_start`` over groups."""
    spread = float((problem.rewards.amax(-1) - problem.rewards.amin(-1)).max()) + problem.beta
    return spread / max(float(problem.cost.max()), float(cmin.abs().max()), 1e-300)


def group_cost_lambdas(
    rewards: Tensor,
    costs: Tensor,
    *,
    beta: float,
    cost_threshold: float,
    bound_fn: BoundFn,
    log_p: Tensor | None = None,
) -> Tensor:
    """Each group's own pessimistic multiplier: the tilting path on ``r_g`` alone, ``[G]``.

    ``q_{lambda_g} = softmax(log p + (r_g - lambda_g c) / beta)`` is group ``g``'s best tilt at the
    same KL price that also passes the bound: the constrained optimum that 'regret'
    normalisation measures each group against (:func:`normalize_group_rewards` with
    ``cost_lambdas``).

    Raises:
        InfeasibleError: As :func:`~safealign.constraints.solvers.solve_pessimistic` (the same
            for every group: the ``lambda -> infinity`` limit does not depend on the reward).
    """
    # One group is the tilting path (solve_pessimistic's lambda), found with the secant search.
    solved = [
        solve_maxmin_pessimistic(
            r[None], costs, beta=beta, cost_threshold=cost_threshold, bound_fn=bound_fn, log_p=log_p
        )
        for r in rewards
    ]
    return torch.tensor([s.cost_lambda for s in solved], dtype=torch.float64)
