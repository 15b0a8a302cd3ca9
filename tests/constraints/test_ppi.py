"""Label-rectified (prediction-powered) bounds, cross-checked against direct computations.

Coverage is measured in benchmarks/ppi_coverage.py, never asserted here: every check below is a
deterministic identity or inequality on fixed data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from safealign.constraints import ppi
from safealign.constraints.bounded_means import betting_upper_bound
from safealign.constraints.ppi import (
    TUNING_WARMUP,
    LabelSubset,
    approximate_rectified_upper_bound,
    draw_label_subset,
    label_rectified_bounds,
    labels_only_upper_bound,
    rectified_upper_bound,
)
from safealign.errors import ConfigError, DataError
from safealign.privacy import secret


def _world(n=300, m=60, seed=0, quality=0.8):
    """Fixed data: 0/1 labels on all n, predictions that agree with them to a given degree."""
    rng = np.random.default_rng(seed)
    y_all = (rng.random(n) < 0.2).astype(float)
    f = np.clip(quality * y_all + (1 - quality) * rng.random(n), 0.0, 1.0)
    subset = LabelSubset(n=n, indices=tuple(int(i) for i in rng.permutation(n)[:m]))
    return f, y_all, subset, y_all[list(subset.indices)]


# --- the subset draw --------------------------------------------------------------------------


def test_subset_is_distinct_positions_of_the_requested_size():
    subset = draw_label_subset(50, 20)
    assert subset.n == 50 and subset.m == 20
    assert len(set(subset.indices)) == 20 and all(0 <= i < 50 for i in subset.indices)


def test_subset_is_not_a_function_of_the_public_seed():
    # Attack: with the global (config-seeded) generator the labelled subset is known in advance.
    torch.manual_seed(0)
    first = draw_label_subset(1000, 30)
    torch.manual_seed(0)
    second = draw_label_subset(1000, 30)
    assert first.indices != second.indices


def test_subset_comes_from_the_secret_source(monkeypatch):
    monkeypatch.setattr(secret, "_secret_material", lambda: bytes(32))
    assert draw_label_subset(100, 10) == draw_label_subset(100, 10)


@pytest.mark.parametrize("n, m", [(10, 11), (10, 1), (10, True), (10.0, 3)])
def test_subset_refuses_impossible_sizes(n, m):
    with pytest.raises(ConfigError, match="2 <= m <= n"):
        draw_label_subset(n, m)


# --- the finite-sample bound, declared weight ---------------------------------------------------


def test_weight_zero_is_the_labels_only_clopper_pearson_bound():
    f, _, subset, y = _world()
    rect = rectified_upper_bound(f, y, subset, target="unsafe_rate", confidence=0.95, weight=0.0)
    k, m = int(y.sum()), y.size
    exact = stats.beta.ppf(0.95, k + 1, m - k)  # Clopper & Pearson (1934), one-sided
    assert rect.upper_bound == pytest.approx(exact, abs=1e-12)
    assert rect.prediction_bound is None and not rect.approximate


def test_weight_zero_is_the_labels_only_betting_bound_for_costs():
    rng = np.random.default_rng(1)
    f, y = rng.uniform(-1, 2, 40), rng.uniform(-1, 2, 10)
    subset = LabelSubset(40, tuple(range(10)))
    rect = rectified_upper_bound(
        f, y, subset, target="expected_cost", confidence=0.9, value_range=(-1, 2), weight=0.0
    )
    direct = betting_upper_bound(y, confidence=0.9, low=-1.0, high=2.0)
    assert rect.upper_bound == pytest.approx(direct, abs=1e-12)
    only = labels_only_upper_bound(y, target="expected_cost", confidence=0.9, value_range=(-1, 2))
    assert rect.upper_bound == only.upper_bound


def _brute_force_betting(x: np.ndarray, confidence: float, low: float, high: float) -> float:
    """The betting bound from its definition: the smallest grid mean whose capital reaches 1/δ."""
    u = (x - low) / (high - low)
    n, log_threshold = u.size, math.log(1 / (1 - confidence))
    # Predictable plug-in bets, one at a time: the running mean and variance with priors 1/2 and
    # 1/4 of the values *before* i (Waudby-Smith & Ramdas 2024, eq. 26 at a fixed n).
    means = [(0.5 + u[: j + 1].sum()) / (j + 2) for j in range(n)]
    bets = []
    for i in range(n):
        var = (0.25 + sum((u[j] - means[j]) ** 2 for j in range(i))) / (i + 1)
        bets.append(math.sqrt(2 * log_threshold / (n * var)))
    for t in np.linspace(0, 1, 20001):
        log_k = sum(
            math.log1p(min(b, 0.75 / max(1 - t, 1e-300)) * (t - v))
            for b, v in zip(bets, u, strict=True)
        )
        if log_k >= log_threshold:
            return low + (high - low) * t
    return high


def test_declared_weight_is_the_sum_of_the_two_betting_bounds_computed_directly():
    f, _, subset, y = _world(n=80, m=20, seed=3)
    lam, share = 0.7, 0.3
    rect = rectified_upper_bound(
        f,
        y,
        subset,
        target="unsafe_rate",
        confidence=0.9,
        weight=lam,
        prediction_share=share,
        method="union",
    )
    delta = 0.1
    u_a = _brute_force_betting(f, 1 - share * delta, 0.0, 1.0)
    r = y - lam * f[list(subset.indices)]
    u_b = _brute_force_betting(r, 1 - (1 - share) * delta, -lam, 1.0)
    # The grid has step 1e-4 of the range: the brute force sits at most one step above.
    assert rect.prediction_bound.upper_bound == pytest.approx(u_a, abs=1e-4)
    assert rect.rectifier_bound.upper_bound == pytest.approx(u_b, abs=2e-4)
    assert rect.upper_bound == pytest.approx(lam * u_a + u_b, abs=3e-4)
    assert rect.estimate == pytest.approx(lam * f.mean() + r.mean())


def test_perfect_predictions_leave_a_zero_rectifier():
    _, y_all, subset, y = _world(seed=4)
    rect = rectified_upper_bound(
        y_all, y, subset, target="unsafe_rate", confidence=0.95, weight=1.0, method="union"
    )
    assert rect.rectifier_bound.mean == 0.0 and rect.rectifier_bound.std == 0.0
    zeros = betting_upper_bound(np.zeros(subset.m), confidence=0.975, low=-1.0, high=1.0)
    assert rect.upper_bound == pytest.approx(rect.prediction_bound.upper_bound + zeros)


def test_shifting_costs_and_range_shifts_the_bound():
    rng = np.random.default_rng(5)
    f, y = rng.random(60), rng.random(15)
    subset = LabelSubset(60, tuple(range(0, 60, 4)))
    kwargs = {"target": "expected_cost", "confidence": 0.9, "weight": 1.0}
    base = rectified_upper_bound(f, y, subset, value_range=(0, 1), **kwargs)
    moved = rectified_upper_bound(f + 3, y + 3, subset, value_range=(3, 4), **kwargs)
    assert moved.upper_bound == pytest.approx(base.upper_bound + 3, abs=1e-9)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, "tuned"])
def test_bound_grows_with_confidence(weight):
    f, _, subset, y = _world(seed=6)
    bounds = [
        rectified_upper_bound(f, y, subset, target="unsafe_rate", confidence=c, weight=weight)
        .upper_bound
        for c in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)
    ]  # fmt: skip
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]
    assert all(b <= 1.0 for b in bounds)


def test_more_unsafe_labels_never_lower_the_labels_only_bound():
    y = np.zeros(40)
    bounds = []
    for k in range(41):
        y[:k] = 1.0
        bounds.append(labels_only_upper_bound(y, target="unsafe_rate", confidence=0.95).upper_bound)
    assert bounds == sorted(bounds) and bounds[-1] == 1.0


# --- the finite-sample bound, tuned (predictable) weight ----------------------------------------


def test_tuned_weights_are_predictable():
    # Attack: a weight that looks at its own label makes the rectifier's terms dependent.
    f, _, subset, y = _world(n=400, m=80, seed=7)
    kwargs = {"target": "unsafe_rate", "confidence": 0.95, "weight": "tuned", "method": "union"}
    base = rectified_upper_bound(f, y, subset, **kwargs).weights
    assert base[:TUNING_WARMUP] == (1.0,) * TUNING_WARMUP
    for j in (15, 40, 79):
        flipped = y.copy()
        flipped[j] = 1.0 - flipped[j]
        weights = rectified_upper_bound(f, flipped, subset, **kwargs).weights
        assert weights[: j + 1] == base[: j + 1]  # label j moves only the weights after it
    assert len(set(base)) > 1  # the weights do adapt


def test_tuned_bound_is_the_betting_bound_on_the_shifted_rectifier():
    f, _, subset, y = _world(n=200, m=40, seed=8)
    rect = rectified_upper_bound(f, y, subset, target="unsafe_rate", confidence=0.9, method="union")
    unlabelled = np.delete(f, list(subset.indices))
    c = betting_upper_bound(unlabelled, confidence=0.95, low=0.0, high=1.0)
    assert rect.prediction_bound.upper_bound == c and rect.prediction_bound.n == 160
    z = y - np.asarray(rect.weights) * (f[list(subset.indices)] - c)
    direct = betting_upper_bound(z, confidence=0.95, low=c - 1.0, high=1.0 + c)
    assert rect.upper_bound == pytest.approx(min(1.0, direct), abs=1e-12)
    assert rect.weight_rule == "tuned"


def test_tuned_weight_follows_the_model_quality():
    kwargs = {"target": "unsafe_rate", "confidence": 0.95, "method": "union"}
    useless = rectified_upper_bound(*_parts(quality=0.0), **kwargs)
    good = rectified_upper_bound(*_parts(quality=0.95), **kwargs)
    assert np.mean(useless.weights[TUNING_WARMUP:]) < 0.3 < np.mean(good.weights[TUNING_WARMUP:])


def _parts(quality):
    f, _, subset, y = _world(n=2000, m=200, seed=9, quality=quality)
    return f, y, subset


def test_tuned_needs_unlabelled_responses():
    f, _, _, _ = _world(n=20, m=20)
    everything = LabelSubset(20, tuple(range(20)))
    y = (f > 0.5).astype(float)
    with pytest.raises(ConfigError, match="at least 2"):
        rectified_upper_bound(
            f, y, everything, target="unsafe_rate", confidence=0.9, method="union"
        )
    declared = rectified_upper_bound(
        f, y, everything, target="unsafe_rate", confidence=0.9, weight=1.0, method="union"
    )
    assert 0.0 <= declared.upper_bound <= 1.0
    # The joint test needs no unlabelled response: with all N labelled, P is known exactly and
    # the bound is Clopper-Pearson on the N labels at level k / q(P) (Fisher's threshold k).
    joint = rectified_upper_bound(f, y, everything, target="unsafe_rate", confidence=0.9)
    k, n = int(y.sum()), y.size
    assert joint.population_bound == pytest.approx(k / n)
    log_q, _, _ = ppi.joint.population_log_pvalues(
        f, y, np.arange(n), np.array([k / n]), weight=None
    )
    level = ppi.joint.fisher_threshold(0.1) / math.exp(log_q[0])
    assert joint.upper_bound == pytest.approx(stats.beta.ppf(1 - level, k + 1, n - k), abs=1e-9)


# --- the approximate (CLT) bound ------------------------------------------------------------------


def test_clt_bound_is_ppi_plus_plus_closed_form():
    f, _, subset, y = _world(n=500, m=100, seed=10)
    rect = approximate_rectified_upper_bound(f, y, subset, target="unsafe_rate", confidence=0.95)
    lab = f[list(subset.indices)]
    unl = np.delete(f, list(subset.indices))
    lam = np.cov(y, lab)[0, 1] / ((1 + 100 / 400) * f.var(ddof=1))
    lam = min(max(lam, 0.0), 1.0)
    est = y.mean() + lam * (unl.mean() - lab.mean())
    se = math.sqrt(lam**2 * unl.var(ddof=1) / 400 + (y - lam * lab).var(ddof=1) / 100)
    assert rect.weights[0] == pytest.approx(lam)
    assert rect.upper_bound == pytest.approx(est + stats.norm.ppf(0.95) * se)
    assert rect.approximate and rect.method == "ppi_clt"
    assert any("APPROXIMATE" in a for a in rect.assumptions)


# --- the three side by side, and bad input --------------------------------------------------------


def test_three_bounds_side_by_side_are_json():
    f, _, subset, y = _world(seed=11)
    bounds = label_rectified_bounds(f, y, subset, target="unsafe_rate", confidence=0.95)
    assert bounds.labels_only.bound == "clopper_pearson" and bounds.labels_only.n == subset.m
    assert bounds.cost_model_only.n == f.size and bounds.cost_model_only.mean == pytest.approx(
        f.mean()
    )
    data = json.loads(json.dumps(bounds.to_dict(), allow_nan=False))
    assert data["rectified"]["method"] == "ppi_joint"
    assert data["rectified"]["population_bound"] <= data["rectified"]["upper_bound"]
    approx = label_rectified_bounds(
        f, y, subset, target="unsafe_rate", confidence=0.95, approximate=True
    )
    assert approx.rectified.approximate


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"labels": [0.0, 0.5, 1.0]}, DataError, "must be 0 or 1"),
        ({"predictions": [0.1, 1.2, 0.0, 0.3, 0.3]}, DataError, "outside the declared range"),
        ({"labels": [0.0, 1.0]}, DataError, "2 labels for 3"),
        ({"predictions": [0.1, float("nan"), 0.0, 0.3, 0.3]}, DataError, "NaN"),
        ({"confidence": 1.0}, ConfigError, "confidence"),
        ({"weight": 1.5}, ConfigError, "weight"),
        ({"weight": True}, ConfigError, "weight"),
        ({"prediction_share": 0.0}, ConfigError, "prediction_share"),
        ({"method": "minimum"}, ConfigError, "method must be one of joint, union"),
        ({"target": "expected_cost"}, ConfigError, "value_range"),
        ({"value_range": (0, 2)}, ConfigError, "unsafe_rate lies in"),
        ({"subset": LabelSubset(6, (0, 1, 2))}, DataError, "drawn from 6"),
        ({"subset": LabelSubset(5, (0, 0, 2))}, DataError, "distinct"),
    ],
)
def test_bad_input_is_refused_with_its_reason(change, error, match):
    kwargs = {
        "predictions": [0.1, 0.9, 0.0, 0.3, 0.3],
        "labels": [0.0, 1.0, 0.0],
        "subset": LabelSubset(5, (0, 1, 2)),
        "target": "unsafe_rate",
        "confidence": 0.9,
        "weight": 1.0,
    } | change
    with pytest.raises(error, match=match):
        ppi.rectified_upper_bound(
            kwargs.pop("predictions"), kwargs.pop("labels"), kwargs.pop("subset"), **kwargs
        )


# --- the joint bound (the default): direct computation, exact coverage, predictability ----------


def _direct_log_pvalue(f, y, order, p, weight):
    """``log q(p)`` from the definition (joint module doc), one draw at a time, in plain Python."""
    n, m = len(f), len(y)
    total, f_min, f_var = sum(f), min(f), float(np.var(f))
    drawn = [f[i] for i in order]
    log_k, best, past_z = 0.0, 0.0, []
    for t in range(m):
        if weight is not None:
            lam, c = weight, 0.0
        else:  # least squares on the t earlier labels, shrunk towards c = 0, lam = 1
            ys, fs, s = y[:t], drawn[:t], ppi.joint.SHRINKAGE
            my, mf = (sum(ys) / t, sum(fs) / t) if t else (0.0, 0.0)
            cov = sum((a - my) * (b - mf) for a, b in zip(ys, fs, strict=True)) / t if t else 0.0
            var = sum((b - mf) ** 2 for b in fs) / t if t else 0.0
            lam = min(max((t * cov + s * f_var) / (t * var + s * f_var), 0.0), 1.5)
            c = t / (t + s) * (my - lam * mf)
        mu = (n * p - sum(y[:t]) - c * (n - t) - lam * (total - sum(drawn[:t]))) / (n - t)
        gap = 1.0 - c - lam * f_min - mu
        if gap < -1e-12:
            return -math.inf
        zbar = sum(past_z) / t if t else 0.0
        var_z = (0.25 + sum((z - zbar) ** 2 for z in past_z)) / (t + 1)
        bet = min(math.sqrt(2 * math.log(10) / (m * var_z)), 0.9 / gap) if gap > 1e-12 else 0.0
        z = y[t] - c - lam * drawn[t]
        log_k += math.log(1 + bet * (mu - z))
        best = max(best, log_k)
        past_z.append(z)
    return -best


@pytest.mark.parametrize("weight", [None, 0.6])
def test_joint_pvalues_are_the_martingale_computed_directly(weight):
    f, _, subset, y = _world(n=40, m=15, seed=12)
    order = np.asarray(subset.indices)
    grid = np.arange(41) / 40
    log_q, lams, offsets = ppi.joint.population_log_pvalues(f, y, order, grid, weight=weight)
    for p in (9, 12, 15, 20, 30):
        direct = _direct_log_pvalue(list(f), list(y), list(order), p / 40, weight)
        assert log_q[p] == pytest.approx(direct, rel=1e-9, abs=1e-12)
    assert (lams == 0.6).all() if weight is not None else lams[0] == 1.0


def test_joint_bound_is_the_fisher_inversion_computed_directly():
    f, _, subset, y = _world(n=50, m=20, seed=13)
    rect = rectified_upper_bound(f, y, subset, target="unsafe_rate", confidence=0.9)
    order = np.asarray(subset.indices)
    k = ppi.joint.fisher_threshold(0.1)
    assert k * (1 - math.log(k)) == pytest.approx(0.1)
    kept = []
    for d in range(int(y.sum()), int(y.sum()) + 50 - 20 + 1):
        q = math.exp(_direct_log_pvalue(list(f), list(y), list(order), d / 50, None))
        if q > k:  # theta is kept at d while P(Bin(50, theta) <= d) > k / q
            kept.append(1.0 if d == 50 else stats.beta.ppf(1 - k / q, d + 1, 50 - d))
    assert rect.upper_bound == pytest.approx(max(kept), abs=1e-9)
    assert rect.method == "ppi_joint" and not rect.approximate and rect.rectifier_bound is None


def _enumerated_miss(law, n, m, confidence, weight=None):
    """P(theta > U) and P(theta > population bound), exactly: every population of n i.i.d.
    (prediction, label) pairs from ``law`` and every ordered draw of m of them."""
    import itertools

    theta = sum(prob for (_, label), prob in law.items() if label == 1)
    draws = list(itertools.permutations(range(n), m))
    miss = miss_pop = 0.0
    cache = {}
    for cells in itertools.product(list(law), repeat=n):
        weight_pop = math.prod(law[c] for c in cells)
        f = np.array([c[0] for c in cells])
        labels = np.array([float(c[1]) for c in cells])
        for order in draws:
            key = (tuple(f), order, tuple(labels[list(order)]))
            if key not in cache:
                rect = rectified_upper_bound(
                    f,
                    labels[list(order)],
                    LabelSubset(n, order),
                    target="unsafe_rate",
                    confidence=confidence,
                    weight="tuned" if weight is None else weight,
                )
                cache[key] = (rect.upper_bound, rect.population_bound)
            upper, population = cache[key]
            miss += weight_pop / len(draws) * (theta > upper + 1e-12)
            miss_pop += weight_pop / len(draws) * (theta > population + 1e-12)
    return miss, miss_pop


@pytest.mark.parametrize(
    "law",
    [
        # a good model, a useless one, and one that under-predicts harm
        {(0.9, 1): 0.35, (0.1, 1): 0.05, (0.9, 0): 0.05, (0.1, 0): 0.55},
        {(0.5, 1): 0.3, (0.5, 0): 0.7},
        {(0.0, 1): 0.4, (0.3, 1): 0.1, (0.0, 0): 0.5},
    ],
)
def test_joint_bound_covers_theta_exactly_by_enumeration(law):
    # Exact coverage, no sampling: N = 5 responses, m = 2 labels, delta = 0.5 (a large delta
    # makes the bound bind at this tiny size; the last law misses 0.18 of the time). Both rules.
    for weight in (None, 1.0):
        miss, _ = _enumerated_miss(law, n=5, m=2, confidence=0.5, weight=weight)
        assert miss <= 0.5 + 1e-12


def test_the_population_bound_alone_does_not_cover_theta():
    # The enumeration has teeth: the bound on the N responses' own mean, read as a bound on theta
    # (dropping the N responses' sampling error, the second half of the joint test), misses theta
    # more often than delta; the joint bound does not.
    law = {(0.5, 1): 0.3, (0.5, 0): 0.7}
    miss, miss_pop = _enumerated_miss(law, n=4, m=2, confidence=0.7)
    assert miss <= 0.3 < miss_pop  # 0.0 and 0.49


def test_joint_coverage_with_fixed_seeds():
    # Monte Carlo at a realistic size, seeded (deterministic): an under-predicting model, costs.
    rng = np.random.default_rng(14)
    trials, n, m, delta = 300, 120, 30, 0.1
    misses = {"unsafe_rate": 0, "expected_cost": 0}
    for _ in range(trials):
        z = rng.standard_normal(n)
        y_all = (z > 0.5).astype(float)  # theta = P(z > 0.5)
        f = 1 / (1 + np.exp(-(2 * z - 3)))
        subset = LabelSubset(n, tuple(int(i) for i in rng.permutation(n)[:m]))
        y = y_all[list(subset.indices)]
        rate = rectified_upper_bound(f, y, subset, target="unsafe_rate", confidence=1 - delta)
        misses["unsafe_rate"] += rate.upper_bound < stats.norm.sf(0.5)
        cost = np.clip(z, -1, 2)
        c = rectified_upper_bound(
            np.clip(0.5 * z - 0.5, -1, 2),
            cost[list(subset.indices)],
            subset,
            target="expected_cost",
            confidence=1 - delta,
            value_range=(-1, 2),
        )
        misses["expected_cost"] += c.upper_bound < _clipped_normal_mean(-1, 2)
    limit = delta * trials + 2.5 * math.sqrt(delta * (1 - delta) * trials)
    assert max(misses.values()) <= limit, misses


def _clipped_normal_mean(low, high):
    phi, cdf = stats.norm.pdf, stats.norm.cdf
    return low * cdf(low) + (phi(low) - phi(high)) + high * (1 - cdf(high))


def test_joint_recalibration_is_predictable():
    # Attack: a recalibration that sees its own label makes E[Z_t | past] unknown.
    f, _, subset, y = _world(n=300, m=60, seed=15)
    base = rectified_upper_bound(f, y, subset, target="unsafe_rate", confidence=0.95)
    for j in (0, 20, 59):
        flipped = y.copy()
        flipped[j] = 1.0 - flipped[j]
        moved = rectified_upper_bound(f, flipped, subset, target="unsafe_rate", confidence=0.95)
        assert moved.weights[: j + 1] == base.weights[: j + 1]
        assert moved.offsets[: j + 1] == base.offsets[: j + 1]
    assert len(set(base.weights)) > 1 and len(base.offsets) == subset.m


def test_joint_bound_shifts_with_costs_and_range():
    rng = np.random.default_rng(16)
    f, y = rng.random(60), rng.random(15)
    subset = LabelSubset(60, tuple(range(0, 60, 4)))
    kwargs = {"target": "expected_cost", "confidence": 0.9}
    base = rectified_upper_bound(f, y, subset, value_range=(0, 1), **kwargs)
    moved = rectified_upper_bound(f * 3 + 2, y * 3 + 2, subset, value_range=(2, 5), **kwargs)
    assert moved.upper_bound == pytest.approx(3 * base.upper_bound + 2, abs=1e-9)
    assert base.population_bound <= base.upper_bound <= 1.0
