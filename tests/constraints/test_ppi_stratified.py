"""The post-stratified exact label-rectified bound (``method="stratified"``), cross-checked
against direct computations and by exact enumeration; its version field refused when unknown.

Coverage and width at realistic sizes are measured in benchmarks/ppi_coverage.py."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from safealign.constraints.ppi import (
    METHOD_VERSIONS,
    LabelSubset,
    check_method_version,
    label_rectified_bounds,
    rectified_upper_bound,
    stratified,
)
from safealign.errors import ConfigError, DataError


def _direct_q(sizes, labelled, unsafe, k):
    """``max P_A(T <= t_obs)`` over every allocation the labels allow, by scipy's pmfs."""
    (n1, n2), (m1, m2), (x1, x2) = sizes, labelled, unsafe
    w1, w2 = (n1 / m1 if m1 else 0.0), (n2 / m2 if m2 else 0.0)
    t_obs = w1 * x1 + w2 * x2
    best = 0.0
    for a1 in range(x1, n1 - (m1 - x1) + 1):
        a2 = k - a1
        if not x2 <= a2 <= n2 - (m2 - x2):
            continue
        tail = sum(
            stats.hypergeom.pmf(u1, n1, a1, m1) * stats.hypergeom.pmf(u2, n2, a2, m2)
            for u1 in range(m1 + 1)
            for u2 in range(m2 + 1)
            if w1 * u1 + w2 * u2 <= t_obs + 1e-9
        )
        best = max(best, tail)
    return best


def test_population_pvalues_are_the_maximum_over_allocations_computed_directly():
    rng = np.random.default_rng(0)
    cases = [((7, 5), (3, 2), (1, 2)), ((6, 8), (0, 4), (0, 1)), ((9, 4), (5, 0), (2, 0))]
    for _ in range(12):
        n1, n2 = (int(v) for v in rng.integers(2, 9, size=2))
        m1, m2 = int(rng.integers(1, n1 + 1)), int(rng.integers(1, n2 + 1))
        cases.append(
            ((n1, n2), (m1, m2), (int(rng.integers(0, m1 + 1)), int(rng.integers(0, m2 + 1))))
        )
    for sizes, labelled, unsafe in cases:
        ks, q = stratified.population_pvalues(list(sizes), list(labelled), list(unsafe))
        for k, qk in zip(ks, q, strict=True):
            assert qk == pytest.approx(_direct_q(sizes, labelled, unsafe, int(k)), abs=1e-10)
        assert (np.diff(q) <= 1e-12).all()  # q falls with k: the boundary is the hypothesis


def test_one_stratum_is_the_hypergeometric_test():
    ks, q = stratified.population_pvalues([40, 0], [12, 0], [3, 0])
    assert q == pytest.approx(stats.hypergeom.cdf(3, 40, ks, 12), abs=1e-12)


def test_strata_use_the_predictions_only_and_respect_the_minimum_size():
    rng = np.random.default_rng(1)
    f = np.concatenate([rng.uniform(0, 0.2, 150), rng.uniform(0.8, 1.0, 50)])
    layer = stratified.strata(f, 50)
    assert layer.sum() == 50 and (f[layer == 1] >= 0.8).all()  # Otsu's split: the gap
    small = stratified.strata(f, 20)  # 8 * 200 / 20 = 80 responses at least in each
    assert min(small.sum(), (1 - small).sum()) >= 80
    assert stratified.strata(np.full(200, 0.3), 50).sum() == 0  # equal predictions: one stratum


def test_combination_threshold_has_level_delta():
    # Direct: the level of "w1 max(Z1, 0) + w2 max(Z2, 0) >= c" by seeded Monte Carlo.
    w1, w2 = stratified._weights(1000, 100)
    c = stratified.combination_threshold(w1, w2, 0.05)
    z = np.random.default_rng(0).standard_normal((2, 2_000_000))
    level = np.mean(w1 * np.maximum(z[0], 0) + w2 * np.maximum(z[1], 0) >= c)
    assert level == pytest.approx(0.05, abs=1e-3)  # 6 standard errors
    assert c > stats.norm.isf(0.05)  # clipping at 0 costs a little against plain Stouffer


