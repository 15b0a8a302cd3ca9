"""HC-RLHF step 1: pessimistic candidate selection on the candidate prompts.

High-Confidence Safe RLHF (Chittepu et al. 2025) releases a policy only with a certificate that
its expected cost ``J_c(pi) = E_{x, y~pi}[c(x, y)]`` is at most ``cost_threshold`` with probability
at least ``confidence``; otherwise it answers *No Solution Found* (NSF).

Step 1 (:func:`select_candidate_policy`) optimises on the candidate prompts against a
*pessimistic* bound of the per-prompt expected metric that anticipates the step-2 bound
(:func:`bounds.anticipated_bound`): ``mean + C1 * (optimisation noise) + C2 * (the configured
step-2 bound's width at n_s)``. For ``student_t`` this is HC-RLHF's ``mean + k * std`` with
``k = C1 t(n_b-1)/sqrt(n_b) + C2 t(n_s-1)/sqrt(n_s)`` (:func:`bounds.pessimism_k`); for the
valid default bounds (betting, Clopper-Pearson) the C2 term is their own, wider, margin, so a
selected policy is likely to pass the test it will meet. C1 and C2 keep their meaning: weights of
the optimisation-noise term and of the anticipated safety-test margin. Only the *size* ``n_s`` of
the safety set enters here, never its records. Step 2, the one-shot safety test, is
:func:`safealign.constraints.hc_rlhf.certify`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from safealign.config import SafetyConfig
from safealign.constraints.bounds import anticipated_bound, pessimism_k
from safealign.constraints.hc_rlhf import check_safety_config, metric_range
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
        metric: The safety metric (``safety.metric``).
        feasible: False when even every prompt's cheapest candidate fails the step-1 bound;
            HC-RLHF then answers NSF without running the safety test.
        policy: The selected tilted policy, None when infeasible.
        lambda_: Its multiplier, None when infeasible.
        pessimism_k: The ``k`` of HC-RLHF's ``mean + k * std`` for ``student_t``; for the other
            bounds the effective ``(selection_bound - mean) / std`` (0 for the two ablations).
        selection_bound: The step-1 bound (:func:`bounds.anticipated_bound`) of the per-prompt
            expected metric at the selected lambda (at ``lambda -> infinity`` when infeasible).
        mean_cost: Mean over prompts of the per-prompt expected metric under ``q``.
        std_cost: Their standard deviation (Bessel).
        expected_reward: Mean over prompts of ``E_q[r]`` (reward-model units).
        n_opt: ``n_b``, prompts optimised on.
        n_safety: ``n_s``, the size of the safety set the bound anticipates.
        requires_safety_test: False only for ``lagrangian_no_test`` (an ablation that releases
            whatever step 1 finds; it carries no guarantee).
        reason: Why the selection is infeasible, else empty (``policy.json``'s and the untested
            certificate's ``reason``).
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
    reason: str = ""


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
    ``lambda`` (Chittepu et al. 2025, Alg. 1; the per-prompt expected metric under ``q_lambda``
    are the units). ``hc_rlhf`` uses :func:`bounds.anticipated_bound` for the configured step-2
    bound; the ablations ``no_pessimism`` and ``lagrangian_no_test`` use the plain mean (and the
    latter skips the safety test).

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
    r, c, lp = step1_inputs(rewards, costs, log_p, safety=safety)
    bound_fn = step1_bound(safety, n_safety) if method == "hc_rlhf" else _plain_mean
    common = {"method": method, "metric": safety.metric, "bound_fn": bound_fn}
    try:
        solved = _solve_step1(
            r, c, lp, beta=beta, cost_threshold=safety.cost_threshold, bound_fn=bound_fn,
            method=method,
        )  # fmt: skip
    except InfeasibleError as error:
        # NSF at step 1 is a result: report the lambda -> infinity limit (cheapest candidates).
        cheapest = c.min(-1).values
        return selection_summary(cheapest, **common, n_safety=n_safety, reason=str(error))
    policy = step1_policy(
        safety,
        beta=beta,
        lambda_=float(solved.lambdas[0]),
        num_candidates=r.shape[1],
        reference_sampler=reference_sampler,
        seed=seed,
    )
    return selection_summary(
        solved.prompt_costs[:, 0],
        **common,
        n_safety=n_safety,
        policy=policy,
        expected_reward=solved.expected_reward,
    )


# --- internals ------------------------------------------------------------------------------


def step1_inputs(
    rewards: ArrayLike, costs: ArrayLike, log_p: ArrayLike | None, *, safety: SafetyConfig
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Step 1's inputs as float64: rewards, the certified metric's costs, and log-probabilities."""
    r = torch.as_tensor(rewards).to(torch.float64)
    c = metric_costs(costs, safety.metric, cost_range=metric_range(safety))
    if r.ndim != 2 or r.shape != c.shape:
        raise DataError(
            f"rewards and costs must both be [N, K] (got {tuple(r.shape)}, {tuple(c.shape)})"
        )
    return r, c, None if log_p is None else torch.as_tensor(log_p).to(torch.float64)


