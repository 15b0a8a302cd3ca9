"""Betting and empirical-Bernstein bounds: valid for any distribution on the declared range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safealign.constraints.bounded_means import betting_upper_bound, betting_upper_bounds
from safealign.constraints.bounds import upper_bound

WORLDS = {
    # name: (draw n values on [0, 1], true mean)
    "rare_unsafe": (lambda rng, n: (rng.random(n) < 0.03).astype(float), 0.03),
    "skewed_beta": (lambda rng, n: rng.beta(0.2, 3.0, n), 0.2 / 3.2),
    # 3% catastrophic prompts at the top of the range, the rest near zero (skewness ~ 5).
    "rare_catastrophe": (
        lambda rng, n: np.where(rng.random(n) < 0.03, 1.0, 0.05 * rng.random(n)),
        0.03 + 0.97 * 0.025,
    ),
    "uniform": (lambda rng, n: rng.random(n), 0.5),
}


def _failure_rate(bound: str, world: str, n: int, confidence: float, trials: int) -> float:
    draw, mean = WORLDS[world]
    rng = np.random.default_rng([n, trials, len(world)])  # public seed: the test is deterministic
    misses = sum(
        upper_bound(draw(rng, n), confidence=confidence, bound=bound, value_range=(0.0, 1.0))
        .upper_bound < mean
        for _ in range(trials)
    )  # fmt: skip
    return misses / trials


@pytest.mark.parametrize("bound", ["betting", "empirical_bernstein"])
@pytest.mark.parametrize("world", sorted(WORLDS))
@pytest.mark.parametrize("n", [30, 200])
def test_failure_rate_is_at_most_delta_in_every_world(bound, world, n):
    # 400 trials at delta = 0.1: a valid bound misses at most 10% in expectation; 0.16 is 4
    # binomial standard deviations above it, so only a broken bound can cross it.
    assert _failure_rate(bound, world, n, confidence=0.9, trials=400) <= 0.16


def test_student_t_fails_on_rare_catastrophes_where_betting_holds():
    # The attack of issue #13 (finding 1): rare catastrophic prompts, n_s = 30, delta = 0.05.
    # When no catastrophe is drawn (0.97^30 = 40% of samples) the t bound sits far below the
    # mean; the betting bound does not.
    t = _failure_rate("student_t", "rare_catastrophe", 30, confidence=0.95, trials=400)
    betting = _failure_rate("betting", "rare_catastrophe", 30, confidence=0.95, trials=400)
    assert t > 0.3
    assert betting <= 0.05 + 0.045


@pytest.mark.parametrize("bound", ["betting", "empirical_bernstein"])
def test_zero_variance_sample_still_has_a_positive_bound(bound):
    # Student t on 30 safe responses has std 0 and bound 0; a valid bound cannot be 0.
    result = upper_bound(np.zeros(30), confidence=0.95, bound=bound, value_range=(0.0, 1.0))
    assert 0.0 < result.upper_bound < 1.0


@pytest.mark.parametrize("bound", ["betting", "empirical_bernstein"])
def test_bound_is_equivariant_to_the_declared_range(bound):
    values = np.random.default_rng(3).beta(0.5, 2.0, 50)
    unit = upper_bound(values, confidence=0.9, bound=bound, value_range=(0.0, 1.0)).upper_bound
    scaled = upper_bound(
        -2.0 + 4.0 * values, confidence=0.9, bound=bound, value_range=(-2.0, 2.0)
    ).upper_bound
    assert scaled == pytest.approx(-2.0 + 4.0 * unit, abs=1e-9)
    assert values.mean() < unit <= 1.0


def test_betting_is_tighter_than_hoeffding_on_a_rare_event_sample():
    values = np.zeros(100)
    values[:2] = 1.0
    betting = upper_bound(values, confidence=0.95, bound="betting", value_range=(0, 1))
    hoeffding = upper_bound(values, confidence=0.95, bound="hoeffding", value_range=(0, 1))
    assert betting.upper_bound < hoeffding.upper_bound


def test_betting_needs_a_declared_range():
    from safealign.errors import ConfigError

    with pytest.raises(ConfigError, match="value_range"):
        upper_bound(np.zeros(10), confidence=0.9, bound="betting")


# Deterministic cross-checks of the betting bound's computation (no statistical assertions).


def _direct_log_capital(x, m, confidence, truncation=0.75):
    """Waudby-Smith & Ramdas' capital written out one bet at a time (no numpy cumulative sums)."""
    n, log_threshold = len(x), math.log(1 / (1 - confidence))
    total, mean_sum, var_sum, var_before = 0.0, 0.0, 0.0, 0.25
    for i, xi in enumerate(x, start=1):
        bet = min(math.sqrt(2 * log_threshold / (n * var_before)), truncation / (1 - m))
        total += math.log(1 + bet * (m - xi))
        mean_sum += xi
        mean_i = (0.5 + mean_sum) / (i + 1)
        var_sum += (xi - mean_i) ** 2
        var_before = (0.25 + var_sum) / (i + 1)
    return total


