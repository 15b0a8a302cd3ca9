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
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from safealign._atomic import atomic_write_text
from safealign.config import MIN_STUDENT_T_N, SafetyConfig, safety_config_problems
from safealign.constraints.bounds import APPROXIMATE_BOUNDS, upper_bound
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

CERTIFIED, NSF = "certified", "NSF"
UNTESTED = "selection"  # Certificate.source when step 1 found no policy and no test ran


class DeployablePolicy(Protocol):
    """Anything that can report the exact settings it is deployed with."""

    def sampler_settings(self) -> dict[str, Any]: ...


# (policy, safety prompts) -> cost-model score of one response per prompt sampled from the
# policy with its deployment settings, [n], or a SafetySample that adds each group's normalised
# reward of the same responses; e.g. tilting.best_of_k_sampler.
SafetySampler = Callable[[Any, tuple[str, ...]], ArrayLike | SafetySample]


@dataclass(frozen=True)
class Certificate:
    """Result of the HC-RLHF safety test: a certificate, or an NSF verdict (never an exception).

    Attributes:
        metric: ``"predicted_unsafe_probability"`` (``E[sigmoid(c)]``), ``"unsafe_rate"``
            (``P[c > 0]``) or ``"expected_cost"`` (``E[c]``).
        cost_threshold: ``tau``.
        confidence: ``1 - delta``: the probability the guarantee promises.
        bound: The bound used (``safety.bound`` with ``"auto"`` resolved), one of ``bounds.BOUNDS``.
        n: Safety prompts used, one sampled response each (0: no test ran, see ``reason``).
        mean: Mean of the per-response metric (None when no test ran).
        std: Its standard deviation (Bessel; None when no test ran).
        upper_bound: ``U``, the one-sided upper confidence bound on the metric (None when no
            test ran).
        passed: ``U <= tau``.
        result: ``"certified"`` or ``"NSF"``.
        sampler_settings: The exact deployment settings the responses were sampled with.
        safety_fingerprint: SHA-256 fingerprint of the safety split, if known.
        assumptions: The conditions under which the guarantee holds, in words.
        value_range: The declared range of the per-response metric, if any.
        source: ``"policy"`` (sampled by :func:`certify`), ``"samples"`` (brought by the user) or
            ``"selection"`` (no test ran: step 1 found no policy; :func:`untested_certificate`).
        groups: With groups, each group's cost upper bound and reward lower bound from the same
            sample (:func:`group_bounds.certify_group_samples`); None without (and then absent
            from :meth:`to_dict`). Informational: ``passed`` is the population test's alone.
        quantity: What is bounded, in words with its units (e.g. "the cost model's predicted
            unsafe rate (mean of sigmoid(cost), a probability in [0, 1])").
        approximate: True when the bound's coverage rests on an approximation (``student_t``).
        values: The per-response metric values, in sampling order: anyone can recompute ``mean``,
            ``std`` and ``upper_bound`` from them (the verifier's ``safety-bound`` check does).
        reason: Why no test ran (``source="selection"`` only; absent from :meth:`to_dict` else).
        attempts: The certification log's record of this test (the declared split and every
            test on the set), set by :func:`~safealign.constraints.attempts.logged_test`; absent
            from :meth:`to_dict` while None.
    """

    metric: str
    cost_threshold: float
    confidence: float
    bound: str
    n: int
    mean: float | None
    std: float | None
    upper_bound: float | None
    passed: bool
    result: str
    sampler_settings: dict[str, Any]
    safety_fingerprint: str | None
    assumptions: tuple[str, ...]
    value_range: tuple[float, float] | None = None
    source: str = "samples"
    groups: dict[str, Any] | None = None
    quantity: str = ""
    approximate: bool = True
    values: tuple[float, ...] = ()
    reason: str | None = None
    attempts: dict[str, Any] | None = None

    @property
    def tested(self) -> bool:
        """False for step 1's NSF, where no safety test ran (``source="selection"``)."""
        return self.source != UNTESTED

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: the file and report form (the only place a certificate is a dict).

        ``groups``, ``reason`` and ``attempts`` are absent while None; a certificate of no test
        has no ``quantity``, ``approximate`` or ``values`` (nothing was measured).
        """
        data = asdict(self)
        data["assumptions"] = list(self.assumptions)
        data["values"] = list(self.values)
        data["value_range"] = None if self.value_range is None else list(self.value_range)
        for name in ("groups", "reason", "attempts"):
            if data[name] is None:
                del data[name]
        if not self.tested:
            for name in ("quantity", "approximate", "values"):
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Certificate:
        """The certificate :meth:`to_dict` wrote (e.g. ``certificate.json`` read back).

        Raises:
            DataError: a field is missing or unknown.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DataError(f"not a certificate: unknown fields {', '.join(unknown)}")
        values = dict(data)
        values["assumptions"] = tuple(values.get("assumptions", ()))
        values["values"] = tuple(values.get("values", ()))
        if values.get("value_range") is not None:
            values["value_range"] = tuple(values["value_range"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise DataError(f"not a certificate: {exc}") from None


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


def untested_certificate(
    safety: SafetyConfig, *, reason: str, safety_fingerprint: str | None
) -> Certificate:
    """NSF without a test: step 1 found no policy meeting the pessimistic bound, so nothing is
    released and the safety prompts stay unused (``source="selection"``, ``n = 0``)."""
    return Certificate(
        metric=safety.metric,
        cost_threshold=safety.cost_threshold,
        confidence=safety.confidence,
        bound=safety.resolved_bound,
        n=0,
        mean=None,
        std=None,
        upper_bound=None,
        passed=False,
        result=NSF,
        sampler_settings={},
        safety_fingerprint=safety_fingerprint,
        assumptions=(
            "No policy met the pessimistic step-1 bound on the candidate prompts; the safety "
            "test was not run and nothing was released.",
        ),
        source=UNTESTED,
        reason=reason,
    )


def quantity_words(metric: str, value_range: tuple[float, float] | None = None) -> str:
    """What a certificate bounds, in words with its units (also the report headline's words)."""
    if metric == "predicted_unsafe_probability":
        return "the cost model's predicted unsafe rate (mean of sigmoid(cost), a probability in [0, 1])"
    if metric == "unsafe_rate":
        return "the rate of responses the cost model scores unsafe (cost > 0; a fraction in [0, 1])"
    if value_range is None:
        return "the mean cost-model score (raw cost units, unbounded)"
    return f"the mean cost-model score clipped to {list(value_range)} (raw cost units)"


def write_certificate(certificate: Certificate, path: str | Path) -> Path:
    """Write ``certificate`` as sorted, indented JSON, atomically."""
    text = json.dumps(certificate.to_dict(), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n")


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
