"""cvxpy/Clarabel formulations of the candidate-set problems, used only as test and benchmark oracles.

The objective is written in the entropy form ``sum(P * (R + beta log Q)) + beta * sum(entr(P))``,
which equals ``sum(P R) - beta KL(P || Q)``; the ``rel_entr`` form makes Clarabel fail at scale
(DESIGN.md, "Closed forms"). Objectives are averaged over prompts, as in the torch solvers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
from torch import Tensor

from safealign.errors import InfeasibleError


@dataclass(frozen=True)
class OracleResult:
    """An oracle's optimum.

    Attributes:
        q: Optimal policy ``[N, K]`` as returned by the solver (tiny negative entries possible).
        objective: Optimal prompt-averaged objective reported by the solver.
        status: The cvxpy status string.
        solve_seconds: Wall time of ``problem.solve``, cvxpy's canonicalisation included.
    """

    q: np.ndarray
    objective: float
    status: str
    solve_seconds: float


def solve_oracle(
    r: Tensor | np.ndarray,
    *,
    beta: float,
    log_p: Tensor | np.ndarray | None = None,
    costs: Tensor | np.ndarray | None = None,
    thresholds: float | Sequence[float] | None = None,
    scope: str = "global",
) -> OracleResult:
    """Maximise ``mean_n E_q[r] - beta KL(q || p)`` subject to optional expectation constraints.

    Args:
        r: Rewards ``[N, K]``.
        beta: KL coefficient.
        log_p: Reference log-probabilities ``[N, K]`` (``-inf`` masks a candidate); uniform if None.
        costs: Costs ``[N, K]`` or ``[M, N, K]``; no constraint if None.
        thresholds: ``tau``, a scalar or ``M`` values.
        scope: ``"global"`` (mean over prompts) or ``"per_prompt"``.
    """
    reward = _array(r)
    n, k = reward.shape
    p_var = cp.Variable((n, k), nonneg=True)
    constraints = _simplex_rows(p_var, _log_ref(log_p, reward.shape))
    objective = _entropy_objective(p_var, reward, _log_ref(log_p, reward.shape), beta)
    if costs is not None:
        cost = _array(costs)
        cost = cost[None] if cost.ndim == 2 else cost
        taus = np.broadcast_to(np.asarray(thresholds, dtype=float).reshape(-1), (cost.shape[0],))
        for c_m, tau_m in zip(cost, taus, strict=True):
            per_prompt = cp.sum(cp.multiply(p_var, c_m), axis=1)
            constraints.append(
                (per_prompt if scope == "per_prompt" else cp.sum(per_prompt) / n) <= tau_m
            )
    return _solve(cp.Problem(cp.Maximize(objective), constraints), p_var)


def solve_maxmin_oracle(
    rewards: Tensor | np.ndarray,
    *,
    beta: float,
    log_p: Tensor | np.ndarray | None = None,
    costs: Tensor | np.ndarray | None = None,
    cost_threshold: float | None = None,
) -> OracleResult:
    """Maximise ``min_g mean_n E_q[r_g] - beta KL(q || p)`` (MaxMin-RLHF, Chakraborty et al. 2024).

    Args:
        rewards: Group rewards ``[G, N, K]``.
        beta: KL coefficient.
        log_p: Reference log-probabilities ``[N, K]``; uniform if None.
        costs: Optional costs ``[N, K]`` for a global constraint ``mean_n E_q[c] <= cost_threshold``.
        cost_threshold: The constraint's threshold.
    """
    group_rewards = _array(rewards)
    _, n, k = group_rewards.shape
    log_ref = _log_ref(log_p, (n, k))
    p_var = cp.Variable((n, k), nonneg=True)
    worst = cp.Variable()
    constraints = _simplex_rows(p_var, log_ref)
    constraints += [cp.sum(cp.multiply(p_var, r_g)) / n >= worst for r_g in group_rewards]
    if costs is not None:
        constraints.append(cp.sum(cp.multiply(p_var, _array(costs))) / n <= cost_threshold)
    objective = worst + _entropy_objective(p_var, np.zeros((n, k)), log_ref, beta)
    return _solve(cp.Problem(cp.Maximize(objective), constraints), p_var)


def solve_maxmin_pessimistic_oracle(
    rewards: Tensor | np.ndarray,
    costs: Tensor | np.ndarray,
    *,
    beta: float,
    cost_threshold: float,
    k: float,
    log_p: Tensor | np.ndarray | None = None,
) -> OracleResult:
    """MaxMin under HC-RLHF's ``mean + k * std <= cost_threshold`` of the per-prompt expected costs.

    ``v_n = E_{q_n}[c]`` is linear in ``q`` and the Bessel std is a norm of ``v - mean(v)``, so
    the constraint is a second-order cone: the problem is convex, and this is its exact optimum
    over all policies on the candidates (each prompt then has its own effective multiplier).

    Args:
        rewards: Group rewards ``[G, N, K]``.
        costs: Costs ``[N, K]``.
        beta: KL coefficient.
        cost_threshold: ``tau``.
        k: The pessimism factor (:func:`bounds.pessimism_k`).
        log_p: Reference log-probabilities ``[N, K]``; uniform if None.
    """
    group_rewards = _array(rewards)
    _, n, k_cands = group_rewards.shape
    log_ref = _log_ref(log_p, (n, k_cands))
    p_var = cp.Variable((n, k_cands), nonneg=True)
    worst = cp.Variable()
    constraints = _simplex_rows(p_var, log_ref)
    constraints += [cp.sum(cp.multiply(p_var, r_g)) / n >= worst for r_g in group_rewards]
    per_prompt = cp.sum(cp.multiply(p_var, _array(costs)), axis=1)
    mean = cp.sum(per_prompt) / n
    constraints.append(mean + k * cp.norm(per_prompt - mean, 2) / np.sqrt(n - 1) <= cost_threshold)
    objective = worst + _entropy_objective(p_var, np.zeros((n, k_cands)), log_ref, beta)
    return _solve(cp.Problem(cp.Maximize(objective), constraints), p_var)


def _array(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def _log_ref(log_p: Tensor | np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if log_p is None:
        return np.full(shape, -np.log(shape[1]))
    log_ref = _array(log_p)
    finite = np.isfinite(log_ref)
    top = np.max(np.where(finite, log_ref, -np.inf), axis=1, keepdims=True)
    log_z = top + np.log(
        np.sum(np.where(finite, np.exp(log_ref - top), 0.0), axis=1, keepdims=True)
    )
    return log_ref - log_z


def _simplex_rows(p_var: cp.Variable, log_ref: np.ndarray) -> list[cp.Constraint]:
    constraints = [cp.sum(p_var, axis=1) == 1]
    masked = ~np.isfinite(log_ref)
    if masked.any():
        constraints.append(cp.multiply(p_var, masked.astype(float)) == 0)
    return constraints


def _entropy_objective(
    p_var: cp.Variable, reward: np.ndarray, log_ref: np.ndarray, beta: float
) -> cp.Expression:
    # Masked candidates carry P = 0 by constraint; give them a finite coefficient.
    coefficient = reward + beta * np.where(np.isfinite(log_ref), log_ref, 0.0)
    n = reward.shape[0]
    return (cp.sum(cp.multiply(p_var, coefficient)) + beta * cp.sum(cp.entr(p_var))) / n


def _solve(problem: cp.Problem, p_var: cp.Variable) -> OracleResult:
    start = time.perf_counter()
    problem.solve(solver=cp.CLARABEL)
    seconds = time.perf_counter() - start
    if problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise InfeasibleError(
            f"the oracle reports the problem infeasible (status {problem.status})"
        )
    return OracleResult(
        q=np.asarray(p_var.value),
        objective=float(problem.value),
        status=str(problem.status),
        solve_seconds=seconds,
    )
