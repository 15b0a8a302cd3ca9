"""Betting and empirical-Bernstein bounds: valid for any distribution on the declared range."""

from __future__ import annotations

import numpy as np
import pytest

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
