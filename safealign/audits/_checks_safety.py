"""The cross-field rules of a report's ``safety`` section (:mod:`safealign.audits.checks`):
verdict, bound, sample and configuration.
"""

from __future__ import annotations

import math
from typing import Any

from scipy import stats

from safealign.audits._problem import Problem
from safealign.config import SafetyConfig
from safealign.constraints.attempts import per_attempt_confidence
from safealign.constraints.bounds import APPROXIMATE_BOUNDS, upper_bound
from safealign.constraints.certificate import LABELLED_BOUNDS


def _safety_verdict(report: dict[str, Any]) -> list[Problem]:
    safety = report["safety"]
    if safety is None:
        return []
    bound, threshold, passed = safety["upper_bound"], safety["cost_threshold"], safety["passed"]
    problems = []
    # HC-RLHF step 2: pass iff U <= threshold; an uncomputable bound (n < 2) never passes.
    # A certificate awaiting its labels never passes (the safety-labels rule checks it).
    expected = bound is not None and bound <= threshold and not _awaiting(safety)
    if passed != expected:
        problems.append(
            Problem(
                "safety-verdict",
                f"safety.passed is {passed} but the upper bound {bound} is "
                f"{'<=' if expected else 'not <='} the threshold {threshold}",
            )
        )
    if (safety["result"] == "certified") != passed:
        problems.append(
            Problem(
                "safety-verdict",
                f"safety.result is {safety['result']!r} but safety.passed is {passed}",
            )
        )
    return problems


def _awaiting(safety: dict[str, Any]) -> bool:
    return (safety.get("labelling") or {}).get("status") == "awaiting_labels"


def _labelled(safety: dict[str, Any]) -> bool:
    return (safety.get("labelling") or {}).get("status") == "labelled"


def _safety_bound(report: dict[str, Any]) -> list[Problem]:
    """Recompute the upper bound from the recorded values, else from the summary statistics
    (a labelled certificate's bound: the safety-labels rule, :mod:`~safealign.audits.labelled`)."""
    safety = report["safety"]
    if safety is None or safety["upper_bound"] is None or safety.get("mean") is None:
        return []
    if _labelled(safety):
        return []
    if safety.get("values"):
        return _bound_from_values(safety)
    expected = _closed_form_bound(safety)
    if expected is None or math.isclose(
        safety["upper_bound"], expected, rel_tol=1e-9, abs_tol=1e-12
    ):
        return []
    return [
        Problem(
            "safety-bound",
            f"safety.upper_bound is {safety['upper_bound']} but the {safety['bound']} bound of "
            f"mean {safety['mean']}, std {safety.get('std')}, n {safety['n']} at confidence "
            f"{safety['confidence']} is {expected}",
        )
    ]


def _bound_from_values(safety: dict[str, Any]) -> list[Problem]:
    given = safety.get("value_range")
    value_range = tuple(given) if isinstance(given, list) else None
    result = upper_bound(
        safety["values"],
        confidence=safety["confidence"],
        bound=safety["bound"],
        value_range=value_range,
    )
    recomputed = {
        "n": result.n,
        "mean": result.mean,
        "std": result.std,
        "upper_bound": result.upper_bound,
        "approximate": result.bound in APPROXIMATE_BOUNDS,
    }
    problems = []
    for key, expected in recomputed.items():
        recorded = safety.get(key)
        same = (
            recorded == expected
            if isinstance(expected, (bool, int))
            else isinstance(recorded, (int, float))
            and math.isclose(recorded, expected, rel_tol=1e-9, abs_tol=1e-12)
        )
        if not same:
            problems.append(
                Problem(
                    "safety-bound",
                    f"safety.{key} is {recorded!r} but the {safety['bound']} bound recomputed "
                    f"from the {result.n} recorded values gives {expected!r}",
                )
            )
    return problems


def _closed_form_bound(safety: dict[str, Any]) -> float | None:
    """The bound the recorded statistics give, or None for a bound that needs the sample.

    Raises:
        ValueError: The statistics cannot give the named bound (no range for Hoeffding, a mean
            that is not a rate of ``n`` outcomes for Clopper–Pearson).
    """
    bound, mean, n, confidence = (
        safety.get("bound"),
        safety["mean"],
        safety["n"],
        safety["confidence"],
    )
    if bound == "student_t" and safety.get("std") is not None and n >= 2:
        # HC-RLHF safety test: U = mean + t_{1-δ}(n-1) · s / √n (Bessel s).
        return mean + float(stats.t.ppf(confidence, n - 1)) * safety["std"] / math.sqrt(n)
    if bound == "hoeffding":
        given = safety.get("value_range")
        low, high = given if isinstance(given, list) and len(given) == 2 else (None, None)
        if not all(isinstance(v, (int, float)) for v in (low, high)) or not low < high:
            raise ValueError(
                f"a hoeffding bound needs value_range [a, b], got {safety.get('value_range')!r}"
            )
        return mean + (high - low) * math.sqrt(math.log(1.0 / (1.0 - confidence)) / (2 * n))
    if bound == "clopper_pearson":
        unsafe = round(mean * n)
        if not math.isclose(mean * n, unsafe, abs_tol=1e-6):
            raise ValueError(f"mean {mean} is not a rate of {n} 0/1 outcomes")
        outcomes = [1.0] * unsafe + [0.0] * (n - unsafe)
        return upper_bound(outcomes, confidence=confidence, bound="clopper_pearson").upper_bound
    return None  # another bound: it needs the sample itself, which the report need not carry


def _safety_sample(report: dict[str, Any]) -> list[Problem]:
    safety = report["safety"]
    costs = (safety or {}).get("costs")
    if not costs or any(c is None for c in costs):
        return []
    problems = []
    if safety["n"] != len(costs):
        problems.append(
            Problem(
                "safety-sample", f"safety.n is {safety['n']} but {len(costs)} costs are recorded"
            )
        )
    mean = math.fsum(costs) / len(costs)
    recorded = safety.get("mean")
    if recorded is not None and not math.isclose(recorded, mean, rel_tol=1e-9, abs_tol=1e-12):
        problems.append(
            Problem(
                "safety-sample",
                f"safety.mean is {recorded} but the recorded costs average {mean}",
            )
        )
    return problems


def _safety_config(report: dict[str, Any]) -> list[Problem]:
    safety, configured = report["safety"], report["config"].get("safety")
    if safety is None or not isinstance(configured, dict):
        return []
    problems = []
    expected = dict(configured)
    if "confidence" in configured and isinstance(configured.get("attempts", 1), int):
        # Declared attempts split δ: each test runs at 1 - δ/N (constraints.attempts).
        expected["confidence"] = per_attempt_confidence(
            configured["confidence"], configured.get("attempts", 1)
        )
    if expected.get("bound") == "auto":  # the certificate records the bound auto resolved to
        resolving = {k: expected.get(k) for k in ("metric", "prompts")}  # designated set: hoeffding
        expected["bound"] = SafetyConfig(**resolving).resolved_bound
    if _labelled(safety) and isinstance(configured.get("labels"), dict):
        expected["bound"] = LABELLED_BOUNDS.get(configured["labels"].get("decide"))
    for field, key in (
        ("cost_threshold", "cost_threshold"),
        ("confidence", "confidence"),
        ("bound", "bound"),
        ("metric", "metric"),
    ):
        if key in expected and expected[key] != safety.get(field):
            problems.append(
                Problem(
                    "safety-config",
                    f"safety.{field} is {safety[field]} but the config's safety.{key} "
                    f"gives {expected[key]}",
                )
            )
    return problems
