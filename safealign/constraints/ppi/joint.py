"""The joint label-rectified bound (the default): one test over the N scored responses, no
union bound and no bound on ``E[f]``.

Work in the unit scale (labels and predictions mapped from ``[a, b]`` to [0, 1]). Let
``P = mean(Y_i)`` over the ``N`` scored responses, the *finite-population* human-judged mean, and
``theta = E[Y]`` the target. Every prediction is known, so ``sum_i f_i`` is known exactly; what is
unknown is ``P``. Two facts, each exact:

1. **The labels, given the N responses** (sampling without replacement; Waudby-Smith & Ramdas,
   "Confidence sequences for sampling without replacement", NeurIPS 2020). The labelled
   responses are a uniformly random ordered draw of ``m`` of the ``N``, independent of every
   value (:func:`~safealign.constraints.ppi.draw_label_subset`). Fix all ``N`` (response,
   prediction, label) values and a hypothesis ``P = p``. Before draw ``t`` (``t`` drawn), the
   remaining ``N - t`` responses hold label sum ``N p - S_t`` and prediction sum ``F - F_t``
   (``S_t``, ``F_t`` the sums drawn so far), so for ``Z_t = Y_t - (c_t + lam_t f_t)`` with a
   recalibration ``c_t, lam_t >= 0`` chosen from the past draws and the predictions only,
   ``E[Z_t | past] = mu_t(p) = (N p - S_t - c_t (N - t) - lam_t (F - F_t)) / (N - t)``. The
   capital ``K_t(p) = prod (1 + b_s (mu_s(p) - Z_s))`` with predictable bets
   ``0 <= b_s <= 0.9 / (z_max - mu_s)`` (``z_max = 1 - c_s - lam_s min f`` bounds ``Z_s``) is a
   non-negative martingale under ``P = p``, so by Ville's inequality
   ``q(p) = min(1, 1 / max_t K_t(p))`` is a p-value for ``P = p`` given the ``N`` values,
   whatever they are. The recalibration is PPI++'s power tuning (Angelopoulos, Duchi & Zrnic
   2023) made predictable: least squares of ``Y`` on ``f`` over the earlier labels, shrunk
   towards ``c = 0, lam = 1`` by :data:`SHRINKAGE` pseudo-labels; a declared weight fixes
   ``c = 0, lam = weight``.
2. **The N responses, given theta.** ``N P`` is a sum of ``N`` i.i.d. labels of mean ``theta``:
   for 0/1 labels ``N P ~ Binomial(N, theta)`` and ``r(p, theta) = P(Bin(N, theta) <= N p)``
   exactly; for labels in [0, 1], ``r(p, theta) = exp(-N kl(p, theta))`` for ``p < theta``
   (Hoeffding 1963, Theorem 1), 1 otherwise. Either way ``r(P, theta)`` is a p-value.

Given the ``N`` values, ``r(P, theta)`` is a constant and ``q(P)`` is super-uniform, so Fisher's
product test (Fisher 1932), "reject when ``r q <= k``" with ``k (1 - ln k) = delta``, has level
``delta``: ``P(r q <= k | N values) <= min(1, k / r)``, and ``E[min(1, k / r)] <= k (1 - ln k)``
because ``r`` is super-uniform and ``u -> min(1, k / u)`` decreases. ``theta`` is rejected only if
the test rejects at *every* possible ``p``, the true ``P`` among them, so
``U = sup{theta : r(p, theta) q(p) > k for some p}`` has ``P(theta > U) <= delta``. For 0/1 labels
``p`` runs over ``0, 1/N, ..., 1``, which holds ``P`` exactly; for costs over a grid of
:data:`COST_GRID` cells, each tested with the bets of its left end (``K_t`` only grows with ``p``
for fixed bets, so the left end's p-value holds for the whole cell) and bounded at its right end.
Nothing is approximate. The same ``q`` alone at ``delta`` bounds ``P``: the bound on the scored
responses' own human-judged mean (``population_bound``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

# Bets: the plug-in bet of Waudby-Smith & Ramdas (2024, eq. 26) aimed at level BET_LEVEL, with a
# prior variance of 1/4 counted as one label, truncated at TRUNCATION of the largest safe bet.
BET_LEVEL = 0.1
TRUNCATION = 0.9
# Pseudo-labels pulling the recalibration towards c = 0, lam = 1 (PPI's own rectifier).
SHRINKAGE = 10.0
WEIGHT_MAX = 1.5
COST_GRID = 2000


def fisher_threshold(delta: float) -> float:
    """``k`` with ``k (1 - ln k) = delta``: Fisher's product test of two p-values at ``delta``."""
    return float(optimize.brentq(lambda k: k * (1.0 - math.log(k)) - delta, 1e-300, delta))


