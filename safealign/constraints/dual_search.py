"""Minimising the dual of :mod:`~safealign.constraints.kl_dual` over ``lambda >= 0``: Newton-
bisection for one constraint, projected Newton for several, and the bisection of the pessimistic
solver."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from safealign.constraints.kl_dual import _Dual, _DualEval
from safealign.errors import InfeasibleError

# Multiple of the starting lambda beyond which a diverging dual is declared infeasible: the dual is
# unbounded below exactly when the primal has no feasible point.
_LAMBDA_LIMIT = 1e12


def _smallest_passing(
    bound_at: Callable[[float], float],
    cost_threshold: float,
    *,
    start: float,
    rtol: float,
    max_iter: int,
) -> tuple[float, float, int]:
    """Smallest ``lambda >= 0`` with ``bound_at(lambda) <= cost_threshold``: doubling, then bisection.

    Returns lambda, the bound there and the number of bound evaluations.
    """
    lo, hi, iterations = 0.0, 0.0, 1
    if (value := bound_at(0.0)) <= cost_threshold:
        return 0.0, value, iterations
    hi = start
    while (value := bound_at(hi)) > cost_threshold:
        iterations += 1
        lo, hi = hi, 2.0 * hi
        if hi > _LAMBDA_LIMIT * start:
            raise InfeasibleError(
                f"the pessimistic bound is still {value:.6g} > cost_threshold {cost_threshold:.6g} "
                f"at lambda={lo:.3g}; the threshold is at the limit, raise it slightly"
            )
    # Keep `hi` on the passing side so the returned policy satisfies the bound exactly.
    while hi - lo > rtol * hi and iterations < max_iter:
        iterations += 1
        mid = 0.5 * (lo + hi)
        if (mid_value := bound_at(mid)) <= cost_threshold:
            hi, value = mid, mid_value
        else:
            lo = mid
    return hi, value, iterations


def _newton_bisect(dual: _Dual, *, ftol: float, max_iter: int) -> tuple[Tensor, int]:
    """Batched safeguarded Newton-bisection for ``E_{q_lambda}[c] = tau`` (rtsafe)."""
    tau = dual.tau[0]
    batch = dual.r.shape[0] if dual.per_prompt else 1
    x = torch.zeros(batch).to(dual.r)
    ev = dual.evaluate(x[:, None])
    # lambda = 0 is optimal (complementary slackness) wherever the constraint already holds.
    need = ev.costs[:, 0] - tau > ftol
    lo, hi, iterations = x.clone(), torch.where(need, dual.lambda_start, x), 1
    while bool((grow := need & (dual.evaluate(hi[:, None]).costs[:, 0] - tau > ftol)).any()):
        iterations += 1
        lo, hi = torch.where(grow, hi, lo), torch.where(grow, 2.0 * hi, hi)
        if float(hi.max()) > _LAMBDA_LIMIT * dual.lambda_start:
            raise InfeasibleError(
                f"expected cost stays above threshold {float(tau):.6g} up to lambda={float(lo.max()):.3g}"
            )
    x, step_old = hi.clone(), hi - lo
    for _ in range(max_iter):
        ev = dual.evaluate(x[:, None])
        phi, slope = ev.costs[:, 0] - tau, -ev.hess[:, 0, 0]
        active = need & (phi.abs() > ftol) & (hi - lo > 4e-16 * hi)
        if not bool(active.any()):
            break
        iterations += 1
        lo, hi = torch.where(active & (phi > 0), x, lo), torch.where(active & (phi < 0), x, hi)
        step = phi / slope
        newton = x - step
        # Bisect when Newton leaves the bracket or is not shrinking fast enough (Numerical Recipes).
        use_newton = (newton > lo) & (newton < hi) & (step.abs() < 0.5 * step_old.abs())
        x_new = torch.where(use_newton, newton, 0.5 * (lo + hi))
        step_old = torch.where(active, x - x_new, step_old)
        x = torch.where(active, x_new, x)
    return torch.where(need, x, 0.0)[:, None], iterations


def _projected_newton(dual: _Dual, *, ftol: float, max_iter: int) -> tuple[Tensor, int]:
    """Batched projected Newton (Bertsekas 1982) on the dual over ``lambda >= 0``."""
    batch, m = (dual.r.shape[0] if dual.per_prompt else 1), dual.c.shape[0]
    lam = torch.zeros(batch, m).to(dual.r)
    stalled, iterations = torch.zeros(batch, dtype=torch.bool, device=lam.device), 0
    floor = dual.primal_floor - 1e-9 * (dual.primal_floor.abs() + 1)
    while iterations < max_iter:
        iterations += 1
        ev = dual.evaluate(lam)
        residual = (lam - (lam - ev.grad).clamp_min(0)).abs()
        # Rows whose dual value is certified infeasible stop; the others go on.
        done = (residual.amax(-1) <= ftol) | stalled | (ev.value < floor)
        if bool(done.all()) or float(lam.max()) > _LAMBDA_LIMIT * dual.lambda_start:
            break
        # epsilon-active set: bound variables pushed outward by the gradient are held at 0.
        free = ~((lam <= residual.amax(-1, keepdim=True)) & (ev.grad > 0))
        both = free[:, :, None] & free[:, None, :]
        ridge = 1e-12 * ev.hess.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)
        diagonal = torch.diag_embed(torch.where(free, ridge[:, None], 1.0))
        hess = torch.where(both, ev.hess, 0.0) + diagonal
        direction = -torch.linalg.solve(hess, torch.where(free, ev.grad, 0.0))
        # Trust region: where q is nearly deterministic the Hessian vanishes and the raw Newton
        # step is astronomically long; capping it lets lambda still grow geometrically.
        radius = 10.0 * (lam.amax(-1, keepdim=True) + dual.lambda_start)
        direction = _cap(torch.where(free, direction, -ev.grad), radius)
        lam, moved = _armijo(dual, lam, direction, ev, done)
        if not bool((moved | done).all()):
            # Fall back to a projected-gradient step where the Newton direction failed; if that
            # fails too, g can no longer be decreased in floating point.
            lam, rescued = _armijo(
                dual, lam, _cap(-ev.grad, radius, stretch=True), ev, done | moved
            )
            stalled |= ~done & ~moved & ~rescued
    ev = dual.evaluate(lam)
    certified = ev.value < floor
    rows = certified | ((ev.costs - dual.tau).amax(-1) > 1e-6 * dual.cost_scale)
    if bool(rows.any()) or float(lam.max()) > _LAMBDA_LIMIT * dual.lambda_start:
        reason = (
            "the dual falls below every feasible primal value"
            if bool(certified.any())
            else f"Newton stopped after {iterations} steps with constraints violated"
        )
        where = ""
        if dual.per_prompt and bool(rows.any()):
            where = f" at {int(rows.sum())} prompt(s), first prompt {int(rows.nonzero()[0])}"
        raise InfeasibleError(
            f"the constraints are jointly infeasible{where}: {reason} (lambda up to "
            f"{float(lam.max()):.3g}); expected costs reach {ev.costs.amax(0).tolist()} against "
            f"thresholds {dual.tau.tolist()}; relax a threshold"
        )
    return lam, iterations


def _cap(direction: Tensor, radius: Tensor, *, stretch: bool = False) -> Tensor:
    """Scale each row of ``direction`` to at most (or, with ``stretch``, exactly) ``radius``."""
    norm = direction.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    scale = radius / norm
    return direction * (scale if stretch else scale.clamp_max(1.0))


def _armijo(
    dual: _Dual, lam: Tensor, direction: Tensor, ev: _DualEval, done: Tensor
) -> tuple[Tensor, Tensor]:
    """Backtracking along the projected arc ``max(0, lam + t d)``, per dual row."""
    step = torch.ones(lam.shape[0]).to(lam)
    accepted = done.clone()
    new = lam.clone()
    for _ in range(60):
        trial = (lam + step[:, None] * direction).clamp_min(0)
        value = dual.value(trial)
        slack = 1e-4 * (ev.grad * (trial - lam)).sum(-1) + 1e-15 * (ev.value.abs() + 1)
        ok = ~accepted & (value <= ev.value + slack)
        new = torch.where(ok[:, None], trial, new)
        accepted |= ok
        if bool(accepted.all()):
            break
        step = torch.where(accepted, step, 0.5 * step)
    return new, accepted & ~done