def test_bound_is_the_clipped_stouffer_inversion_computed_directly():
    rng = np.random.default_rng(2)
    n, m = 120, 40
    f = rng.random(n)
    y_all = (rng.random(n) < f * 0.6).astype(float)
    subset = LabelSubset(n, tuple(int(i) for i in rng.permutation(n)[:m]))
    y = y_all[list(subset.indices)]
    rect = rectified_upper_bound(
        f, y, subset, target="unsafe_rate", confidence=0.9, method="stratified"
    )
    s = rect.strata
    ks, q = stratified.population_pvalues(s["sizes"], s["labelled"], s["unsafe"])
    w1, w2 = stratified._weights(n, m)
    c = stratified.combination_threshold(w1, w2, 0.1)
    kept = []
    for k, qk in zip(ks, q, strict=True):
        room = c - w1 * max(stats.norm.isf(qk), 0.0)  # what is left for the binomial's z
        if room > 0:  # theta is kept at k while P(Bin(n, theta) <= k) > sf(room / w2)
            kept.append(1.0 if k == n else stats.beta.ppf(stats.norm.cdf(room / w2), k + 1, n - k))
    assert rect.upper_bound == pytest.approx(max(kept), abs=1e-9)
    assert rect.method == "ppi_stratified" and not rect.approximate
    assert rect.population_bound == pytest.approx(ks[q > 0.1].max() / n)
    assert sum(s["sizes"]) == n and sum(s["labelled"]) == m and sum(s["unsafe"]) == y.sum()


def test_a_tiny_labels_p_value_is_not_rounded_away():
    # Attack on the numerics: 1 - sf(b) rounds to 1 for large k, whose tiny q(k) then keeps a
    # theta far above the labels' (found at N = 200, m = 100: 0.13 against Clopper-Pearson 0.06).
    f, y = np.full(200, 0.5), np.zeros(100)
    y[:2] = 1.0
    subset = LabelSubset(200, tuple(range(100)))
    rect = rectified_upper_bound(
        f, y, subset, target="unsafe_rate", confidence=0.95, method="stratified"
    )
    assert rect.upper_bound < 1.2 * stats.beta.ppf(0.95, 3, 98)  # 0.069; before: 0.134


def _enumerated_miss(law, n, m, confidence):
    """P(theta > U) exactly, and the worst P(P > population bound) over the populations: every
    population of n i.i.d. (prediction, label) pairs from ``law``, every subset of m."""
    theta = sum(prob for (_, label), prob in law.items() if label == 1)
    subsets = list(itertools.combinations(range(n), m))
    miss, worst_population = 0.0, 0.0
    for cells in itertools.product(list(law), repeat=n):
        weight = math.prod(law[c] for c in cells)
        f = np.array([c[0] for c in cells])
        labels = np.array([float(c[1]) for c in cells])
        miss_p = 0.0
        for chosen in subsets:
            rect = rectified_upper_bound(
                f,
                labels[list(chosen)],
                LabelSubset(n, chosen),
                target="unsafe_rate",
                confidence=confidence,
                method="stratified",
            )
            miss += weight / len(subsets) * (theta > rect.upper_bound + 1e-12)
            miss_p += (labels.mean() > rect.population_bound + 1e-12) / len(subsets)
        worst_population = max(worst_population, miss_p)
    return miss, worst_population


@pytest.mark.parametrize(
    "law",
    [
        # a good model, a useless one, and one that under-predicts harm
        {(0.9, 1): 0.35, (0.1, 1): 0.05, (0.9, 0): 0.05, (0.1, 0): 0.55},
        {(0.5, 1): 0.3, (0.5, 0): 0.7},
        {(0.0, 1): 0.4, (0.3, 1): 0.1, (0.0, 0): 0.5},
    ],
)
def test_stratified_bound_covers_theta_and_each_population_exactly(law, monkeypatch):
    # Exact, no sampling: N = 5 responses, m = 2 labels, delta = 0.5 (large, so the bound binds
    # at this tiny size). Strata of at least 2 responses, so two strata do form.
    monkeypatch.setattr(stratified, "MIN_LABELS", 0.5)
    miss, worst_population = _enumerated_miss(law, n=5, m=2, confidence=0.5)
    assert miss <= 0.5 + 1e-12
    assert worst_population <= 0.5 + 1e-12  # given ANY fixed population, not only on average


def test_the_population_bound_alone_does_not_cover_theta(monkeypatch):
    # The enumeration has teeth: the bound on the N responses' own mean, read as a bound on
    # theta (no binomial half), misses theta more often than delta.
    monkeypatch.setattr(stratified, "MIN_LABELS", 0.5)
    law = {(0.5, 1): 0.3, (0.5, 0): 0.7}
    theta, n, m, delta = 0.3, 4, 2, 0.3
    miss = 0.0
    for cells in itertools.product(list(law), repeat=n):
        weight = math.prod(law[c] for c in cells)
        labels = np.array([float(c[1]) for c in cells])
        for chosen in itertools.combinations(range(n), m):
            f = np.array([c[0] for c in cells])
            rect = rectified_upper_bound(
                f, labels[list(chosen)], LabelSubset(n, chosen), target="unsafe_rate",
                confidence=1 - delta, method="stratified",
            )  # fmt: skip
            miss += weight / math.comb(n, m) * (theta > rect.population_bound + 1e-12)
    assert miss > delta


