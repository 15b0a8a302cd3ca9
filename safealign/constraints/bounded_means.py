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
from scipy import optimize

# Truncation of the bets at c / (1 - m), c of the largest bet that keeps every factor positive
# (Waudby-Smith & Ramdas use c = 1/2 or 3/4): each factor is then >= 1 - c. Each factor
# 1 + min(b_i, c/(1-m)) (m - x_i) is non-decreasing in m on both branches (d/dm of
# (m - x)/(1 - m) is (1 - x)/(1 - m)^2 >= 0), so the capital is non-decreasing in m, the
# confidence set is an interval [0, U) and U is found exactly by root finding.
_BET_TRUNCATION = 0.75


def betting_upper_bound(sample: np.ndarray, *, confidence: float, low: float, high: float) -> float:
    """Upper confidence bound on the mean by betting (Waudby-Smith & Ramdas 2024; module doc).

    Args:
        sample: The i.i.d. values ``[n]``, each in ``[low, high]`` (checked by the caller), in the
            order they were drawn (the bets are predictable in that order).
        confidence: ``1 - δ``.
        low: Declared lower end of the range.
        high: Declared upper end.

    Returns:
        The bound, in the units of ``sample``; ``high`` when nothing can be excluded.
    """
    x = (np.asarray(sample, dtype=float) - low) / (high - low)
    n = x.size
    log_threshold = math.log(1.0 / (1.0 - confidence))
    # Predictable plug-in: mean and variance estimates from the values *before* i (with the
    # paper's priors 1/2 and 1/4), hence valid bets.
    seen = np.arange(1, n + 1)
    mean_hat = (0.5 + np.cumsum(x)) / (seen + 1)
    var_hat = (0.25 + np.cumsum((x - mean_hat) ** 2)) / (seen + 1)
    var_before = np.concatenate([[0.25], var_hat[:-1]])
    bets = np.sqrt(2.0 * log_threshold / (n * var_before))

    def excess(m: float) -> float:  # log K_n(m) - log(1/δ), non-decreasing in m
        lam = np.minimum(bets, _BET_TRUNCATION / max(1.0 - m, 1e-300))
        return float(np.log1p(lam * (m - x)).sum()) - log_threshold

    if excess(1.0) < 0:  # even m = 1 (the top of the range) is not rejected
        return float(high)
    # excess(0) <= -log(1/δ) < 0: the root is in (0, 1]; round it up so the bound stays valid.
    root = optimize.brentq(excess, 0.0, 1.0, xtol=1e-12)
    return float(low + (high - low) * min(1.0, root + 1e-12))


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
