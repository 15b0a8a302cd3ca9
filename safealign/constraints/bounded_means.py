"""Distribution-free upper confidence bounds on the mean of values in a known range ``[a, b]``.

Both hold for *any* distribution on ``[a, b]`` (no normal approximation), and both adapt to the
sample's variance, which Hoeffding's bound does not: on a rare-event cost (most values near
``a``) they are far tighter.

* :func:`betting_upper_bound` — the betting confidence bound of Waudby-Smith & Ramdas (2024),
  "Estimating means of bounded random variables by betting", JRSS-B 86(1), one-sided at level δ.
  For a candidate mean m, a gambler who bets against "E[X] >= m" grows the capital
  ``K_n(m) = prod_i (1 + lambda_i (m - X_i))`` (values rescaled to [0, 1]). Under E[X] = m it is a
  non-negative martingale with K_0 = 1, so by Ville's inequality P(sup_t K_t(m) >= 1/δ) <= δ: the
  set {m : K_n(m) < 1/δ} contains the true mean with probability >= 1 - δ. The bets
  ``lambda_i`` are predictable (they use X_1..X_{i-1} only): the paper's predictable plug-in for
  a fixed sample size (their eq. (26) with ``t log(1 + t)`` replaced by ``n``), truncated at
  ``c / (1 - m)`` so every factor stays positive (``1 + lambda (m - X) >= 1 - c``).
* :func:`empirical_bernstein_upper_bound` — Maurer & Pontil (2009), "Empirical Bernstein bounds
  and sample variance penalization", Theorem 4: with probability >= 1 - δ,
  ``E[X] <= mean + sqrt(2 V ln(2/δ) / n) + 7 ln(2/δ) / (3 (n - 1))`` on [0, 1], V the sample
  variance (Bessel). The ``ln(2/δ)`` is the theorem's (it spends δ/2 on the variance estimate);
  with ``ln(1/δ)`` the bound is not proven.
"""

from __future__ import annotations

import math

import numpy as np

# Truncation of the bets at c / (1 - m): each factor is then >= 1 - c (Waudby-Smith & Ramdas use
# c = 1/2 or 3/4; any c < 1 is valid). Each factor 1 + min(b_i, c/(1-m)) (m - x_i) is
# non-decreasing in m on both branches (d/dm of (m - x)/(1 - m) is (1 - x)/(1 - m)^2 >= 0), so the
# capital is non-decreasing in m, the confidence set is an interval [0, U) and U is found by
# bisection, keeping the end that is rejected (so the bound is rounded up, never down).
_BET_TRUNCATION = 0.75
_BISECTION_STEPS = 60  # 2^-60 of the range: below float resolution at the top of [0, 1]


def betting_upper_bound(
    sample: np.ndarray,
    *,
    confidence: float,
    low: float,
    high: float,
    truncation: float = _BET_TRUNCATION,
) -> float:
    """Upper confidence bound on the mean by betting (Waudby-Smith & Ramdas 2024; module doc).

    Args:
        sample: The i.i.d. values ``[n]``, each in ``[low, high]`` (checked by the caller), in the
            order they were drawn (the bets are predictable in that order).
        confidence: ``1 - δ``.
        low: Declared lower end of the range.
        high: Declared upper end.
        truncation: ``c`` in (0, 1), the largest bet as a fraction of ``1 / (1 - m)``.

    Returns:
        The bound, in the units of ``sample``; ``high`` when nothing can be excluded.
    """
    rows = np.asarray(sample, dtype=float)[None, :]
    return float(
        betting_upper_bounds(
            rows, confidence=confidence, low=low, high=high, truncation=truncation
        )[0]
    )


def betting_upper_bounds(
    samples: np.ndarray,
    *,
    confidence: float,
    low: float,
    high: float,
    truncation: float = _BET_TRUNCATION,
) -> np.ndarray:
    """:func:`betting_upper_bound` of each row of ``samples`` ``[T, n]`` at once: ``[T]``."""
    x = (np.asarray(samples, dtype=float) - low) / (high - low)
    log_threshold = math.log(1.0 / (1.0 - confidence))
    bets = predictable_bets(x, log_threshold)
    lo, hi = np.zeros(x.shape[0]), np.ones(x.shape[0])
    rejected_at_top = log_capital(x, bets, hi, truncation) >= log_threshold
    for _ in range(_BISECTION_STEPS):  # invariant: hi is rejected (or hi = 1), lo is not
        mid = 0.5 * (lo + hi)
        rejected = log_capital(x, bets, mid, truncation) >= log_threshold
        hi, lo = np.where(rejected, mid, hi), np.where(rejected, lo, mid)
    unit = np.where(rejected_at_top, hi, 1.0)
    return low + (high - low) * unit


def predictable_bets(x: np.ndarray, log_threshold: float) -> np.ndarray:
    """WSR's predictable plug-in bets ``[T, n]`` for a fixed sample size n, before truncation.

    ``lambda_i = sqrt(2 log(1/δ) / (n sigma_{i-1}^2))`` (their eq. (26) with ``t log(1 + t)``
    replaced by ``n``), where ``sigma_{i-1}^2`` uses only the values *before* i, with the paper's
    priors: ``mu_i = (1/2 + sum_{j<=i} x_j) / (i + 1)``, ``sigma_i^2 = (1/4 + sum_{j<=i}
    (x_j - mu_j)^2) / (i + 1)`` and ``sigma_0^2 = 1/4``. Predictable, hence a valid bet.
    """
    n = x.shape[-1]
    seen = np.arange(1, n + 1)
    mean_hat = (0.5 + np.cumsum(x, axis=-1)) / (seen + 1)
    var_hat = (0.25 + np.cumsum((x - mean_hat) ** 2, axis=-1)) / (seen + 1)
    var_before = np.concatenate([np.full(x.shape[:-1] + (1,), 0.25), var_hat[..., :-1]], axis=-1)
    return np.sqrt(2.0 * log_threshold / (n * var_before))


def log_capital(x: np.ndarray, bets: np.ndarray, m: np.ndarray, truncation: float) -> np.ndarray:
    """``log K_n(m) = sum_i log(1 + min(lambda_i, c / (1 - m)) (m - x_i))`` per row, ``[T]``.

    Args:
        x: Values rescaled to [0, 1], ``[T, n]``.
        bets: :func:`predictable_bets`, ``[T, n]``.
        m: The candidate mean of each row, ``[T]`` in [0, 1].
        truncation: ``c`` in (0, 1).
    """
    m = np.asarray(m, dtype=float)[:, None]
    lam = np.minimum(bets, truncation / np.maximum(1.0 - m, 1e-300))
    return np.log1p(lam * (m - x)).sum(axis=-1)


def empirical_bernstein_upper_bound(
    sample: np.ndarray, *, confidence: float, low: float, high: float
) -> float:
    """Maurer & Pontil's (2009, Thm 4) empirical Bernstein upper bound (module doc).

    Args:
        sample: The i.i.d. values ``[n]``, ``n >= 2``, each in ``[low, high]``.
        confidence: ``1 - δ``.
        low: Declared lower end of the range.
        high: Declared upper end.
    """
    x = (np.asarray(sample, dtype=float) - low) / (high - low)
    n = x.size
    log_term = math.log(2.0 / (1.0 - confidence))
    variance = float(x.var(ddof=1))
    upper01 = (
        float(x.mean())
        + math.sqrt(2.0 * variance * log_term / n)
        + 7.0 * log_term / (3.0 * (n - 1))
    )
    return float(low + (high - low) * min(1.0, upper01))
