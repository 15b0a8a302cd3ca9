"""HC-RLHF step 1: pessimistic candidate selection on the candidate prompts.

High-Confidence Safe RLHF (Chittepu et al. 2025) releases a policy only with a certificate that
its expected cost ``J_c(pi) = E_{x, y~pi}[c(x, y)]`` is at most ``cost_threshold`` with probability
at least ``confidence``; otherwise it answers *No Solution Found* (NSF).

Step 1 (:func:`select_candidate_policy`) optimises on the candidate prompts against the
*pessimistic* bound ``mean + k * std <= tau`` of the per-prompt expected costs, with
``k = C1 t(n_b-1)/sqrt(n_b) + C2 t(n_s-1)/sqrt(n_s)`` (:func:`bounds.pessimism_k`). Only the
*size* ``n_s`` of the safety set enters here, never its records. Step 2, the one-shot safety
test, is :func:`safealign.constraints.hc_rlhf.certify`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from safealign.config import SafetyConfig
from safealign.constraints.bounds import mean_plus_k_std, pessimism_k
from safealign.constraints.hc_rlhf import check_safety_config
from safealign.constraints.solvers import SolverResult, solve_constrained, solve_pessimistic
from safealign.constraints.tilting import ArrayLike, TiltedPolicy, metric_costs
from safealign.errors import ConfigError, DataError, InfeasibleError

Method = Literal["hc_rlhf", "no_pessimism", "lagrangian_no_test"]
METHODS: tuple[str, ...] = ("hc_rlhf", "no_pessimism", "lagrangian_no_test")


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of HC-RLHF step 1 on the candidate prompts.

    Attributes:
        method: ``"hc_rlhf"``, ``"no_pessimism"`` or ``"lagrangian_no_test"``.
        metric: ``"expected_cost"`` or ``"unsafe_rate"``.
        feasible: False when even every prompt's cheapest candidate fails the step-1 bound;
            HC-RLHF then answers NSF without running the safety test.
        policy: The selected tilted policy, None when infeasible.
        lambda_: Its multiplier, None when infeasible.
        pessimism_k: The ``k`` of the step-1 bound (0 for the two ablations).
        selection_bound: ``mean + k * std`` of the per-prompt expected costs at the selected
            lambda (at ``lambda -> infinity`` when infeasible).
        mean_cost: Mean over prompts of the per-prompt expected metric under ``q``.
        std_cost: Their standard deviation (Bessel).
        expected_reward: Mean over prompts of ``E_q[r]`` (reward-model units).
        n_opt: ``n_b``, prompts optimised on.
        n_safety: ``n_s``, the size of the safety set the bound anticipates.
        requires_safety_test: False only for ``lagrangian_no_test`` (an ablation that releases
            whatever step 1 finds; it carries no guarantee).
        message: Why the selection is infeasible, else empty.
    """

    method: str
    metric: str
    feasible: bool
    policy: TiltedPolicy | None
    lambda_: float | None
    pessimism_k: float
    selection_bound: float
    mean_cost: float
    std_cost: float
    expected_reward: float
    n_opt: int
    n_safety: int
    requires_safety_test: bool
    message: str = ""


