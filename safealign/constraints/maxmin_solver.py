"""Egalitarian (MaxMin) KL-regularised policy over candidate sets (MaxMin-RLHF, Chakraborty et al. 2024).

MaxMin-RLHF maximises the worst group's reward, ``max_q min_g E_q[r_g] - beta KL(q || p)``
(their Eq. 6, here over K candidates per prompt and averaged over prompts). Writing the min as a
min over mixtures ``w`` in the simplex and swapping max and min (Sion), the inner maximum is the
Gibbs policy ``q_w = softmax(log p + w.r / beta)`` and the dual is

    min_{w in simplex}  D(w) = beta * mean_n lse(log p + sum_g w_g r_g / beta),

a smooth convex function with gradient ``dD/dw_g = mean_n E_{q_w}[r_g]`` (each group's reward).
We minimise it with FISTA and Euclidean projection onto the simplex. The duality gap at ``w`` is
``sum_g w_g R_g - min_g R_g``: it vanishes exactly when every group with ``w_g > 0`` gets the
worst reward, the equal-rewards condition of the optimum. An optional global cost constraint
``mean_n E_q[c] <= cost_threshold`` adds a multiplier ``lambda >= 0``, found by an outer
bracketing root search on ``E_{q(lambda)}[c] = cost_threshold`` (HC-RLHF's tilt, DESIGN.md). Under
HC-RLHF's pessimistic bound instead of the mean, see :mod:`~safealign.constraints.maxmin_pessimistic`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from safealign.constraints.solvers import _prepare, kl_rows
from safealign.errors import DataError, InfeasibleError


@dataclass(frozen=True)
class MaxMinResult:
    """Solution of the MaxMin problem.

    Attributes:
        q: Optimal policy ``[N, K]``.
        weights: Optimal group weights ``w`` on the simplex, ``[G]``.
        cost_lambda: Multiplier of the cost constraint (0.0 when absent or inactive).
        objective: ``min_g mean_n E_q[r_g] - beta * mean_n KL(q || p)``.
        group_rewards: ``mean_n E_q[r_g]``, ``[G]``.
        expected_cost: ``mean_n E_q[c]``, or None without costs.
        duality_gap: Dual minus primal objective at the solution (an optimality certificate).
        iterations: FISTA iterations summed over all inner solves.
        upper_bound: The pessimistic bound at the solution
            (:func:`~safealign.constraints.maxmin_pessimistic.solve_maxmin_pessimistic`), else None.
    """

    q: Tensor
    weights: Tensor
    cost_lambda: float
    objective: float
    group_rewards: Tensor
    expected_cost: float | None
    duality_gap: float
    iterations: int
    upper_bound: float | None = None


@dataclass(frozen=True)
class _Problem:
    log_p: Tensor  # [N, K], rows normalised
    rewards: Tensor  # [G, N, K]
    cost: Tensor  # [N, K], shifted so each row's cheapest candidate costs 0 (zeros without costs)
    beta: float

    def evaluate(self, w: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        """``D(w)`` (without the constant lambda terms), group rewards ``[G]`` and ``q [N, K]``."""
        z = self.log_p + (torch.einsum("g,gnk->nk", w, self.rewards) - lam * self.cost) / self.beta
        lse = torch.logsumexp(z, dim=-1)
        q = torch.exp(z - lse[:, None])
        group_rewards = torch.einsum("nk,gnk->g", q, self.rewards) / q.shape[0]
        return self.beta * lse.mean(), group_rewards, q

    def hessian(self, q: Tensor) -> Tensor:
        """``d2D/dw2 = mean_n Cov_q(r_g, r_h) / beta``, ``[G, G]``."""
        centred = self.rewards - (q * self.rewards).sum(-1, keepdim=True)
        return torch.einsum("ank,bnk,nk->ab", centred, centred, q) / (q.shape[0] * self.beta)


def solve_maxmin(
    rewards: Tensor,
    *,
    beta: float,
    log_p: Tensor | None = None,
    costs: Tensor | None = None,
    cost_threshold: float | None = None,
    tol: float = 1e-11,
    max_iter: int = 20_000,
    dtype: torch.dtype = torch.float64,
) -> MaxMinResult:
    """Maximise ``min_g E_q[r_g] - beta KL(q || p)``, optionally with ``E_q[c] <= cost_threshold``.

    Args:
        rewards: Group rewards ``[G, N, K]`` (normalise them first: Bradley-Terry rewards are
            defined up to a shift, and the min compares groups).
        beta: KL coefficient, ``> 0``.
        log_p: Reference log-probabilities ``[N, K]``; uniform if None.
        costs: Costs ``[N, K]`` for a global constraint, or None.
        cost_threshold: Threshold of the cost constraint (required with ``costs``).
        tol: Duality-gap tolerance of each inner solve, relative to the reward scale.
        max_iter: Cap on FISTA iterations per inner solve.
        dtype: Floating type of the computation.

    Raises:
        InfeasibleError: ``cost_threshold`` is below the minimum achievable expected cost.
    """
    if rewards.ndim != 3:
        raise DataError(f"rewards must have shape [G, N, K] (got {tuple(rewards.shape)})")
    if (costs is None) != (cost_threshold is None):
        raise DataError("costs and cost_threshold go together: give both or neither")
    _, log_p = _prepare(rewards[0], log_p, beta=beta, dtype=dtype)
    group_rewards = rewards.to(log_p)
    if not bool(torch.isfinite(group_rewards).all()):
        raise DataError("rewards contain NaN or infinite values")
    cost, cmin = torch.zeros_like(log_p), torch.zeros(log_p.shape[0]).to(log_p)
    if costs is not None:
        cost, cmin = _shifted_cost(costs, log_p)
    problem = _Problem(log_p=log_p, rewards=group_rewards, cost=cost, beta=float(beta))
    gap_tol = tol * max(float(group_rewards.abs().max()), float(beta), 1e-300)
    w = log_p.new_full((rewards.shape[0],), 1.0 / rewards.shape[0])
    lam, w, iterations = 0.0, *_solve_weights(problem, w, 0.0, gap_tol=gap_tol, max_iter=max_iter)
    if costs is not None:
        lam, w, more = _solve_lambda(
            problem, w, cmin, float(cost_threshold), gap_tol=gap_tol, max_iter=max_iter
        )
        iterations += more
    return _result(
        problem, w, lam, cmin, None if costs is None else float(cost_threshold), iterations
    )


def _shifted_cost(costs: Tensor, log_p: Tensor) -> tuple[Tensor, Tensor]:
    c = costs.to(log_p)
    if c.shape != log_p.shape or not bool(torch.isfinite(c).all()):
        raise DataError(
            f"costs must be finite with shape {tuple(log_p.shape)} (got {tuple(costs.shape)})"
        )
    masked = torch.isinf(log_p)
    cmin = torch.where(masked, math.inf, c).min(-1).values
    # The shift keeps r resolvable at large lambda and changes no policy (a per-prompt constant).
    return torch.where(masked, 0.0, c - cmin[:, None]), cmin


def _solve_weights(
    problem: _Problem, w: Tensor, lam: float, *, gap_tol: float, max_iter: int
) -> tuple[Tensor, int]:
    """Minimise ``D(., lambda)`` over the simplex: FISTA to find the support, then Newton on it."""
    w, iterations = _fista(problem, w, lam, gap_tol=gap_tol, max_iter=max_iter)
    polished, steps = _newton_polish(problem, w, lam, gap_tol=gap_tol)
    return polished, iterations + steps


def _fista(
    problem: _Problem, w: Tensor, lam: float, *, gap_tol: float, max_iter: int
) -> tuple[Tensor, int]:
    """FISTA with backtracking and function-value restart (O'Donoghue & Candes 2015) on the simplex.

    Stops at the gap tolerance, or once ``D`` stops decreasing in floating point: function values
    only resolve the gap to about sqrt(machine epsilon), the Newton polish does the rest.
    """
    value, grad, _ = problem.evaluate(w, lam)
    # Hessian of D is Cov_q(r) / beta; Popoviciu's inequality bounds its trace. Start optimistic.
    spread = problem.rewards.amax(-1) - problem.rewards.amin(-1)
    lipschitz = float((spread**2).mean(-1).sum()) / (4 * problem.beta) / 64 + 1e-300
    y, y_value, y_grad, momentum, stalls = w, value, grad, 1.0, 0
    for iteration in range(1, max_iter + 1):
        if _gap(w, grad) <= gap_tol or stalls >= 3:
            return w, iteration - 1
        while True:
            candidate = _project_simplex(y - y_grad / lipschitz)
            cand_value, cand_grad, _ = problem.evaluate(candidate, lam)
            step = candidate - y
            model = y_value + (y_grad * step).sum() + 0.5 * lipschitz * (step * step).sum()
            if float(cand_value) <= float(model) + 4e-16 * abs(float(y_value)):
                break
            lipschitz *= 2.0
        stalls = stalls + 1 if float(cand_value) >= float(value) - 4e-16 * abs(float(value)) else 0
        if float(cand_value) > float(value):
            # Restart: momentum overshot, so continue from the better point without it.
            y, y_value, y_grad, momentum = w, value, grad, 1.0
            continue
        next_momentum = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * momentum**2))
        y = _project_simplex(candidate + (momentum - 1.0) / next_momentum * (candidate - w))
        y_value, y_grad, _ = problem.evaluate(y, lam)
        w, value, grad, momentum = candidate, cand_value, cand_grad, next_momentum
    return w, max_iter


def _newton_polish(
    problem: _Problem, w: Tensor, lam: float, *, gap_tol: float, max_steps: int = 30
) -> tuple[Tensor, int]:
    """Newton steps on the support face ``{w_S > 0, sum w_S = 1}``, kept while the gap falls.

    Stationarity on the face is ``R_g = nu`` for every supported group (equal rewards), so
    Newton solves ``[H_SS 1; 1' 0] [d; nu] = [-R_S; 0]`` with ``H = Cov_q(r) / beta``.
    """
    _, grad, q = problem.evaluate(w, lam)
    gap = _gap(w, grad)
    for step in range(max_steps):
        if gap <= gap_tol:
            return w, step
        support = (w > 0).nonzero()[:, 0]
        size = support.numel()
        kkt = torch.zeros(size + 1, size + 1).to(w)
        kkt[:size, :size] = problem.hessian(q)[support][:, support]
        kkt[:size, size] = kkt[size, :size] = 1.0
        rhs = torch.cat([-grad[support], torch.zeros(1).to(w)])
        direction = torch.zeros_like(w)
        direction[support] = torch.linalg.lstsq(kkt, rhs[:, None]).solution[:size, 0]
        # Ratio test: the longest step (at most 1) that keeps every weight non-negative.
        shrinking = direction < 0
        length = (
            min(1.0, float((-w[shrinking] / direction[shrinking]).min()))
            if bool(shrinking.any())
            else 1.0
        )
        trial = (w + length * direction).clamp_min(0.0)
        trial = trial / trial.sum()
        _, trial_grad, trial_q = problem.evaluate(trial, lam)
        trial_gap = _gap(trial, trial_grad)
        if not trial_gap < gap:
            return w, step
        w, grad, q, gap = trial, trial_grad, trial_q, trial_gap
    return w, max_steps


def _gap(w: Tensor, group_rewards: Tensor) -> float:
    """Duality gap ``D(w) - P(q_w) = sum_g w_g R_g - min_g R_g`` (zero iff supported groups tie)."""
    return float((w * group_rewards).sum() - group_rewards.min())


def _project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection onto the probability simplex (Duchi et al. 2008)."""
    u = torch.sort(v, descending=True).values
    cumulative = u.cumsum(0) - 1.0
    ranks = torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype)
    rho = int((u - cumulative / ranks > 0).nonzero().max())
    return (v - cumulative[rho] / (rho + 1)).clamp_min(0.0)


def _solve_lambda(
    problem: _Problem,
    w: Tensor,
    cmin: Tensor,
    cost_threshold: float,
    *,
    gap_tol: float,
    max_iter: int,
) -> tuple[float, Tensor, int]:
    """Root of ``mean E_{q(lambda)}[c] = cost_threshold`` by Illinois regula falsi on a bracket.

    ``E_{q(lambda)}[c]`` is non-increasing: it is minus the derivative of the convex function
    ``lambda -> min_w D(w, lambda)`` (Danskin), so the bracket search is valid.
    """
    floor = float(cmin.mean())
    if cost_threshold < floor - 1e-12 * max(abs(floor), 1.0):
        raise InfeasibleError(
            f"cost_threshold {cost_threshold:.6g} is below the minimum achievable expected cost {floor:.6g} "
            f"(the mean over {cmin.numel()} prompts of each prompt's cheapest candidate's cost)"
        )
    target = cost_threshold - floor  # in shifted-cost units
    ftol = 1e-10 * max(float(problem.cost.max()), abs(target), 1e-300)
    iterations = 0

    def excess(lam: float, start: Tensor) -> tuple[float, Tensor]:
        nonlocal iterations
        w_lam, used = _solve_weights(problem, start, lam, gap_tol=gap_tol, max_iter=max_iter)
        iterations += used
        q = problem.evaluate(w_lam, lam)[2]
        return float((q * problem.cost).sum(-1).mean()) - target, w_lam

    f_lo, w = excess(0.0, w)
    if f_lo <= ftol:
        return 0.0, w, iterations
    spread = float((problem.rewards.amax(-1) - problem.rewards.amin(-1)).max()) + problem.beta
    lo, hi = 0.0, spread / max(float(problem.cost.max()), 1e-300)
    start = hi
    while (f_hi := excess(hi, w)[0]) > ftol:
        lo, f_lo, hi = hi, f_hi, 2.0 * hi
        if hi > 1e12 * start:
            raise InfeasibleError(
                f"expected cost stays {f_hi:.3g} above cost_threshold {cost_threshold:.6g} up to "
                f"lambda={lo:.3g}; the threshold is at the minimum cost {floor:.6g}, raise it slightly"
            )
    best, side = (hi, w), 0
    for _ in range(200):
        lam = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        if not lo < lam < hi:
            lam = 0.5 * (lo + hi)
        f_mid, w = excess(lam, w)
        best = (lam, w)
        if abs(f_mid) <= ftol or hi - lo <= 1e-15 * hi:
            break
        # Illinois: halve the stale end's value so the secant keeps shrinking the bracket.
        if f_mid > 0:
            lo, f_lo, f_hi, side = lam, f_mid, (0.5 * f_hi if side == 1 else f_hi), 1
        else:
            hi, f_hi, f_lo, side = lam, f_mid, (0.5 * f_lo if side == -1 else f_lo), -1
    return best[0], best[1], iterations


def _result(
    problem: _Problem,
    w: Tensor,
    lam: float,
    cmin: Tensor,
    cost_threshold: float | None,
    iterations: int,
) -> MaxMinResult:
    value, group_rewards, q = problem.evaluate(w, lam)
    kl = float(kl_rows(q, problem.log_p).mean())
    objective = float(group_rewards.min()) - problem.beta * kl
    expected_cost = None
    dual = float(value)
    if cost_threshold is not None:
        expected_cost = float((q * problem.cost).sum(-1).mean() + cmin.mean())
        # Undo the cost shift: D(w, lambda) = beta mean lse(...) - lambda mean cmin + lambda tau.
        dual += lam * (cost_threshold - float(cmin.mean()))
    return MaxMinResult(
        q=q,
        weights=w,
        cost_lambda=lam,
        objective=objective,
        group_rewards=group_rewards,
        expected_cost=expected_cost,
        duality_gap=dual - objective,
        iterations=iterations,
    )
