"""Input checks shared by the PPI bounds: target, confidence, range, vectors, subset, weight."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from safealign.constraints.ppi.subset import LabelSubset
from safealign.errors import ConfigError, DataError

Target = Literal["unsafe_rate", "expected_cost"]
TARGETS: tuple[str, ...] = ("unsafe_rate", "expected_cost")


def _checked(predictions, labels, subset, target, confidence, value_range):
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)} (got {target!r})")
    if not (isinstance(confidence, float | int) and 0.0 < confidence < 1.0):
        raise ConfigError(f"confidence must be in (0, 1), it is 1 - delta (got {confidence!r})")
    low, high = _range(target, value_range)
    f = _vector(predictions, "predictions")
    y = _vector(labels, "labels")
    if not isinstance(subset, LabelSubset):
        raise ConfigError(f"subset must be a LabelSubset (got {type(subset).__name__})")
    if subset.n != f.size:
        raise DataError(f"the subset was drawn from {subset.n} responses, but {f.size} were scored")
    if len(set(subset.indices)) != subset.m or not all(0 <= i < f.size for i in subset.indices):
        raise DataError(f"subset indices must be distinct positions in [0, {f.size})")
    if y.size != subset.m or y.size < 2:
        raise DataError(
            f"got {y.size} labels for {subset.m} labelled responses (need >= 2, one each)"
        )
    _inside(f, low, high, "prediction")
    _inside(y, low, high, "label")
    if target == "unsafe_rate" and not np.isin(y, (0.0, 1.0)).all():
        bad = int(np.flatnonzero(~np.isin(y, (0.0, 1.0)))[0])
        raise DataError(f"unsafe_rate labels must be 0 or 1 (label {bad} is {float(y[bad])!r})")
    return f, y, low, high


def _range(target: str, value_range) -> tuple[float, float]:
    if target == "unsafe_rate":
        if value_range is not None and tuple(value_range) != (0.0, 1.0):
            raise ConfigError(
                f"unsafe_rate lies in [0, 1]; value_range must be None or (0, 1) (got {value_range!r})"
            )
        return 0.0, 1.0
    if value_range is None:
        raise ConfigError("expected_cost needs value_range=(low, high), the declared cost range")
    low, high = (float(v) for v in value_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"value_range must be finite with low < high (got {value_range!r})")
    return low, high


def _vector(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size < 2:
        raise DataError(
            f"{name} must be a 1-D sequence of at least 2 values (got shape {array.shape})"
        )
    if not np.isfinite(array).all():
        raise DataError(f"{name} hold {int((~np.isfinite(array)).sum())} NaN or infinite values")
    return array


def _inside(values: np.ndarray, low: float, high: float, what: str) -> None:
    outside = np.flatnonzero((values < low) | (values > high))
    if outside.size:  # outside the declared range the guarantee is void: an error, not a clip
        i = int(outside[0])
        raise DataError(
            f"{what} {i} is {float(values[i])!r}, outside the declared range [{low}, {high}] "
            f"({outside.size} such); clip the predictions to the range by design"
        )


def _check_weight(weight, prediction_share) -> None:
    problems = []
    if weight != "tuned" and not (
        isinstance(weight, float | int) and not isinstance(weight, bool) and 0.0 <= weight <= 1.0
    ):
        problems.append(f"weight must be 'tuned' or a number in [0, 1] (got {weight!r})")
    if not (isinstance(prediction_share, float | int) and 0.0 < prediction_share < 1.0):
        problems.append(f"prediction_share must be in (0, 1) (got {prediction_share!r})")
    if problems:
        raise ConfigError(problems)


METHODS: tuple[str, ...] = ("joint", "union", "stratified")
# The numerics of each method, recorded in a labelled certificate (``method_version``) so the
# verifier recomputes a bound with the code that made it. Bump a version whenever a method's
# bound changes for the same inputs; a certificate without one was made by version 1.
METHOD_VERSIONS: dict[str, int] = {"joint": 1, "union": 1, "stratified": 1}


def _check_method(method, target: str | None = None) -> None:
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if method == "stratified" and target is not None and target != "unsafe_rate":
        raise ConfigError(
            "method 'stratified' bounds a 0/1 unsafe rate; expected costs need 'joint' or 'union'"
        )


def check_method_version(method: str, version: object) -> None:
    """Refuse a recorded ``method_version`` this code does not compute (None reads as 1)."""
    current = METHOD_VERSIONS.get(method)
    recorded = 1 if version is None else version
    if recorded != current:
        raise DataError(
            f"labelling method {method!r} version {version!r} is not the one this safealign "
            f"computes ({current}); recompute it with the safealign release that made it"
        )
