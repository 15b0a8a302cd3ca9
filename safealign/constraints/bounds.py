"""High-confidence upper bounds on a mean (HC-RLHF, Chittepu et al. 2025).

HC-RLHF certifies ``E[metric] <= cost_threshold`` with probability at least ``confidence``
(= 1 - delta) from i.i.d. per-response values on held-out safety prompts. The valid bounds hold
for any distribution: the betting bound and empirical Bernstein for values in a declared range,
Hoeffding's inequality, and the exact Clopper-Pearson bound for an unsafe *rate* (0/1 outcomes).
The paper's one-sided Student t bound is only approximate (:data:`APPROXIMATE_BOUNDS`): it missed
30-43% of the time on rare-catastrophe costs at n = 30 (issue 13). While optimising, step 1
anticipates the step-2 bound by :func:`anticipated_bound`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from torch import Tensor

from safealign.constraints.bounded_means import (
    betting_upper_bound,
    empirical_bernstein_upper_bound,
)
from safealign.errors import ConfigError, DataError

BoundKind = Literal["student_t", "hoeffding", "clopper_pearson", "betting", "empirical_bernstein"]
BOUNDS: tuple[str, ...] = (
    "student_t", "hoeffding", "clopper_pearson", "betting", "empirical_bernstein"
)  # fmt: skip
# Bounds whose coverage rests on an approximation (the t bound treats the mean as normal); the
# others hold for every distribution meeting their stated range (0/1 for clopper_pearson).
APPROXIMATE_BOUNDS: tuple[str, ...] = ("student_t",)
# Fixed, public order of the representative sample in :func:`anticipated_bound` (the betting
# bound is order-dependent; a sorted sample would bet badly).
_ANTICIPATION_SEED = 0


@dataclass(frozen=True)
class BoundResult:
    """A one-sided upper confidence bound on a mean.

    Attributes:
        bound: Which bound, one of :data:`BOUNDS`.
        n: Sample size.
        mean: Sample mean.
        std: Sample standard deviation with Bessel's correction.
        upper_bound: Holds above the true mean with probability at least ``confidence``.
        confidence: ``1 - delta``.
    """

    bound: str
    n: int
    mean: float
    std: float
    upper_bound: float
    confidence: float


def pessimism_k(
    n_opt: int, n_safety: int, *, confidence: float, c1: float = 1.0, c2: float = 1.0
) -> float:
    """HC-RLHF's pessimism factor ``k`` for the candidate-selection bound ``mean + k * std``.

    ``k = C1 * t_conf(n_b - 1) / sqrt(n_b) + C2 * t_conf(n_s - 1) / sqrt(n_s)``: the first term
    covers the optimisation sample's own noise, the second anticipates the safety test on ``n_s``
    prompts (only its *size* may influence training; DESIGN.md "HC-RLHF", step 1).

    Args:
        n_opt: ``n_b``, prompts used while optimising (>= 2).
        n_safety: ``n_s``, prompts of the later safety test (>= 2).
        confidence: ``1 - delta`` in (0, 1).
        c1: ``C1`` (the reference experiments used 4).
        c2: ``C2`` (the reference experiments used 2).
    """
    _check_confidence(confidence)
    problems = [
        f"{name} must be an integer >= 2 (got {value!r})"
        for name, value in (("n_opt", n_opt), ("n_safety", n_safety))
        if not _is_count(value)
    ]
    problems += [
        f"{name} must be a finite number >= 0 (got {value!r})"
        for name, value in (("c1", c1), ("c2", c2))
        if not (math.isfinite(value) and value >= 0)
    ]
    if problems:
        raise ConfigError(problems)
    term_opt = stats.t.ppf(confidence, n_opt - 1) / math.sqrt(n_opt)
    term_safety = stats.t.ppf(confidence, n_safety - 1) / math.sqrt(n_safety)
    return float(c1 * term_opt + c2 * term_safety)


def mean_plus_k_std(values: Tensor, *, k: float) -> float:
    """``mean + k * std`` (Bessel) of ``values`` ``[n]``: HC-RLHF's pessimistic bound for step 1.

    Pass ``functools.partial(mean_plus_k_std, k=pessimism_k(...))`` as the ``bound_fn`` of
    :func:`safealign.constraints.solvers.solve_pessimistic`.
    """
    if values.numel() < 2:
        raise DataError(f"mean + k * std needs at least 2 values (got {values.numel()})")
    return float(values.mean() + k * values.std(correction=1))


def anticipated_bound(
    values: Tensor,
    *,
    n_safety: int,
    confidence: float,
    bound: str,
    c1: float,
    c2: float,
    value_range: tuple[float, float] | None = None,
) -> float:
    """Step 1's pessimistic bound, derived from the step-2 bound it must later pass.

    ``mean + C1 * t_conf(n_b - 1) * s / sqrt(n_b) + C2 * width(n_s)``: the first term covers the
    optimisation sample's own noise (as in HC-RLHF); ``width(n_s)`` is the configured step-2
    bound's margin over the mean on a representative sample of size ``n_s`` with the optimisation
    sample's distribution (the ``(j + 1/2) / n_s`` quantiles of ``values``, in a fixed public
    order). For ``student_t`` that margin is ``t_conf(n_s - 1) * s / sqrt(n_s)``, so the result is
    HC-RLHF's ``mean + k * std`` with the ``k`` of :func:`pessimism_k`; for ``clopper_pearson`` it
    is the exact bound's margin at the rate ``mean`` (a sampled response is unsafe with that
    probability). Per-prompt expectations spread less than single responses, so for the
    range-based bounds this under-states step 2's width when responses to one prompt differ a
    lot, unless step 2 certifies per-prompt expectations too (``safety.unit:
    prompt_expectation``), whose distribution this sample then has exactly; the largest variance a mean allows (values at the range's ends only) over-states it
    instead, by 10x on the demo's DP cost model, where it left step 1 infeasible. Only ``n_s``
    enters, never the safety records. It shapes power, not validity: the guarantee is step 2's.

    Args:
        values: Per-prompt expected metric under the candidate policy, ``[n_b]``, ``n_b >= 2``.
        n_safety: ``n_s``, the size of the later safety test (>= 2).
        confidence: ``1 - delta``.
        bound: The step-2 bound (resolved, one of :data:`BOUNDS`).
        c1: ``C1``, weight of the optimisation-noise term.
        c2: ``C2``, weight of the step-2 width.
        value_range: The declared range of the metric (needed by every bound but Student t).
    """
    if bound == "student_t":
        return mean_plus_k_std(
            values, k=pessimism_k(values.numel(), n_safety, confidence=confidence, c1=c1, c2=c2)
        )
    n_opt = values.numel()
    pessimism_k(n_opt, n_safety, confidence=confidence, c1=c1, c2=c2)  # validates the inputs
    sample = values.detach().double().cpu().numpy()
    mean, std = float(sample.mean()), float(sample.std(ddof=1))
    noise = float(stats.t.ppf(confidence, n_opt - 1)) * std / math.sqrt(n_opt)
    width = _step2_width(
        sample, n_safety, confidence=confidence, bound=bound, value_range=value_range
    )
    return mean + c1 * noise + c2 * width


def _step2_width(
    sample: np.ndarray,
    n_safety: int,
    *,
    confidence: float,
    bound: str,
    value_range: tuple[float, float] | None,
) -> float:
    if bound == "clopper_pearson":  # the exact bound at a continuous count of unsafe responses
        rate = min(max(float(sample.mean()), 0.0), 1.0)
        unsafe = rate * n_safety
        if unsafe >= n_safety:
            return 1.0 - rate
        return float(stats.beta.ppf(confidence, unsafe + 1, n_safety - unsafe)) - rate
    representative = np.quantile(sample, (np.arange(n_safety) + 0.5) / n_safety)
    if value_range is not None:
        representative = np.clip(representative, *value_range)
    order = np.random.default_rng(_ANTICIPATION_SEED).permutation(n_safety)
    result = upper_bound(
        representative[order], confidence=confidence, bound=bound, value_range=value_range
    )
    return result.upper_bound - result.mean


def upper_bound(
    values: Sequence[float] | np.ndarray | Tensor,
    *,
    confidence: float,
    bound: BoundKind,
    value_range: tuple[float, float] | None = None,
) -> BoundResult:
    """One-sided upper confidence bound on the mean of i.i.d. ``values``.

    * ``student_t``: ``mean + t_conf(n-1) * s / sqrt(n)`` (the HC-RLHF paper's safety test; exact
      for normal data, approximate otherwise: :data:`APPROXIMATE_BOUNDS`).
    * ``hoeffding``: ``mean + (b - a) * sqrt(ln(1/delta) / (2n))`` for values in a declared ``[a, b]``.
    * ``clopper_pearson``: the exact binomial bound on a rate; values must be 0 or 1.
    * ``betting``: the betting confidence bound (Waudby-Smith & Ramdas 2024) for values in a
      declared ``[a, b]``; valid for any distribution there, and adapts to the variance.
    * ``empirical_bernstein``: Maurer & Pontil (2009, Thm 4) for values in a declared ``[a, b]``.

    Args:
        values: The i.i.d. sample, ``[n]`` with ``n >= 2``.
        confidence: ``1 - delta`` in (0, 1).
        bound: Which bound to compute (no default: the caller names it).
        value_range: ``(a, b)``, the declared range of every value; required by ``hoeffding``,
            ``betting`` and ``empirical_bernstein``, must be ``(0, 1)`` if given to ``clopper_pearson``, checked if given to ``student_t``.

    Raises:
        ConfigError: Unknown bound, bad confidence, or a missing/invalid ``value_range``.
        DataError: Fewer than two values, non-finite values, or values outside the declared range.
    """
    _check_confidence(confidence)
    if bound not in BOUNDS:
        raise ConfigError(f"bound must be one of {', '.join(BOUNDS)} (got {bound!r})")
    sample = _sample(values)
    n = sample.size
    mean = float(sample.mean())
    std = float(sample.std(ddof=1))
    if bound == "student_t":
        if value_range is not None:
            _checked_range(sample, value_range, bound)
        value = mean + float(stats.t.ppf(confidence, n - 1)) * std / math.sqrt(n)
    elif bound == "hoeffding":
        low, high = _checked_range(sample, value_range, bound)
        failure_probability = 1.0 - confidence
        value = mean + (high - low) * math.sqrt(math.log(1.0 / failure_probability) / (2 * n))
    elif bound == "clopper_pearson":
        value = _clopper_pearson(sample, confidence=confidence, value_range=value_range)
    else:
        low, high = _checked_range(sample, value_range, bound)
        bounded_mean = (
            betting_upper_bound if bound == "betting" else empirical_bernstein_upper_bound
        )
        value = bounded_mean(sample, confidence=confidence, low=low, high=high)
    return BoundResult(
        bound=bound, n=n, mean=mean, std=std, upper_bound=value, confidence=confidence
    )


def _clopper_pearson(
    sample: np.ndarray, *, confidence: float, value_range: tuple[float, float] | None
) -> float:
    if value_range is not None and tuple(value_range) != (0.0, 1.0):
        raise ConfigError(
            f"clopper_pearson bounds a 0/1 rate; value_range must be (0, 1) or None (got {value_range!r})"
        )
    bad = np.flatnonzero((sample != 0) & (sample != 1))
    if bad.size:
        raise DataError(
            f"clopper_pearson needs 0/1 outcomes (e.g. cost > 0); value {float(sample[bad[0]])!r} at index "
            f"{int(bad[0])} ({bad.size} such values); threshold the costs first or use another bound"
        )
    n, successes = sample.size, int(sample.sum())
    # One-sided exact upper limit: the `confidence` quantile of Beta(x + 1, n - x) (Clopper & Pearson 1934).
    return (
        1.0 if successes == n else float(stats.beta.ppf(confidence, successes + 1, n - successes))
    )


def _checked_range(
    sample: np.ndarray, value_range: tuple[float, float] | None, bound: str
) -> tuple[float, float]:
    if value_range is None:
        raise ConfigError(
            f"the {bound} bound needs value_range=(low, high), the declared range of every value"
        )
    low, high = (float(v) for v in value_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"value_range must be finite with low < high (got {value_range!r})")
    # A value outside the declared range voids the guarantee, so it is an error, not a clip.
    outside = np.flatnonzero((sample < low) | (sample > high))
    if outside.size:
        i = int(outside[0])
        raise DataError(
            f"value {float(sample[i])!r} at index {i} lies outside the declared value_range [{low}, {high}] "
            f"({outside.size} such values); widen value_range or clip the costs by design"
        )
    return low, high


def _sample(values: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    sample = np.asarray(values, dtype=float)
    if sample.ndim != 1:
        raise DataError(f"values must be one-dimensional (got shape {sample.shape})")
    if sample.size < 2:
        raise DataError(
            f"an upper bound needs at least 2 values (got {sample.size}); the sample std is undefined"
        )
    if not np.isfinite(sample).all():
        raise DataError(
            f"values contain {int((~np.isfinite(sample)).sum())} NaN or infinite entries"
        )
    return sample


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ConfigError(f"confidence must be in (0, 1), it is 1 - delta (got {confidence!r})")


def _is_count(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 2