def select_candidate_policy(
    rewards: ArrayLike,
    costs: ArrayLike,
    *,
    beta: float,
    safety: SafetyConfig,
    n_safety: int,
    log_p: ArrayLike | None = None,
    method: Method = "hc_rlhf",
    reference_sampler: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> SelectionResult:
    """HC-RLHF step 1: the most rewarding tilted policy whose step-1 bound meets the threshold.

    ``lambda = 0`` when the unconstrained tilt already passes, else the smallest passing
    ``lambda`` (Chittepu et al. 2025, Alg. 1; the per-prompt expected costs under ``q_lambda`` are
    the i.i.d. units). ``hc_rlhf`` uses ``mean + k * std``; the ablations ``no_pessimism`` and
    ``lagrangian_no_test`` use the plain mean (and the latter skips the safety test).

    Args:
        rewards: Reward-model scores of the candidates, ``[N, K]`` (``N = n_b >= 2``).
        costs: Cost-model scores, ``[N, K]`` (the metric is applied here).
        beta: KL coefficient, ``> 0``.
        safety: Threshold, confidence, metric, bound and the pessimism constants C1, C2.
        n_safety: ``n_s``, the size of the later safety test (its records are never read here).
        log_p: Reference log-probabilities ``[N, K]``; uniform if None.
        method: ``"hc_rlhf"``, ``"no_pessimism"`` or ``"lagrangian_no_test"``.
        reference_sampler: How the candidates were drawn (recorded in the policy).
        seed: Deployment sampler seed (recorded in the policy).

    Returns:
        A :class:`SelectionResult`; an infeasible problem is a result (``feasible=False``).
    """
    check_safety_config(safety)
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    r, c, lp = _step1_inputs(rewards, costs, log_p, metric=safety.metric)
    pessimism = {"confidence": safety.confidence, "c1": safety.c1, "c2": safety.c2}
    k = pessimism_k(r.shape[0], n_safety, **pessimism) if method == "hc_rlhf" else 0.0
    common = {"method": method, "metric": safety.metric, "k": k, "n_safety": n_safety}
    try:
        solved = _solve_step1(
            r, c, lp, beta=beta, cost_threshold=safety.cost_threshold, k=k, method=method
        )
    except InfeasibleError as error:
        # NSF at step 1 is a result: report the lambda -> infinity limit (cheapest candidates).
        cheapest = c.min(-1).values
        return _summary(cheapest, **common, message=str(error))
    policy = TiltedPolicy(
        beta=beta,
        lambda_=float(solved.lambdas[0]),
        num_candidates=r.shape[1],
        metric=safety.metric,
        reference_sampler=dict(reference_sampler or {}),
        seed=seed,
    )
    return _summary(
        solved.prompt_costs[:, 0], **common, policy=policy, expected_reward=solved.expected_reward
    )


# --- internals ------------------------------------------------------------------------------


def _step1_inputs(
    rewards: ArrayLike, costs: ArrayLike, log_p: ArrayLike | None, *, metric: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    r = torch.as_tensor(rewards).to(torch.float64)
    c = metric_costs(costs, metric)
    if r.ndim != 2 or r.shape != c.shape:
        raise DataError(
            f"rewards and costs must both be [N, K] (got {tuple(r.shape)}, {tuple(c.shape)})"
        )
    return r, c, None if log_p is None else torch.as_tensor(log_p).to(torch.float64)


def _solve_step1(
    r: Tensor,
    c: Tensor,
    log_p: Tensor | None,
    *,
    beta: float,
    cost_threshold: float,
    k: float,
    method: str,
) -> SolverResult:
    if method == "hc_rlhf":
        # Pessimism (Chittepu et al. 2025, Sec. 4): inflate the std by k so the candidate still
        # passes the later safety test on n_s fresh prompts with high probability.
        bound_fn = functools.partial(mean_plus_k_std, k=k)
        return solve_pessimistic(
            r, c, beta=beta, cost_threshold=cost_threshold, bound_fn=bound_fn, log_p=log_p
        )
    # The ablations constrain the plain sample mean: the closed-form Lagrangian solution.
    return solve_constrained(r, c, beta=beta, thresholds=cost_threshold, log_p=log_p)


def _summary(
    prompt_costs: Tensor,
    *,
    method: str,
    metric: str,
    k: float,
    n_safety: int,
    policy: TiltedPolicy | None = None,
    expected_reward: float = float("nan"),
    message: str = "",
) -> SelectionResult:
    mean, std = float(prompt_costs.mean()), float(prompt_costs.std(correction=1))
    return SelectionResult(
        method=method,
        metric=metric,
        feasible=policy is not None,
        policy=policy,
        lambda_=None if policy is None else policy.lambda_,
        pessimism_k=k,
        selection_bound=mean + k * std,
        mean_cost=mean,
        std_cost=std,
        expected_reward=expected_reward,
        n_opt=int(prompt_costs.shape[0]),
        n_safety=n_safety,
        requires_safety_test=method != "lagrangian_no_test",
        message=message,
    )