@pytest.mark.parametrize("n", [2, 7, 40])
@pytest.mark.parametrize("confidence", [0.9, 0.99])
def test_betting_bound_is_the_edge_of_the_directly_computed_confidence_set(n, confidence):
    x = np.random.default_rng(n).beta(0.3, 2.0, n)
    bound = betting_upper_bound(x, confidence=confidence, low=0.0, high=1.0)
    threshold = math.log(1 / (1 - confidence))
    if bound < 1.0:  # rejected at the bound (up to summation order), kept just below it
        assert _direct_log_capital(x, bound, confidence) >= threshold - 1e-9
        assert _direct_log_capital(x, bound - 1e-7, confidence) < threshold
    # and on a grid: every m below the bound is kept, every m above it is rejected
    for m in np.linspace(0.0, 0.999, 200):
        assert (_direct_log_capital(x, m, confidence) >= threshold) == (m >= bound)


def test_batched_betting_bounds_equal_the_scalar_bound_row_by_row():
    rows = np.random.default_rng(1).beta(0.5, 3.0, (5, 25))
    batched = betting_upper_bounds(rows, confidence=0.95, low=0.0, high=1.0)
    for row, value in zip(rows, batched, strict=True):
        assert value == betting_upper_bound(row, confidence=0.95, low=0.0, high=1.0)


@pytest.mark.parametrize("bound", ["betting", "empirical_bernstein", "hoeffding"])
def test_bound_grows_as_delta_shrinks_and_shrinks_as_n_grows(bound):
    x = np.random.default_rng(2).beta(0.3, 3.0, 400)
    by_delta = [
        upper_bound(x[:100], confidence=1 - d, bound=bound, value_range=(0, 1)).upper_bound
        for d in (0.2, 0.1, 0.05, 0.01, 0.001)
    ]
    assert by_delta == sorted(by_delta) and len(set(by_delta)) == len(by_delta)
    constant = [  # the same value n times: nothing but n changes
        upper_bound(np.full(n, 0.05), confidence=0.95, bound=bound, value_range=(0, 1)).upper_bound
        for n in (10, 30, 100, 400)
    ]
    assert constant == sorted(constant, reverse=True) and len(set(constant)) == len(constant)


# Clopper-Pearson takes 0/1 outcomes only: it is checked at x0 = 0 alone.
_FLOOR_CASES = [
    (bound, x0)
    for bound in ("betting", "empirical_bernstein", "hoeffding", "clopper_pearson")
    for x0 in (0.0, 0.05, 0.5)
    if bound != "clopper_pearson" or x0 == 0.0
]


@pytest.mark.parametrize(("bound", "x0"), _FLOOR_CASES)
@pytest.mark.parametrize("n", [10, 30, 100])
def test_no_valid_bound_goes_below_the_two_point_floor_on_a_constant_sample(bound, n, x0):
    # A necessary condition for validity, exact and deterministic: n copies of x0 are drawn with
    # probability (1 - e)^n from (1 - e) * point(x0) + e * point(1), whose mean is x0 + e (1 - x0).
    # For e = 1 - delta^(1/n) that probability is delta, so any smaller e forces a valid bound above
    # x0 + e (1 - x0). Clopper-Pearson meets the floor exactly at x0 = 0; the betting bound with
    # bets of 1 / (1 - m) would meet it everywhere (truncation c < 1 keeps it above).
    delta = 0.05
    floor = x0 + (1 - x0) * (1 - delta ** (1 / n))
    value = upper_bound(np.full(n, x0), confidence=1 - delta, bound=bound, value_range=(0, 1))
    assert value.upper_bound >= floor - 1e-12
    if bound == "clopper_pearson":
        assert value.upper_bound == pytest.approx(floor, rel=1e-9)


def test_betting_truncation_near_one_approaches_the_floor():
    # Why the n_s = 30 power gap is not the implementation's: the floor above binds every valid
    # bound, and the betting bound sits just above it once the bets may approach all-in.
    n, delta, x0 = 30, 0.05, 0.05
    floor = x0 + (1 - x0) * (1 - delta ** (1 / n))
    values = [
        betting_upper_bound(np.full(n, x0), confidence=1 - delta, low=0, high=1, truncation=c)
        for c in (0.5, 0.75, 0.9, 0.99, 0.9999)
    ]
    assert values == sorted(values, reverse=True)
    assert floor < values[-1] < floor + 2e-3
