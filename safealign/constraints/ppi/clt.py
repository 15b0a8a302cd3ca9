"""PPI++'s asymptotic label-rectified bound: a normal approximation, opt-in, marked approximate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from safealign.constraints.ppi._checks import Target, _checked
from safealign.constraints.ppi.result import RectifiedBound, _assumptions
from safealign.constraints.ppi.subset import LabelSubset
from safealign.errors import ConfigError


def approximate_rectified_upper_bound(
    predictions: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    subset: LabelSubset,
    *,
    target: Target,
    confidence: float,
    value_range: tuple[float, float] | None = None,
) -> RectifiedBound:
    """PPI++'s asymptotic one-sided bound (Angelopoulos, Duchi & Zrnic 2023): APPROXIMATE.

    With ``n = m`` labelled and the ``N - m`` unlabelled predictions ``f~``:
    ``lam = clip(Cov(Y, f) / ((1 + m / (N - m)) Var(f)), 0, 1)`` (their optimal weight, plug-in on
    all the data), ``theta_hat = mean(Y) + lam (mean(f~) - mean(f))`` and
    ``U = theta_hat + z_conf sqrt(lam^2 Var(f~) / (N - m) + Var(Y - lam f) / m)``. Its coverage
    rests on the central limit theorem; with rare unsafe labels it can fail far more often than
    ``delta`` (all-safe labels and a matching model give a standard error of 0).
    """
    f, y, low, high = _checked(predictions, labels, subset, target, confidence, value_range)
    f_lab = f[list(subset.indices)]
    unlabelled = np.delete(f, list(subset.indices))
    m, n_u = y.size, unlabelled.size
    if n_u < 2:
        raise ConfigError(
            f"labels: the PPI++ approximation needs at least 2 unlabelled responses (got {n_u})"
        )
    var_f = float(f.var(ddof=1))
    cov = float(np.cov(y, f_lab, ddof=1)[0, 1])
    lam = 0.0 if var_f == 0 else float(np.clip(cov / ((1.0 + m / n_u) * var_f), 0.0, 1.0))
    estimate = float(y.mean() + lam * (unlabelled.mean() - f_lab.mean()))
    se = math.sqrt(lam**2 * unlabelled.var(ddof=1) / n_u + (y - lam * f_lab).var(ddof=1) / m)
    value = estimate + float(stats.norm.ppf(confidence)) * se
    return RectifiedBound(
        method="ppi_clt",
        target=target,
        confidence=confidence,
        upper_bound=float(min(high, value)),
        estimate=estimate,
        weight_rule="plug_in",
        weights=(lam,) * m,
        n_predictions=f.size,
        n_labels=m,
        prediction_bound=None,
        rectifier_bound=None,
        value_range=(low, high),
        approximate=True,
        assumptions=_assumptions("clt", (low, high)),
    )