def step1_policy(
    safety: SafetyConfig,
    *,
    beta: float,
    lambda_: float,
    num_candidates: int,
    reference_sampler: Mapping[str, Any] | None,
    seed: int | None,
) -> TiltedPolicy:
    """The deployed form of step 1's solution: a tilt on :func:`step1_inputs`' costs.

    Step 1 solves on ``metric_costs(costs, safety.metric, cost_range=metric_range(safety))``; the
    policy records the same metric and range, so :meth:`TiltedPolicy.metric_values` makes that
    same call and the deployed q is the solver's q (clipped costs included).
    """
    return TiltedPolicy(
        beta=beta,
        lambda_=lambda_,
        num_candidates=num_candidates,
        metric=safety.metric,
        reference_sampler=dict(reference_sampler or {}),
        seed=seed,
        cost_range=metric_range(safety) if safety.metric == "expected_cost" else None,
    )


def step1_bound(safety: SafetyConfig, n_safety: int) -> Callable[[Tensor], float]:
    """HC-RLHF's pessimism, anticipating the configured step-2 bound on ``n_safety`` prompts."""
    pessimism_k(2, n_safety, confidence=safety.confidence, c1=safety.c1, c2=safety.c2)  # validate
    return functools.partial(
        anticipated_bound,
        n_safety=n_safety,
        confidence=safety.confidence,
        bound=safety.resolved_bound,
        c1=safety.c1,
        c2=safety.c2,
        value_range=metric_range(safety),
    )


def _plain_mean(values: Tensor) -> float:
    return float(values.mean())


def _solve_step1(
    r: Tensor,
    c: Tensor,
    log_p: Tensor | None,
    *,
    beta: float,
    cost_threshold: float,
    bound_fn: Callable[[Tensor], float],
    method: str,
) -> SolverResult:
    if method == "hc_rlhf":
        # Pessimism (Chittepu et al. 2025, Sec. 4): the candidate must still pass the later
        # safety test on n_s fresh prompts with high probability, so step 1 adds that test's margin.
        return solve_pessimistic(
            r, c, beta=beta, cost_threshold=cost_threshold, bound_fn=bound_fn, log_p=log_p
        )
    # The ablations constrain the plain sample mean: the closed-form Lagrangian solution.
    return solve_constrained(r, c, beta=beta, thresholds=cost_threshold, log_p=log_p)


def selection_summary(
    prompt_costs: Tensor,
    *,
    method: str,
    metric: str,
    bound_fn: Callable[[Tensor], float],
    n_safety: int,
    policy: TiltedPolicy | None = None,
    expected_reward: float = float("nan"),
    reason: str = "",
) -> SelectionResult:
    """Step 1's verdict on a policy from its ``[N]`` per-prompt costs under ``bound_fn``."""
    mean, std = float(prompt_costs.mean()), float(prompt_costs.std(correction=1))
    bound = float(bound_fn(prompt_costs))
    return SelectionResult(
        method=method,
        metric=metric,
        feasible=policy is not None,
        policy=policy,
        lambda_=None if policy is None else policy.lambda_,
        pessimism_k=(bound - mean) / std if std > 0 else 0.0,
        selection_bound=bound,
        mean_cost=mean,
        std_cost=std,
        expected_reward=expected_reward,
        n_opt=int(prompt_costs.shape[0]),
        n_safety=n_safety,
        requires_safety_test=method != "lagrangian_no_test",
        reason=reason,
    )