def test_stratified_coverage_with_fixed_seeds():
    # Monte Carlo at a realistic size, seeded (deterministic): a model that under-predicts harm.
    rng = np.random.default_rng(14)
    trials, n, m, delta = 300, 300, 60, 0.1
    theta = stats.norm.sf(0.5)
    misses = 0
    for _ in range(trials):
        z = rng.standard_normal(n)
        f = 1 / (1 + np.exp(-(2 * z - 3)))
        subset = LabelSubset(n, tuple(int(i) for i in rng.permutation(n)[:m]))
        y = (z > 0.5).astype(float)[list(subset.indices)]
        rect = rectified_upper_bound(
            f, y, subset, target="unsafe_rate", confidence=1 - delta, method="stratified"
        )
        misses += rect.upper_bound < theta
    assert misses <= delta * trials + 2.5 * math.sqrt(delta * (1 - delta) * trials), misses


def test_stratified_refuses_costs_and_reads_a_declared_zero_as_labels_only():
    rng = np.random.default_rng(3)
    f, y = rng.random(50), (rng.random(10) < 0.3).astype(float)
    subset = LabelSubset(50, tuple(range(10)))
    with pytest.raises(ConfigError, match="stratified"):
        rectified_upper_bound(
            f, y, subset, target="expected_cost", confidence=0.9, value_range=(0, 1),
            method="stratified",
        )  # fmt: skip
    zero = rectified_upper_bound(
        f, y, subset, target="unsafe_rate", confidence=0.9, weight=0.0, method="stratified"
    )
    bounds = label_rectified_bounds(
        f, y, subset, target="unsafe_rate", confidence=0.9, method="stratified"
    )
    assert zero.upper_bound == pytest.approx(bounds.labels_only.upper_bound)
    assert bounds.to_dict()["rectified"]["strata"]["sizes"] == [50, 0]  # too few for two


def test_method_versions_are_checked():
    for method, version in METHOD_VERSIONS.items():
        check_method_version(method, version)
    check_method_version("joint", None)  # before the field existed: version 1
    with pytest.raises(DataError, match="version 2"):
        check_method_version("joint", 2)
    with pytest.raises(DataError, match="version"):
        check_method_version("stratified", "1")


def _least_allocation_pvalues(sizes, labelled, unsafe):
    return _least_cached(tuple(sizes), tuple(labelled), tuple(unsafe))


@functools.cache
def _least_cached(sizes, labelled, unsafe):
    """The attack: the tail at the allocation that makes it SMALLEST, not the largest."""
    (n1, n2), (m1, m2), (x1, x2) = sizes, labelled, unsafe
    ks, q = [], []
    for k in range(x1 + x2, n1 + n2 - (m1 + m2 - x1 - x2) + 1):
        tails = [
            _tail(sizes, labelled, unsafe, a1, k - a1)
            for a1 in range(x1, n1 - (m1 - x1) + 1)
            if x2 <= k - a1 <= n2 - (m2 - x2)
        ]
        ks.append(k)
        q.append(max(min(tails), 1e-300))
    return np.array(ks), np.array(q)


def _tail(sizes, labelled, unsafe, a1, a2):
    (n1, n2), (m1, m2), (x1, x2) = sizes, labelled, unsafe
    p1 = stratified.hypergeometric_pmf(n1, np.array([a1]), m1)[0]
    p2 = stratified.hypergeometric_pmf(n2, np.array([a2]), m2)[0]
    w1, w2 = (n1 / m1 if m1 else 0.0), (n2 / m2 if m2 else 0.0)
    return sum(
        p1[u1] * p2[u2]
        for u1 in range(m1 + 1)
        for u2 in range(m2 + 1)
        if w1 * u1 + w2 * u2 <= w1 * x1 + w2 * x2 + 1e-9
    )


def test_the_enumeration_catches_a_p_value_not_maximised_over_allocations(monkeypatch):
    # Teeth: a p-value at the allocation that gives the smallest tail, not the largest, leaves
    # populations whose own unsafe share is missed more often than delta.
    monkeypatch.setattr(stratified, "MIN_LABELS", 0.5)
    monkeypatch.setattr(stratified, "population_pvalues", _least_allocation_pvalues)
    law = {(0.9, 1): 0.35, (0.1, 1): 0.05, (0.9, 0): 0.05, (0.1, 0): 0.55}
    _, worst_population = _enumerated_miss(law, n=5, m=2, confidence=0.5)
    assert worst_population > 0.5  # 0.6; the maximum over allocations keeps it <= 0.5


def test_config_refuses_stratified_for_expected_costs():
    from safealign.config import load_config

    overrides = ["safety.metric=expected_cost", "safety.cost_range=[-1, 2]",
                 "safety.labels={size: 20, method: stratified}"]  # fmt: skip
    with pytest.raises(ConfigError, match="method stratified bounds a 0/1 unsafe rate"):
        load_config(None, overrides)
    assert load_config(None, ["safety.labels={size: 20, method: stratified}"]).safety.labels
