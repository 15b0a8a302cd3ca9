"""The post-stratified exact label-rectified bound for 0/1 labels (``method="stratified"``).

Let ``P = K / N`` be the human-judged unsafe share of the ``N`` scored responses (``K`` unsafe
among them) and ``theta = E[Y]`` the target. Two exact facts, Fisher-free:

1. **The labels, given the N responses.** The ``N`` responses are split into two strata by their
   predictions alone (:func:`strata`: Otsu's split of the sorted predictions, each stratum at
   least :data:`MIN_LABELS` ``N / m`` responses; no label is seen), ``N_h`` responses each. The
   labelled subset is uniform without replacement and independent of every value, so given the
   ``N`` values and the labelled counts ``m_h`` per stratum, the ``m_h`` labelled responses of
   stratum ``h`` are a uniform draw without replacement from it, independently across strata:
   ``x_h ~ Hypergeometric(N_h, A_h, m_h)``, ``A_h`` the stratum's unknown unsafe count. The
   statistic is the stratified estimate of ``K``, ``T = sum_h N_h x_h / m_h`` (compared in exact
   integer arithmetic). For a hypothesised ``K = k`` the p-value is
   ``q(k) = max P_A(T <= t_obs)`` over the allocations ``A = (A_1, A_2)`` with ``A_1 + A_2 = k``
   that the observed labels allow (``x_h <= A_h <= N_h - (m_h - x_h)``; the true allocation is
   always among them, so the maximum is at least its own tail probability, which is
   super-uniform). Every allocation is enumerated (a matrix product of hypergeometric pmfs and
   cdfs), so ``q`` is exact, not a search. ``P_A(T <= t)`` falls as any ``A_h`` grows, so ``q``
   falls with ``k``.
2. **The N responses, given theta.** ``K ~ Binomial(N, theta)``, so ``r(k, theta) =
   P(Bin(N, theta) <= k)`` at the true ``K`` is a p-value.

Combination (weighted Stouffer, each z clipped at 0). Given the ``N`` values, ``r(K, theta)`` is
fixed and ``q(K)`` super-uniform, so a test rejecting when ``q <= h(r)``, ``h`` decreasing and
fixed by ``N``, ``m``, ``delta`` alone, has level ``int_0^1 h(u) du`` (``r`` is super-uniform and
``h`` decreasing). Rejecting when ``w_1 max(z_q, 0) + w_2 max(z_r, 0) >= c`` (``z = isf(p)``) is
such a test, of level ``P(w_1 max(Z_1, 0) + w_2 max(Z_2, 0) >= c)`` for independent standard
normals; ``c`` sets it to ``delta`` (:func:`combination_threshold`). Clipping matters: plain
Stouffer lets a p-value near 1 (``z`` very negative) cancel a tiny one, so a ``k`` the labels
rule out could still keep a large ``theta``. The weights are the two errors' standard deviations
for a useless model, ``w_1 ~ sqrt((1 - m / N) / m)`` (the labels' estimate of ``P``, without
replacement) and ``w_2 ~ sqrt(1 / N)`` (``P`` about ``theta``): in the normal limit the test
then bounds ``theta`` by about ``P_hat + z sqrt(s_1^2 + s_2^2)``, the labels-only width.
``theta`` is rejected only if the test rejects at every ``k`` (the true ``K`` among them), so
``U = max_k CP(k, sf(b_k))`` over the ``k`` with ``b_k = (c - w_1 max(z_q(k), 0)) / w_2 > 0``,
``CP(k, a)`` the largest ``theta`` with ``P(Bin(N, theta) <= k) > a`` (``1 - sf(b_k)`` computed
as ``cdf(b_k)``, so that a tiny ``q(k)`` keeps its precision): ``P(theta > U) <= delta`` for any
cost model. ``q`` alone at ``delta`` bounds ``P`` (``population_bound``).

Where it gains, and where not: the allocation that maximises the tail spreads the unsafe
responses evenly over the strata (equal rates), whose variance is that of simple random
sampling, so the maximum over allocations gives back most of the stratification's gain; the
bound is then about the labels-only width (measured in benchmarks/ppi_coverage.py), narrower
only where the labels themselves rule the even allocations out (a model that separates well).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import integrate, optimize, special, stats

# Each stratum holds at least MIN_LABELS * N / m responses (MIN_LABELS labels expected).
MIN_LABELS = 8.0


def strata(f: np.ndarray, m: int) -> np.ndarray:
    """0 (low) or 1 (high) for each response, from the predictions only: the split of the sorted
    predictions with the largest between-strata variance (Otsu 1979), each stratum at least
    ``MIN_LABELS * N / m`` responses and no split between equal predictions; one stratum when
    none fits."""
    n = f.size
    smallest = max(2, math.ceil(MIN_LABELS * n / m))
    out = np.zeros(n, dtype=int)
    if n < 2 * smallest:
        return out
    order = np.argsort(f, kind="stable")
    ranked = f[order]
    cum = np.cumsum(ranked)
    k = np.arange(smallest, n - smallest + 1)
    k = k[ranked[k - 1] < ranked[k]]  # never split equal predictions
    if k.size == 0:
        return out
    low, high = cum[k - 1] / k, (cum[-1] - cum[k - 1]) / (n - k)
    between = k * (n - k) * (high - low) ** 2
    out[order[k[int(np.argmax(between))] :]] = 1
    return out


def stratified_upper_bound(
    f: np.ndarray, y: np.ndarray, order: np.ndarray, *, confidence: float
) -> tuple[float, float, dict]:
    """The bound in the unit scale (module doc): ``f`` all ``N`` predictions, ``y`` the ``m``
    0/1 labels at positions ``order``. Returns (bound on theta, bound on P, the strata's counts)."""
    n, m = f.size, y.size
    layer = strata(f, m)
    labelled = layer[order]
    counts = {
        "sizes": [int((layer == h).sum()) for h in (0, 1)],
        "labelled": [int((labelled == h).sum()) for h in (0, 1)],
        "unsafe": [int(y[labelled == h].sum()) for h in (0, 1)],
    }
    ks, q = population_pvalues(counts["sizes"], counts["labelled"], counts["unsafe"])
    delta = 1.0 - confidence
    w1, w2 = _weights(n, m)
    c = combination_threshold(w1, w2, delta)
    # theta is kept at k while z_r < b_k = (c - w1 max(z_q, 0)) / w2, i.e. r(k, theta) > sf(b_k);
    # 1 - sf(b_k) is computed as cdf(b_k), so that a tiny q(k) keeps its precision.
    b = (c - w1 * np.maximum(stats.norm.isf(q), 0.0)) / w2
    live = b > 0.0
    thetas = binomial_upper(ks[live], n, stats.norm.cdf(b[live]))
    upper = float(thetas.max()) if live.any() else float(ks[0]) / n
    held = q > delta
    population = float(ks[held].max()) / n if held.any() else float(ks[0]) / n
    return min(1.0, upper), min(1.0, population), counts


def population_pvalues(
    sizes: list[int], labelled: list[int], unsafe: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(k, q(k))`` for every ``k`` the labels allow (module doc, fact 1)."""
    (n1, n2), (m1, m2), (x1, x2) = sizes, labelled, unsafe
    a1 = np.arange(x1, n1 - (m1 - x1) + 1)
    a2 = np.arange(x2, n2 - (m2 - x2) + 1)
    pmf1 = hypergeometric_pmf(n1, a1, m1)
    cdf2 = np.cumsum(hypergeometric_pmf(n2, a2, m2), axis=1)
    # T * m1 * m2 = n1 m2 x1 + n2 m1 x2: integers (a stratum with no labels adds nothing).
    s1, s2 = (n1 * m2, n2 * m1) if m1 and m2 else (1, 1)
    t_obs = s1 * x1 + s2 * x2
    top = (t_obs - s1 * np.arange(m1 + 1)) // s2  # largest x2 with T <= t_obs, given x1
    below = np.where(top < 0, 0.0, cdf2[:, np.clip(top, 0, m2)])  # [A2, x1]
    tail = np.minimum(pmf1 @ below.T, 1.0)  # P_A(T <= t_obs) for A = (a1[i], a2[j])
    ks = np.arange(a1[0] + a2[0], a1[-1] + a2[-1] + 1)
    q = np.zeros(ks.size)
    for j in range(a2.size):  # the largest tail on each line A1 + A2 = k
        span = slice(j, j + a1.size)
        np.maximum(q[span], tail[:, j], out=q[span])
    # Every k the labels allow has a positive tail (the allocation A = x holds the observed
    # draw); one that underflows is floored at the smallest normal float, which only widens.
    return ks, np.maximum(q, np.finfo(float).tiny)


def hypergeometric_pmf(n: int, unsafe: np.ndarray, m: int) -> np.ndarray:
    """``pmf[i, x] = P(x unsafe in a draw of m of n without replacement | unsafe[i] unsafe)``."""
    x = np.arange(m + 1)[None, :]
    a = np.asarray(unsafe)[:, None]
    ok = (x <= a) & (m - x <= n - a)
    log = (
        _log_comb(a, np.where(ok, x, 0))
        + _log_comb(n - a, np.where(ok, m - x, 0))
        - _log_comb(np.asarray(n), np.asarray(m))
    )
    return np.where(ok, np.exp(log), 0.0)


def _log_comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return special.gammaln(n + 1.0) - special.gammaln(k + 1.0) - special.gammaln(n - k + 1.0)


def _weights(n: int, m: int) -> tuple[float, float]:
    w1, w2 = math.sqrt((1.0 - m / n) / m), math.sqrt(1.0 / n)
    norm = math.hypot(w1, w2)
    return w1 / norm, w2 / norm


@functools.lru_cache(maxsize=256)
def combination_threshold(w1: float, w2: float, delta: float) -> float:
    """``c`` with ``P(w1 max(Z1, 0) + w2 max(Z2, 0) >= c) = delta`` (module doc)."""

    def level(c: float) -> float:
        def density(z: float) -> float:
            return float(stats.norm.pdf(z) * stats.norm.sf((c - w2 * z) / w1))

        inner = integrate.quad(density, 0.0, c / w2, limit=200, epsabs=1e-14)[0]
        return float(stats.norm.sf(c / w2) + 0.5 * stats.norm.sf(c / w1) + inner) - delta

    return float(optimize.brentq(level, 1e-9, 40.0, xtol=1e-13))


def binomial_upper(k: np.ndarray, n: int, keep: np.ndarray) -> np.ndarray:
    """Largest ``theta`` with ``P(Bin(n, theta) <= k) > 1 - keep`` (Clopper-Pearson's inversion;
    ``keep = 1 - alpha`` is passed as such so a tiny one keeps its precision)."""
    out = np.ones(k.size)
    inner = k < n
    out[inner] = stats.beta.ppf(keep[inner], k[inner] + 1.0, n - k[inner])
    return out
