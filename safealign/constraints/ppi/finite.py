"""The finite-sample label-rectified bound, declared or tuned weight: the joint test (the default,
:mod:`.joint` for the proof) or the union of two betting bounds (package doc), and the
labels-only exact bound both reduce to at weight 0."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from safealign.constraints.bounds import BoundResult, upper_bound
from safealign.constraints.ppi._checks import Target, _check_method, _check_weight, _checked
from safealign.constraints.ppi.joint import joint_upper_bound
from safealign.constraints.ppi.result import RectifiedBound, _assumptions
from safealign.constraints.ppi.stratified import stratified_upper_bound
from safealign.constraints.ppi.subset import LabelSubset
from safealign.errors import ConfigError

# Labels before the tuned weight is estimated from data: until then it is PPI's lam = 1.
TUNING_WARMUP = 10
_WEIGHT_GRID = np.linspace(0.0, 1.0, 101)


def rectified_upper_bound(
    predictions: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    subset: LabelSubset,
    *,
    target: Target,
    confidence: float,
    value_range: tuple[float, float] | None = None,
    weight: float | Literal["tuned"] = "tuned",
    prediction_share: float = 0.5,
    method: Literal["joint", "union", "stratified"] = "joint",
) -> RectifiedBound:
    """The finite-sample label-rectified upper bound on ``theta``: exact, for any cost model.

    ``method="joint"`` (the default, :mod:`.joint`): one Fisher-combined test of the labels
    (sampling without replacement from the ``N`` scored responses, whose predictions are all
    known) and of the ``N`` responses' own sampling error; no ``delta`` split, no bound on
    ``E[f]``. ``method="union"``: the earlier construction (package doc), betting bounds on
    ``E[f]`` and on the rectifier at ``prediction_share`` / rest of ``delta``, added.
    ``method="stratified"`` (0/1 labels only, :mod:`.stratified`): an exact post-stratified test
    of the labels (two strata by prediction) combined with the responses' binomial law; it uses
    no weight (a declared 0 is still the labels-only bound).

    Args:
        predictions: ``f``, the cost model's prediction for every scored response, ``[N]``.
        labels: ``Y``, the trusted label of each labelled response, ``[m]``, aligned with
            ``subset.indices`` (0/1 for ``unsafe_rate``).
        subset: Which responses were labelled (:func:`draw_label_subset`).
        target: ``"unsafe_rate"`` (0/1 labels, range [0, 1]) or ``"expected_cost"``.
        confidence: ``1 - delta``.
        value_range: ``[a, b]`` of labels and predictions; required for ``expected_cost``.
        weight: ``lam`` in [0, 1] declared before seeing data, or ``"tuned"`` (predictable).
        prediction_share: ``method="union"`` only: the share of ``delta`` spent on ``E[f]``,
            declared, in (0, 1) (checked, unused by the joint test).
        method: ``"joint"`` (default), ``"union"`` or ``"stratified"``; all exact.
    """
    f, y, low, high = _checked(predictions, labels, subset, target, confidence, value_range)
    _check_weight(weight, prediction_share)
    _check_method(method, target)
    if method == "stratified" and weight != 0.0:
        return _stratified(f, y, subset, target, confidence)
    if method == "joint" and weight != 0.0:
        return _joint(f, y, subset, target, confidence, (low, high), weight)
    delta = 1.0 - confidence
    conf_a, conf_b = 1.0 - prediction_share * delta, 1.0 - (1.0 - prediction_share) * delta
    f_lab = f[list(subset.indices)]
    if weight == "tuned":
        return _tuned(f, f_lab, y, subset, target, confidence, (low, high), conf_a, conf_b)
    lam = float(weight)
    if lam == 0.0:  # the declared weight 0 needs no bound on E[f]: all of delta goes to the labels
        rect = labels_only_upper_bound(
            y, target=target, confidence=confidence, value_range=(low, high)
        )
        pred, value = None, rect.upper_bound
    else:
        pred = upper_bound(f, confidence=conf_a, bound="betting", value_range=(low, high))
        r_range = (low - lam * high, high - lam * low)
        rect = upper_bound(y - lam * f_lab, confidence=conf_b, bound="betting", value_range=r_range)
        value = lam * pred.upper_bound + rect.upper_bound
    return RectifiedBound(
        method="ppi_betting",
        target=target,
        confidence=confidence,
        upper_bound=float(min(high, value)),
        estimate=float(lam * f.mean() + (y - lam * f_lab).mean()),
        weight_rule="declared",
        weights=(lam,) * subset.m,
        n_predictions=f.size,
        n_labels=subset.m,
        prediction_bound=pred,
        rectifier_bound=rect,
        value_range=(low, high),
        approximate=False,
        assumptions=_assumptions("declared", (low, high)),
    )


def _joint(f, y, subset, target, confidence, value_range, weight) -> RectifiedBound:
    low, high = value_range
    scale = high - low
    order = np.asarray(subset.indices)
    upper, population, lams, offsets = joint_upper_bound(
        (f - low) / scale,
        (y - low) / scale,
        order,
        binary=target == "unsafe_rate",
        confidence=confidence,
        weight=None if weight == "tuned" else float(weight),
    )
    rule = "tuned" if weight == "tuned" else "declared"
    return RectifiedBound(
        method="ppi_joint",
        target=target,
        confidence=confidence,
        upper_bound=float(min(high, low + scale * upper)),
        estimate=float(y.mean() + lams[-1] * (f.mean() - f[order].mean())),
        weight_rule=rule,
        weights=tuple(float(w) for w in lams),
        n_predictions=f.size,
        n_labels=subset.m,
        prediction_bound=None,
        rectifier_bound=None,
        value_range=value_range,
        approximate=False,
        assumptions=_assumptions(f"joint_{rule}", value_range),
        population_bound=float(min(high, low + scale * population)),
        offsets=tuple(
            float(low * (1.0 - w) + scale * c) for w, c in zip(lams, offsets, strict=True)
        ),
    )


def _stratified(f, y, subset, target, confidence) -> RectifiedBound:
    order = np.asarray(subset.indices)
    upper, population, counts = stratified_upper_bound(f, y, order, confidence=confidence)
    return RectifiedBound(
        method="ppi_stratified",
        target=target,
        confidence=confidence,
        upper_bound=upper,
        estimate=float(
            sum(n * x / m for n, m, x in zip(*counts.values(), strict=True) if m) / f.size
        ),
        weight_rule="none",
        weights=(),
        n_predictions=f.size,
        n_labels=subset.m,
        prediction_bound=None,
        rectifier_bound=None,
        value_range=(0.0, 1.0),
        approximate=False,
        assumptions=_assumptions("stratified", (0.0, 1.0)),
        population_bound=population,
        strata=counts,
    )


def unlabelled_needed(method: str, weight: float | str) -> int:
    """How many responses must stay unlabelled for :func:`rectified_upper_bound` with ``method``
    and ``weight``: 2 for ``union`` with a tuned weight (it bounds E[f] on the unlabelled ones and
    estimates their variance), else 0. Checked before a test, so a labelling that could never be
    decided costs no attempt."""
    return 2 if method == "union" and weight == "tuned" else 0


def _tuned(f, f_lab, y, subset, target, confidence, value_range, conf_a, conf_b) -> RectifiedBound:
    low, high = value_range
    unlabelled = np.delete(f, list(subset.indices))
    if unlabelled.size < unlabelled_needed("union", "tuned"):
        raise ConfigError(
            f"labels: weight 'tuned' bounds E[f] on the unlabelled responses and needs at least 2 "
            f"(got {unlabelled.size} of {f.size} unlabelled); label fewer, or declare a weight"
        )
    pred = upper_bound(unlabelled, confidence=conf_a, bound="betting", value_range=value_range)
    c = pred.upper_bound
    weights = _predictable_weights(
        f_lab, y, f_var=float(unlabelled.var(ddof=1)), slack=c - pred.mean, confidence_b=conf_b
    )
    z = y - weights * (f_lab - c)
    z_range = (low - (high - c), high + (c - low))
    rect = upper_bound(z, confidence=conf_b, bound="betting", value_range=z_range)
    return RectifiedBound(
        method="ppi_betting",
        target=target,
        confidence=confidence,
        upper_bound=float(min(high, rect.upper_bound)),
        estimate=float((y - weights * (f_lab - pred.mean)).mean()),
        weight_rule="tuned",
        weights=tuple(float(w) for w in weights),
        n_predictions=f.size,
        n_labels=subset.m,
        prediction_bound=pred,
        rectifier_bound=rect,
        value_range=value_range,
        approximate=False,
        assumptions=_assumptions("tuned", value_range),
    )


def _predictable_weights(
    f_lab: np.ndarray, y: np.ndarray, *, f_var: float, slack: float, confidence_b: float
) -> np.ndarray:
    """``lam_j`` from the labelled pairs before ``j`` and the unlabelled predictions only.

    PPI++'s power tuning adapted to the finite-sample sum: the bound is about
    ``lam * (c - E[f]) + sqrt(2 ln(1/delta_B) Var(Y - lam f) / m)``, so ``lam_j`` minimises the
    plug-in of that over a grid of [0, 1], with ``Var(Y)`` and ``Cov(Y, f)`` from the labels seen
    so far (``Var(f)`` from the unlabelled ones). The first :data:`TUNING_WARMUP` use ``lam = 1``.
    """
    m = y.size
    k_b = math.sqrt(2.0 * math.log(1.0 / (1.0 - confidence_b)) / m)
    weights = np.ones(m)
    if m <= TUNING_WARMUP:
        return weights
    # Running moments of the labels *before* j (j = TUNING_WARMUP .. m - 1), Bessel-corrected.
    seen = np.arange(1, m + 1)
    s_y, s_f = np.cumsum(y), np.cumsum(f_lab)
    s_yy, s_yf = np.cumsum(y * y), np.cumsum(y * f_lab)
    past = slice(TUNING_WARMUP - 1, m - 1)
    n = seen[past]
    v_y = (s_yy[past] - s_y[past] ** 2 / n) / (n - 1)
    cov = (s_yf[past] - s_y[past] * s_f[past] / n) / (n - 1)
    grid = _WEIGHT_GRID[None, :]
    var_r = np.maximum(v_y[:, None] - 2.0 * grid * cov[:, None] + grid**2 * f_var, 0.0)
    weights[TUNING_WARMUP:] = _WEIGHT_GRID[np.argmin(grid * slack + k_b * np.sqrt(var_r), axis=1)]
    return weights


def labels_only_upper_bound(
    labels: Sequence[float] | np.ndarray,
    *,
    target: Target,
    confidence: float,
    value_range: tuple[float, float] | None = None,
) -> BoundResult:
    """The exact bound on ``theta`` from the labels alone: Clopper-Pearson (0/1) or betting."""
    if target == "unsafe_rate":
        return upper_bound(labels, confidence=confidence, bound="clopper_pearson")
    return upper_bound(labels, confidence=confidence, bound="betting", value_range=value_range)