def joint_upper_bound(
    f: np.ndarray,
    y: np.ndarray,
    order: np.ndarray,
    *,
    binary: bool,
    confidence: float,
    weight: float | None,
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The joint bound in the unit scale (module doc). ``f``: all ``N`` predictions in [0, 1];
    ``y``: the ``m`` labels in draw order; ``order``: their positions; ``weight``: declared
    ``lam`` or None (tuned). Returns (bound on theta, bound on P, ``lam_t``, ``c_t``)."""
    n, m = f.size, y.size
    if binary:
        left = np.arange(n + 1) / n
        right = left
    else:
        edges = np.linspace(0.0, 1.0, COST_GRID + 1)
        left, right = edges[:-1], edges[1:]
    log_q, lams, offsets = population_log_pvalues(f, y, order, left, weight=weight)
    # The labels already drawn fix part of N P: outside these limits P cannot lie.
    lowest, highest = y.sum() / n, (y.sum() + (n - m)) / n
    possible = (right >= lowest - 1e-12) & (left <= highest + 1e-12)
    log_q = np.where(possible, log_q, -np.inf)
    delta = 1.0 - confidence
    log_k = math.log(fisher_threshold(delta))
    # Cell kept for theta iff r(p, theta) > k / q(p): r's largest rejected value at that p.
    log_alpha = np.minimum(0.0, log_k - log_q)
    keep = log_alpha < 0.0
    theta = np.full(left.size, -np.inf)
    if keep.any():
        alpha = np.exp(log_alpha[keep])
        p = right[keep]
        theta[keep] = _binomial_upper(p, n, alpha) if binary else _chernoff_upper(p, n, alpha)
    upper = float(theta.max()) if keep.any() else float(lowest)
    held = log_q > math.log(delta)
    population = float(right[held].max()) if held.any() else float(lowest)
    return min(1.0, upper), min(1.0, population), lams, offsets


def population_log_pvalues(
    f: np.ndarray, y: np.ndarray, order: np.ndarray, grid: np.ndarray, *, weight: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``log q(p)`` for every ``p`` in ``grid`` (module doc, fact 1), and the ``lam_t, c_t``."""
    n, m = f.size, y.size
    drawn = f[order]
    total_f, f_min, f_var = float(f.sum()), float(f.min()), float(f.var())
    log_threshold = math.log(1.0 / BET_LEVEL)
    log_cap = np.zeros(grid.size)
    best = np.zeros(grid.size)
    impossible = np.zeros(grid.size, dtype=bool)
    lams, offsets = np.empty(m), np.empty(m)
    s_y = s_f = s_ff = s_yf = s_z = s_zz = 0.0
    for t in range(m):
        lam, c = _recalibration(t, s_y, s_f, s_ff, s_yf, f_var, weight)
        lams[t], offsets[t] = lam, c
        rest = n - t
        mu = (grid * n - s_y - c * rest - lam * (total_f - s_f)) / rest
        gap = (1.0 - c - lam * f_min) - mu  # z_max - mu: Z_t <= z_max always
        impossible |= gap < -1e-12  # the remaining mean would exceed every value it can take
        var = (0.25 + _sq_dev(s_z, s_zz, t)) / (t + 1)
        plug_in = math.sqrt(2.0 * log_threshold / (m * max(var, 1e-12)))
        safe = gap > 1e-12
        bet = np.where(safe, np.minimum(plug_in, TRUNCATION / np.where(safe, gap, 1.0)), 0.0)
        z = y[t] - c - lam * drawn[t]
        log_cap += np.log1p(bet * (mu - z))
        np.maximum(best, log_cap, out=best)
        s_y += y[t]
        s_f += drawn[t]
        s_ff += drawn[t] ** 2
        s_yf += y[t] * drawn[t]
        s_z += z
        s_zz += z * z
    log_q = np.where(impossible, -np.inf, -best)
    return log_q, lams, offsets


def _sq_dev(s_z: float, s_zz: float, t: int) -> float:
    """The sum of squared deviations of the first ``t`` rectifier values from their mean."""
    return max(s_zz - s_z * s_z / t, 0.0) if t > 0 else 0.0


def _recalibration(t, s_y, s_f, s_ff, s_yf, f_var, weight) -> tuple[float, float]:
    """``(lam_t, c_t)`` from the ``t`` earlier labels only (predictable)."""
    if weight is not None:
        return float(weight), 0.0
    if f_var <= 0.0:
        return 1.0, 0.0
    mean_y, mean_f = (s_y / t, s_f / t) if t else (0.0, 0.0)
    cov, var = (s_yf / t - mean_y * mean_f, s_ff / t - mean_f**2) if t else (0.0, 0.0)
    lam = (t * cov + SHRINKAGE * f_var) / (t * var + SHRINKAGE * f_var)
    lam = min(max(lam, 0.0), WEIGHT_MAX)
    return lam, t / (t + SHRINKAGE) * (mean_y - lam * mean_f)


def _binomial_upper(p: np.ndarray, n: int, alpha: np.ndarray) -> np.ndarray:
    """Largest ``theta`` with ``P(Bin(n, theta) <= n p) > alpha`` (Clopper-Pearson's inversion)."""
    d = np.rint(p * n)
    inner = d < n
    out = np.ones_like(p)
    out[inner] = stats.beta.ppf(1.0 - alpha[inner], d[inner] + 1.0, n - d[inner])
    return out


def _chernoff_upper(p: np.ndarray, n: int, alpha: np.ndarray) -> np.ndarray:
    """Largest ``theta >= p`` with ``exp(-n kl(p, theta)) > alpha`` (bisection, 60 halvings)."""
    target = np.log(1.0 / alpha) / n
    low, high = p.copy(), np.ones_like(p)
    for _ in range(60):
        mid = 0.5 * (low + high)
        over = _kl(p, mid) >= target
        high = np.where(over, mid, high)
        low = np.where(over, low, mid)
    return high


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    q = np.clip(q, 1e-300, 1.0 - 1e-16)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log(p / q), 0.0)
        b = np.where(p < 1, (1 - p) * np.log((1 - p) / (1 - q)), 0.0)
    return a + b
