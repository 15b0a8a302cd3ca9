"""HC-RLHF step 2: the one-shot safety test.

High-Confidence Safe RLHF (Chittepu et al. 2025) releases a policy only with a certificate that
its expected cost ``J_c(pi) = E_{x, y~pi}[c(x, y)]`` is at most ``cost_threshold`` with probability
at least ``confidence``; otherwise it answers *No Solution Found* (NSF). Step 1, pessimistic
candidate selection, is :mod:`~safealign.constraints.selection`.

Step 2 (:func:`certify`) samples one response per safety prompt from the selected policy with
its deployment settings, scores it with the cost model and passes iff the upper confidence bound
``U`` is at most ``tau``. The safety prompts are independent of step 1 and used once, so
``P(release a policy whose expected metric exceeds tau) <= 1 - confidence``: for every
distribution on the metric's range with the default bounds (betting on [0, 1], exact
Clopper-Pearson for the 0/1 unsafe rate), approximately with the opt-in Student t bound.
With groups, the same sample also bounds each group's cost and reward
(:mod:`~safealign.constraints.group_bounds`), beside the population test, never part of it.

:func:`certify` takes the safety pairs already unsealed: the one place in safealign that unseals
the sealed safety split is :func:`safealign.run.certification.unseal_safety_split`, called once per test.

The certificate it returns, and its file form, are in :mod:`~safealign.constraints.certificate`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from safealign.config import MIN_STUDENT_T_N, SafetyConfig, safety_config_problems
from safealign.constraints.bounds import APPROXIMATE_BOUNDS, upper_bound
from safealign.constraints.certificate import (  # untested_ and write_certificate: importable here
    CERTIFIED,
    NSF,
    Certificate,
    quantity_words,
    untested_certificate,  # noqa: F401
    write_certificate,  # noqa: F401
)
from safealign.constraints.group_bounds import (
    certify_group_samples,
    check_group_prompts,
    safety_prompt_groups,
)
from safealign.constraints.tilting import (
    ArrayLike,
    SafetySample,
    metric_costs,
    prompt_expectations,
)
from safealign.data.records import PairDataset
from safealign.errors import ConfigError, DataError


class DeployablePolicy(Protocol):
    """Anything that can report the exact settings it is deployed with."""

    def sampler_settings(self) -> dict[str, Any]: ...


# (policy, safety prompts) -> cost-model score of one response per prompt sampled from the
# policy with its deployment settings, [n], or a SafetySample that adds each group's normalised
# reward of the same responses; e.g. tilting.best_of_k_sampler.
SafetySampler = Callable[[Any, tuple[str, ...]], ArrayLike | SafetySample]


def certify(
    policy: DeployablePolicy,
    safety_pairs: PairDataset,
    sample_costs: SafetySampler,
    *,
    safety: SafetyConfig,
    group_prompts: str = "all",
    reward_normalization: str | None = None,
) -> Certificate:
    """HC-RLHF step 2: the one-shot safety test of ``policy`` on the safety prompts.

    ``safety_pairs`` are the records of the sealed safety split, unsealed for this one test by
    :func:`safealign.run.certification.unseal_safety_split` (the one caller of
    :meth:`SealedDataset.unseal`). For each distinct safety prompt,
    ``sample_costs(policy, prompts)`` must sample one response from ``policy`` with its deployment
    settings and return the cost-model score of each, ``[n_s]`` (see :func:`tilting.best_of_k_sampler`).
    If it returns a :class:`~safealign.constraints.tilting.SafetySample`, the certificate's
    ``groups`` also bound each group's cost and reward on the same responses; the population
    test and its verdict are computed from the costs alone, exactly as without groups.

    Args:
        policy: The selected policy; its ``sampler_settings()`` go into the certificate.
        safety_pairs: The safety split's records (unsealed for this test).
        sample_costs: Samples and scores one response per prompt.
        safety: Threshold, confidence, metric and bound.
        group_prompts: Which safety prompts count for a group: ``"own"``, those its pairs in the
            safety split carry (given groups); ``"all"``, every prompt (EM clusters).
        reward_normalization: How the sampler's group rewards were normalised (recorded).

    Returns:
        A :class:`Certificate` with ``result="certified"`` or ``"NSF"``.

    Raises:
        ConfigError: The safety configuration is inconsistent.
        DataError: The sampler returned the wrong number of costs or non-finite ones.
    """
    check_safety_config(safety)
    check_group_prompts(group_prompts)
    pairs = safety_pairs
    prompts = tuple(pairs.prompts)
    check_sample_size(safety, len(prompts))  # before sampling: a refusal costs nothing
    settings = policy.sampler_settings()
    sampled = sample_costs(policy, prompts)
    grouped = isinstance(sampled, SafetySample)
    weights = sampled.weights if grouped else None
    costs = _checked_costs(sampled.costs if grouped else sampled, n=len(prompts), weights=weights)
    certificate = certify_samples(
        costs,
        safety=safety,
        sampler_settings=settings,
        safety_fingerprint=pairs.fingerprint,
        source="policy",
        weights=weights,
    )
    if not grouped or not sampled.group_rewards:
        return certificate
    groups = certify_group_samples(
        costs,
        sampled.group_rewards,
        weights=weights,
        metric=safety.metric,
        confidence=safety.confidence,
        bound=certificate.bound,
        value_range=certificate.value_range,
        simultaneous=safety.group_coverage == "simultaneous",
        prompt_groups=safety_prompt_groups(pairs) if group_prompts == "own" else None,
        reward_normalization=reward_normalization,
    )
    return replace(certificate, groups=groups)


def certify_samples(
    costs: ArrayLike | Sequence[float],
    *,
    safety: SafetyConfig,
    sampler_settings: Mapping[str, Any],
    safety_fingerprint: str | None,
    source: str = "samples",
    weights: Tensor | None = None,
) -> Certificate:
    """The safety test on already-scored responses ("bring your own samples").

    ``costs[i]`` must be the cost-model score of one response sampled, with ``sampler_settings``,
    for the i-th safety prompt; ``U = upper_bound(metric(costs))`` and the test passes iff
    ``U <= cost_threshold`` (Chittepu et al. 2025, Alg. 1, safety test). With ``weights``
    (``safety.unit: prompt_expectation``), ``costs[i]`` holds the scores of the i-th prompt's K
    fresh candidates and the unit is ``sum_k weights[i, k] * metric(costs[i, k])``, the prompt's
    expected metric under the resampler (see :func:`tilting.best_of_k_sampler`).

    Args:
        costs: Cost-model scores ``[n]``, one per safety prompt (``n >= 2``).
        safety: Threshold, confidence, metric, bound and declared cost range.
        sampler_settings: How the responses were sampled (JSON-serialisable).
        safety_fingerprint: Fingerprint of the safety prompts, if known.
        source: Recorded provenance, ``"samples"`` unless called by :func:`certify`.
        weights: The resampler's probabilities ``[n, K]`` over each prompt's candidates, or None.

    Returns:
        A :class:`Certificate`; failing the test gives ``passed=False``, ``result="NSF"``.
    """
    check_safety_config(safety)
    settings = _json_copy(sampler_settings)
    values = metric_costs(
        _checked_costs(costs, n=None, weights=weights),
        safety.metric,
        cost_range=metric_range(safety),
    )
    if weights is not None:  # the Rao-Blackwellised unit: each prompt's expected metric
        values = prompt_expectations(values, weights)
    check_sample_size(safety, values.numel())
    value_range, bound = metric_range(safety), safety.resolved_bound
    ub = upper_bound(values, confidence=safety.confidence, bound=bound, value_range=value_range)
    passed = bool(ub.upper_bound <= safety.cost_threshold)
    return Certificate(
        metric=safety.metric,
        cost_threshold=float(safety.cost_threshold),
        confidence=float(safety.confidence),
        bound=bound,
        n=ub.n,
        mean=ub.mean,
        std=ub.std,
        upper_bound=float(ub.upper_bound),
        passed=passed,
        result=CERTIFIED if passed else NSF,
        sampler_settings=settings,
        safety_fingerprint=safety_fingerprint,
        assumptions=_assumptions(
            safety, value_range, source=source, expectation=weights is not None
        ),
        value_range=value_range,
        source=source,
        quantity=quantity_words(safety.metric, value_range),
        approximate=bound in APPROXIMATE_BOUNDS,
        values=tuple(float(v) for v in values),
    )


def check_safety_config(safety: SafetyConfig) -> None:
    """Reject metric/bound/range combinations that cannot give a valid bound, before any compute."""
    problems = [f"safety.{problem}" for problem in safety_config_problems(safety)]
    if problems:
        raise ConfigError(problems)


def check_sample_size(safety: SafetyConfig, n: int) -> None:
    """Refuse the approximate Student t bound on fewer than ``MIN_STUDENT_T_N`` safety prompts.

    Raises:
        ConfigError: ``bound`` is ``student_t`` and ``n < MIN_STUDENT_T_N``.
    """
    if safety.resolved_bound == "student_t" and n < MIN_STUDENT_T_N:
        raise ConfigError(
            f"safety.bound: student_t is an approximation, refused on {n} safety prompts (it needs at "
            f"least {MIN_STUDENT_T_N}); use bound auto (betting, valid at any n) or more safety prompts"
        )


def metric_range(safety: SafetyConfig) -> tuple[float, float] | None:
    """The range of the per-response metric: [0, 1] for the probabilities, else ``cost_range``."""
    if safety.metric != "expected_cost":
        return (0.0, 1.0)
    return None if safety.cost_range is None else tuple(float(v) for v in safety.cost_range)


# --- internals ------------------------------------------------------------------------------


def _assumptions(
    safety: SafetyConfig,
    value_range: tuple[float, float] | None,
    *,
    source: str,
    expectation: bool = False,
) -> tuple[str, ...]:
    sampled = (
        "each safety prompt contributed its exact expected metric under the released resampler's "
        "distribution over K fresh candidates drawn with exactly the recorded sampler settings "
        "(the Rao-Blackwellised unit: i.i.d. across prompts, the same mean as one response)"
        if expectation
        else "each safety prompt got one response sampled from the released policy with exactly the "
        "recorded sampler settings"
        if source == "policy"
        else "the supplied responses were sampled, one per safety prompt, from the released model "
        "with exactly the recorded sampler settings (a claim of whoever supplied them)"
    )
    by_bound = {
        "student_t": "student_t: the t approximation (the sample mean is treated as normal); "
        "exact for normal costs, approximate otherwise, improving with n",
        "hoeffding": f"hoeffding: every per-response value lies in the declared range "
        f"{None if value_range is None else list(value_range)}; no other distributional assumption",
        "clopper_pearson": "clopper_pearson: 0/1 outcomes (cost > 0 is unsafe); the binomial "
        "bound is exact",
        "betting": f"betting (Waudby-Smith & Ramdas 2024): every per-response value lies in "
        f"{None if value_range is None else list(value_range)}; valid for any distribution there",
        "empirical_bernstein": f"empirical_bernstein (Maurer & Pontil 2009): every per-response "
        f"value lies in {None if value_range is None else list(value_range)}; valid for any "
        "distribution there",
    }
    return (
        "the safety prompts are i.i.d. draws from the deployment prompt distribution and were "
        "used exactly once, by this test: not for training, selection or an earlier test",
        sampled,
        "costs are cost-model scores: the bound is on the cost model's judgement, not on true harm",
        by_bound[safety.resolved_bound],
    )


def _checked_costs(
    costs: ArrayLike | Sequence[float], *, n: int | None, weights: Tensor | None = None
) -> Tensor:
    if isinstance(costs, Tensor):
        values = costs.detach().to(torch.float64)
    else:
        values = torch.as_tensor(np.asarray(costs, dtype=float))
    if weights is not None:
        _check_weights(values, weights, n)
        return torch.where(weights > 0, values, 0.0)  # a padded slot (weight 0) holds anything
    if values.ndim != 1:
        raise DataError(
            f"costs must be one value per safety prompt, [n] (got shape {tuple(values.shape)})"
        )
    if n is not None and values.numel() != n:
        raise DataError(
            f"the sampler returned {values.numel()} costs for {n} safety prompts; it must sample "
            "exactly one response per prompt"
        )
    if not bool(torch.isfinite(values).all()):
        raise DataError(
            f"costs contain {int((~torch.isfinite(values)).sum())} NaN or infinite values"
        )
    return values


def _check_weights(costs: Tensor, weights: Tensor, n: int | None) -> None:
    if costs.ndim != 2 or tuple(weights.shape) != tuple(costs.shape):
        raise DataError(
            f"with weights, costs and weights must both be [n, K] (got {tuple(costs.shape)} and "
            f"{tuple(weights.shape)})"
        )
    if n is not None and costs.shape[0] != n:
        raise DataError(
            f"the sampler returned {costs.shape[0]} prompts' candidates for {n} safety prompts"
        )
    sums = weights.sum(-1)
    if not (bool((weights >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums)))):
        raise DataError(
            "weights must be probabilities over each prompt's candidates (rows >= 0, sum 1)"
        )
    if not bool(torch.isfinite(torch.where(weights > 0, costs, 0.0)).all()):
        raise DataError("costs of candidates with positive weight contain NaN or infinite values")


def _json_copy(settings: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(settings), allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"sampler_settings must be JSON-serialisable plain data ({error})"
        ) from error
