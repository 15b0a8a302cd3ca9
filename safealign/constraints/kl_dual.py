"""The Lagrange dual of the constrained KL-regularised problem over candidate sets (module doc of
:mod:`~safealign.constraints.solvers`), with the checks on its inputs and on feasibility."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from safealign.errors import ConfigError, DataError, InfeasibleError


@dataclass(frozen=True)
class _DualEval:
    q: Tensor  # [N, K]
    value: Tensor  # [B] dual objective g
    grad: Tensor  # [B, M] = tau - E_q[c]
    hess: Tensor  # [B, M, M] = Cov_q(c) / beta
    costs: Tensor  # [B, M] E_q[c]


@dataclass(frozen=True)
class _Dual:
    """The dual of the constrained problem; B = 1 (global) or N (per prompt) independent duals."""

    log_p: Tensor  # [N, K], rows normalised
    r: Tensor  # [N, K]
    c: Tensor  # [M, N, K], shifted so each row's cheapest candidate costs 0
    cmin: Tensor  # [M, N], the shift
    tau: Tensor  # [M]
    beta: float
    per_prompt: bool

    @property
    def cost_scale(self) -> float:
        # Not from tau: a huge slack threshold must not loosen the tolerance of the active ones.
        return max(float(self.c.max()), float(self.cmin.abs().max()), 1e-300)

    @property
    def lambda_start(self) -> float:
        # lambda is in units of reward per cost: start where the tilt r/beta vs lambda c/beta balance.
        spread = float((self.r.max(-1).values - self.r.min(-1).values).max()) + self.beta
        return spread / self.cost_scale

    @property
    def primal_floor(self) -> Tensor:
        """``[B]`` lower bound on any feasible primal value: ``E_q[r] >= min r``, ``KL <= max -log p``.

        By weak duality a dual value below it certifies that the constraints are infeasible.
        """
        finite = torch.isfinite(self.log_p)
        worst_reward = torch.where(finite, self.r, math.inf).min(-1).values
        worst_kl = torch.where(finite, -self.log_p, -math.inf).max(-1).values
        floor = worst_reward - self.beta * worst_kl
        return floor if self.per_prompt else floor.mean(0, keepdim=True)

    def logits(self, lam: Tensor) -> Tensor:
        # lam is [B, M] with B in {1, N}; the shifted costs keep r resolvable at huge lambda,
        # where (r - lambda c) / beta would otherwise lose r to rounding.
        return self.log_p + (self.r - (lam.T[:, :, None] * self.c).sum(0)) / self.beta

    def value(self, lam: Tensor) -> Tensor:
        """The dual objective alone, ``[B]`` (cheap: no moments)."""
        value = self.beta * torch.logsumexp(self.logits(lam), dim=-1) - (lam * self.cmin.T).sum(-1)
        value = value if self.per_prompt else value.mean(0, keepdim=True)
        return value + (lam * self.tau).sum(-1)

    def evaluate(self, lam: Tensor) -> _DualEval:
        z = self.logits(lam)
        lse = torch.logsumexp(z, dim=-1)
        q = torch.exp(z - lse[:, None])
        shifted = torch.einsum("nk,mnk->nm", q, self.c)
        centred = self.c - shifted.T[:, :, None]
        cov = torch.einsum("ank,bnk,nk->nab", centred, centred, q) / self.beta
        # g = beta * lse(log p + (r - lam.c)/beta) + lam.tau, undoing the shift of c.
        value = self.beta * lse - (lam * self.cmin.T).sum(-1)
        costs = shifted + self.cmin.T
        if not self.per_prompt:
            value, costs, cov = (t.mean(0, keepdim=True) for t in (value, costs, cov))
        value = value + (lam * self.tau).sum(-1)
        return _DualEval(q=q, value=value, grad=self.tau - costs, hess=cov, costs=costs)

    def check_feasible(self) -> None:
        """Raise if some threshold is below the cheapest achievable expected cost."""
        floor = self.cmin if self.per_prompt else self.cmin.mean(-1, keepdim=True)
        slack = 1e-12 * self.cost_scale
        bad = floor > self.tau[:, None] + slack
        if not bool(bad.any()):
            return
        m, n = (int(i) for i in bad.nonzero()[0])
        where = (
            f"the cheapest candidate's cost at prompt {n}"
            if self.per_prompt
            else f"the mean over {self.r.shape[0]} prompts of each prompt's cheapest candidate's cost"
        )
        raise InfeasibleError(
            f"constraint {m}: threshold {float(self.tau[m]):.6g} is below the minimum achievable expected "
            f"cost {float(floor[m, n]):.6g} ({where}; "
            f"{int(bad.sum())} infeasible in all); raise the threshold or add safer candidates"
        )


def _prepare(
    r: Tensor, log_p: Tensor | None, *, beta: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ConfigError(f"beta must be a finite number > 0 (got {beta!r})")
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise DataError(f"rewards must have shape [N, K] with N, K >= 1 (got {tuple(r.shape)})")
    r = r.to(dtype)
    if not bool(torch.isfinite(r).all()):
        raise DataError("rewards contain NaN or infinite values")
    if log_p is None:
        return r, torch.full_like(r, -math.log(r.shape[1]))
    if log_p.shape != r.shape:
        raise DataError(
            f"log_p has shape {tuple(log_p.shape)}, rewards {tuple(r.shape)}; they must match"
        )
    log_p = log_p.to(r)
    if bool(torch.isnan(log_p).any() | (log_p == math.inf).any()):
        raise DataError("log_p contains NaN or +inf")
    if not bool(torch.isfinite(log_p).any(-1).all()):
        raise DataError("every prompt needs at least one candidate with finite log_p")
    # Renormalise over the candidates: KL(q||p) is taken against p restricted to them.
    return r, torch.log_softmax(log_p, dim=-1)


def _build_dual(
    r: Tensor,
    costs: Tensor,
    *,
    beta: float,
    thresholds: float | Sequence[float] | Tensor,
    log_p: Tensor | None,
    scope: str,
    dtype: torch.dtype,
) -> _Dual:
    if scope not in ("global", "per_prompt"):
        raise ConfigError(f"scope must be 'global' or 'per_prompt' (got {scope!r})")
    r, log_p = _prepare(r, log_p, beta=beta, dtype=dtype)
    c = costs.to(r)
    c = c[None] if c.ndim == 2 else c
    if c.ndim != 3 or c.shape[1:] != r.shape:
        raise DataError(
            f"costs must have shape [N, K] or [M, N, K] with [N, K] = {tuple(r.shape)} (got {tuple(costs.shape)})"
        )
    if not bool(torch.isfinite(c).all()):
        raise DataError("costs contain NaN or infinite values")
    tau = torch.as_tensor(thresholds, dtype=dtype).to(r.device).reshape(-1)
    if tau.numel() == 1 and c.shape[0] > 1:
        tau = tau.expand(c.shape[0])
    if tau.shape != (c.shape[0],) or not bool(torch.isfinite(tau).all()):
        raise ConfigError(f"thresholds must be {c.shape[0]} finite value(s) (got {thresholds!r})")
    masked = torch.isinf(log_p)  # candidates excluded by the reference policy
    cmin = torch.where(masked, math.inf, c).min(-1).values
    shifted = torch.where(masked, 0.0, c - cmin[..., None])
    return _Dual(
        log_p=log_p,
        r=r,
        c=shifted,
        cmin=cmin,
        tau=tau,
        beta=float(beta),
        per_prompt=scope == "per_prompt",
    )
