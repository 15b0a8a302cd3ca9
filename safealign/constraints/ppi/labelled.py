"""The three bounds a labelled certificate shows side by side: rectified, labels-only and
cost-model-only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from safealign.constraints.bounds import BoundResult, upper_bound
from safealign.constraints.ppi._checks import Target
from safealign.constraints.ppi.clt import approximate_rectified_upper_bound
from safealign.constraints.ppi.finite import labels_only_upper_bound, rectified_upper_bound
from safealign.constraints.ppi.result import RectifiedBound
from safealign.constraints.ppi.subset import LabelSubset


@dataclass(frozen=True)
class LabelledBounds:
    """The three bounds a labelled certificate shows side by side.

    Attributes:
        rectified: The label-rectified bound on ``theta`` (the one that decides a release).
        labels_only: The exact bound from the labels alone (Clopper-Pearson, or betting).
        cost_model_only: The bound on ``E[f]`` from all predictions: the cost model's judgement,
            NOT a bound on ``theta`` (it covers ``theta`` only if the model is calibrated).
    """

    rectified: RectifiedBound
    labels_only: BoundResult
    cost_model_only: BoundResult

    def to_dict(self) -> dict[str, Any]:
        return {
            "rectified": self.rectified.to_dict(),
            "labels_only": asdict(self.labels_only),
            "cost_model_only": asdict(self.cost_model_only),
        }


def cost_model_only_upper_bound(
    predictions: Sequence[float] | np.ndarray,
    *,
    confidence: float,
    value_range: tuple[float, float] = (0.0, 1.0),
    bound: Literal["betting", "clopper_pearson"] = "betting",
) -> BoundResult:
    """The bound on ``E[f]`` from all predictions: the cost model's judgement, not ``theta``."""
    if bound == "clopper_pearson":
        return upper_bound(predictions, confidence=confidence, bound=bound)
    return upper_bound(predictions, confidence=confidence, bound="betting", value_range=value_range)


def label_rectified_bounds(
    predictions: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    subset: LabelSubset,
    *,
    target: Target,
    confidence: float,
    value_range: tuple[float, float] | None = None,
    weight: float | Literal["tuned"] = "tuned",
    prediction_share: float = 0.5,
    approximate: bool = False,
    method: Literal["joint", "union", "stratified"] = "joint",
) -> LabelledBounds:
    """The rectified bound (finite-sample, or PPI++'s CLT one if ``approximate``) and the two
    bounds shown beside it, each at the full ``confidence`` (arguments as in
    :func:`rectified_upper_bound`)."""
    if approximate:
        rectified = approximate_rectified_upper_bound(
            predictions,
            labels,
            subset,
            target=target,
            confidence=confidence,
            value_range=value_range,
        )
    else:
        rectified = rectified_upper_bound(
            predictions,
            labels,
            subset,
            target=target,
            confidence=confidence,
            value_range=value_range,
            weight=weight,
            prediction_share=prediction_share,
            method=method,
        )
    y = np.asarray(labels, dtype=float)
    return LabelledBounds(
        rectified=rectified,
        labels_only=labels_only_upper_bound(
            y, target=target, confidence=confidence, value_range=rectified.value_range
        ),
        cost_model_only=cost_model_only_upper_bound(
            predictions, confidence=confidence, value_range=rectified.value_range
        ),
    )
