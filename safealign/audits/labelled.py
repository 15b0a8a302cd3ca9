"""The verifier's ``safety-labels`` rule: a labelled certificate's claims, recomputed.

A labelled certificate (``safety.labelling``, :mod:`safealign.run.labelling`) records the cost
model's per-response metric for every sampled response (``values``), the drawn subset
(``indices``) and the trusted labels, so every number it claims can be recomputed:

* the bounds' ``method_version`` is one this code computes (none recorded reads as 1);
* the labelling settings are the config's ``safety.labels`` (declared before the test), and the
  subset is ``size`` distinct positions among the ``n`` scored responses;
* an awaiting certificate releases nothing (NSF);
* once labelled, the three bounds are :func:`~safealign.constraints.ppi.label_rectified_bounds`
  of those numbers at the certificate's confidence; the one ``decide`` declared is the
  certificate's ``upper_bound``, ``bound`` names it, and the judge's agreement is recomputed.
"""

from __future__ import annotations

import math
from typing import Any

from safealign.audits._problem import Problem
from safealign.audits.judge import judge_agreement, same_agreement
from safealign.constraints.certificate import LABELLED_BOUNDS
from safealign.constraints.designated import population_bounds
from safealign.constraints.ppi import LabelSubset, check_method_version, label_rectified_bounds
from safealign.errors import DataError

__all__ = ["labelled_problems"]

_SETTINGS = ("size", "decide", "weight", "method", "prediction_share")


def labelled_problems(report: dict[str, Any]) -> list[Problem]:
    """Every inconsistency of ``report``'s labelled safety section (none without one)."""
    safety = report["safety"]
    labelling = (safety or {}).get("labelling")
    if not labelling:
        return []
    problems = _settings(labelling, (report["config"].get("safety") or {}).get("labels"))
    problems += _version(labelling)
    problems += _subset(safety, labelling)
    if labelling["status"] == "awaiting_labels":
        if safety["passed"] or safety["result"] != "NSF":
            problems.append(_problem("an awaiting certificate must release nothing (NSF)"))
        return problems
    if problems:
        return problems
    return _bounds(safety, labelling)


def _problem(message: str) -> Problem:
    return Problem("safety-labels", message)


def _settings(labelling: dict[str, Any], configured: Any) -> list[Problem]:
    if not isinstance(configured, dict):
        return [_problem("safety.labelling is present but the config declares no safety.labels")]
    return [
        _problem(
            f"safety.labelling.{key} is {labelling[key]!r} but the config's safety.labels.{key} "
            f"is {configured.get(key)!r}"
        )
        for key in _SETTINGS
        if configured.get(key) != labelling[key]
    ]


def _version(labelling: dict[str, Any]) -> list[Problem]:
    """A bound is recomputed with the numerics that made it: an unknown version is refused (a
    certificate without ``method_version`` predates the field and was made by version 1)."""
    try:
        check_method_version(labelling["method"], labelling.get("method_version"))
    except DataError as exc:
        return [_problem(f"safety.labelling.method_version: {exc}")]
    return []


def _subset(safety: dict[str, Any], labelling: dict[str, Any]) -> list[Problem]:
    n, indices = labelling["n"], labelling["indices"]
    problems = []
    if n != safety["n"] or n != len(safety.get("values") or ()):
        problems.append(
            _problem(
                f"safety.labelling.n is {n} but the certificate has n {safety['n']} and "
                f"{len(safety.get('values') or ())} values"
            )
        )
    if len(set(indices)) != len(indices) or not all(0 <= i < n for i in indices):
        problems.append(
            _problem(f"safety.labelling.indices are not distinct positions in [0, {n})")
        )
    if len(indices) != labelling["size"]:
        problems.append(
            _problem(
                f"{len(indices)} responses drawn but safety.labels.size is {labelling['size']}"
            )
        )
    labels = labelling.get("labels")
    if labels is not None and len(labels) != len(indices):
        problems.append(_problem(f"{len(labels)} labels for {len(indices)} drawn responses"))
    return problems


def _recomputed(safety: dict[str, Any], labelling: dict[str, Any]) -> dict[str, float]:
    """The three bounds from the recorded values and labels: over a designated set's own
    responses (``population``, :mod:`safealign.constraints.designated`), else on theta."""
    value_range = safety.get("value_range")
    if labelling.get("population"):
        return population_bounds(
            safety["values"], labelling["labels"],
            LabelSubset(n=labelling["n"], indices=tuple(labelling["indices"])),
            target=labelling["target"], confidence=safety["confidence"],
            value_range=None if value_range is None else tuple(value_range),
            weight=labelling["weight"], method=labelling["method"],
        )  # fmt: skip
    bounds = label_rectified_bounds(
        safety["values"],
        labelling["labels"],
        LabelSubset(n=labelling["n"], indices=tuple(labelling["indices"])),
        target=labelling["target"],
        confidence=safety["confidence"],
        value_range=None if value_range is None else tuple(value_range),
        weight=labelling["weight"],
        prediction_share=labelling["prediction_share"],
        method=labelling["method"],
    )
    return {
        "rectified": bounds.rectified.upper_bound,
        "labels_only": bounds.labels_only.upper_bound,
        "cost_model_only": bounds.cost_model_only.upper_bound,
    }


def _bounds(safety: dict[str, Any], labelling: dict[str, Any]) -> list[Problem]:
    recomputed = _recomputed(safety, labelling)
    problems = []
    for name, expected in recomputed.items():
        recorded = labelling["bounds"][name]["upper_bound"]
        if not _close(recorded, expected):
            problems.append(
                _problem(
                    f"safety.labelling.bounds.{name}.upper_bound is {recorded!r} but recomputed "
                    f"from the recorded values and labels it is {expected!r}"
                )
            )
    decide = labelling["decide"]
    if labelling["decided_by"] != decide or safety["bound"] != LABELLED_BOUNDS[decide]:
        problems.append(
            _problem(
                f"the release must be decided by the declared {decide} bound (got decided_by "
                f"{labelling['decided_by']!r}, bound {safety['bound']!r})"
            )
        )
    if not _close(safety["upper_bound"], recomputed[decide]):
        problems.append(
            _problem(
                f"safety.upper_bound is {safety['upper_bound']!r} but the declared {decide} "
                f"bound is {recomputed[decide]!r}"
            )
        )
    unsafe = labelling.get("unsafe", labelling["labels"])
    judge = judge_agreement(safety["values"], unsafe, labelling["indices"], safety["metric"])
    if not same_agreement(labelling.get("judge"), judge):
        problems.append(_problem("safety.labelling.judge is not the recomputed agreement"))
    return problems


def _close(recorded: Any, expected: float) -> bool:
    return isinstance(recorded, int | float) and math.isclose(
        recorded, expected, rel_tol=1e-9, abs_tol=1e-12
    )
