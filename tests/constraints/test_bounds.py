"""HC-RLHF bounds: agreement with direct scipy computations, and coverage in simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from safealign.constraints.bounds import mean_plus_k_std, pessimism_k, upper_bound
from safealign.errors import ConfigError, DataError

FAST = settings(max_examples=10, deadline=None, derandomize=True)
TRIALS = 2000


def _coverage_floor(confidence: float, trials: int = TRIALS) -> float:
    """Promised rate minus 3.5 binomial standard errors: a correct bound fails this ~2e-4 of runs."""
    return confidence - 3.5 * math.sqrt(confidence * (1 - confidence) / trials)


@pytest.mark.parametrize(
    ("n_opt", "n_safety", "confidence", "c1", "c2"),
    [
        (100, 50, 0.95, 1.0, 1.0),
        (2, 2, 0.9, 1.0, 1.0),
        (1000, 400, 0.9, 4.0, 2.0),
        (30, 3000, 0.99, 0.0, 1.0),
    ],
)
def test_pessimism_k_matches_scipy(
    n_opt: int, n_safety: int, confidence: float, c1: float, c2: float
) -> None:
    expected = c1 * stats.t.ppf(confidence, n_opt - 1) / math.sqrt(n_opt) + c2 * stats.t.ppf(
        confidence, n_safety - 1
    ) / math.sqrt(n_safety)
    assert pessimism_k(n_opt, n_safety, confidence=confidence, c1=c1, c2=c2) == pytest.approx(
        expected, rel=1e-12
    )


def test_pessimism_k_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        pessimism_k(1, 0, confidence=0.95, c1=-1.0)
    assert len(info.value.problems) == 3


@FAST
@given(
    values=st.lists(st.floats(-10, 10), min_size=2, max_size=40),
    confidence=st.floats(0.5, 0.999),
)
def test_student_t_matches_scipy(values: list[float], confidence: float) -> None:
    sample = np.asarray(values)
    n = sample.size
    expected = sample.mean() + stats.t.ppf(confidence, n - 1) * sample.std(ddof=1) / math.sqrt(n)
    result = upper_bound(sample, confidence=confidence, bound="student_t")
    assert result.upper_bound == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert (result.bound, result.n, result.confidence) == ("student_t", n, confidence)
    assert result.std == pytest.approx(sample.std(ddof=1), abs=1e-12)


def test_hoeffding_matches_formula_and_accepts_tensors() -> None:
    sample = torch.tensor([0.1, 0.5, 0.9, 0.3, -0.2], dtype=torch.float64)
    result = upper_bound(sample, confidence=0.9, bound="hoeffding", value_range=(-1.0, 1.0))
    expected = float(sample.mean()) + 2.0 * math.sqrt(math.log(1 / 0.1) / (2 * 5))
    assert result.upper_bound == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("successes", "n"), [(0, 20), (3, 50), (49, 50), (50, 50)])
def test_clopper_pearson_matches_beta_quantile(successes: int, n: int) -> None:
    sample = np.r_[np.ones(successes), np.zeros(n - successes)]
    result = upper_bound(sample, confidence=0.95, bound="clopper_pearson")
    expected = 1.0 if successes == n else stats.beta.ppf(0.95, successes + 1, n - successes)
    assert result.upper_bound == pytest.approx(expected, rel=1e-12)
    # Same as the upper end of scipy's two-sided exact interval at twice the tail probability.
    if successes < n:
        two_sided = stats.binomtest(successes, n).proportion_ci(
            confidence_level=0.90, method="exact"
        )
        assert result.upper_bound == pytest.approx(two_sided.high, rel=1e-9)


def test_student_t_covers_the_true_mean_at_the_promised_rate() -> None:
    rng = np.random.default_rng(0)
    confidence, true_mean = 0.9, 1.5
    data = rng.normal(true_mean, 2.0, size=(TRIALS, 15))
    covered = np.mean(
        [
            upper_bound(row, confidence=confidence, bound="student_t").upper_bound >= true_mean
            for row in data
        ]
    )
    assert covered >= _coverage_floor(confidence)
    # For normal data the t bound is exact, so coverage is not far above the promise either.
    assert covered <= confidence + 3.5 * math.sqrt(confidence * (1 - confidence) / TRIALS)


def test_hoeffding_covers_bounded_data() -> None:
    rng = np.random.default_rng(1)
    confidence, true_mean = 0.8, 0.3
    data = rng.beta(0.6, 1.4, size=(TRIALS, 10))  # mean 0.6 / 2.0 = 0.3, skewed, in [0, 1]
    covered = np.mean(
        [
            upper_bound(
                row, confidence=confidence, bound="hoeffding", value_range=(0, 1)
            ).upper_bound
            >= true_mean
            for row in data
        ]
    )
    assert covered >= _coverage_floor(confidence)


def test_clopper_pearson_covers_a_rare_unsafe_rate() -> None:
    rng = np.random.default_rng(2)
    confidence, rate = 0.95, 0.05
    data = (rng.random((TRIALS, 40)) < rate).astype(float)
    covered = np.mean(
        [
            upper_bound(row, confidence=confidence, bound="clopper_pearson").upper_bound >= rate
            for row in data
        ]
    )
    assert covered >= _coverage_floor(confidence)


def test_mean_plus_k_std_uses_bessel() -> None:
    values = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert mean_plus_k_std(values, k=2.0) == pytest.approx(7 / 3 + 2 * np.std([1, 2, 4], ddof=1))


@pytest.mark.parametrize(
    ("values", "kwargs", "error", "message"),
    [
        ([1.0], {}, DataError, "at least 2 values"),
        ([], {"bound": "hoeffding", "value_range": (0, 1)}, DataError, "at least 2 values"),
        ([[1.0, 2.0]], {}, DataError, "one-dimensional"),
        ([1.0, math.nan], {}, DataError, "NaN"),
        ([0.1, 0.2], {"confidence": 1.0}, ConfigError, "confidence"),
        ([0.1, 0.2], {"bound": "bernstein"}, ConfigError, "bound must be one of"),
        ([0.1, 0.2], {"bound": "hoeffding"}, ConfigError, "needs value_range"),
        ([0.1, 0.2], {"bound": "hoeffding", "value_range": (1, 0)}, ConfigError, "low < high"),
        (
            [0.1, 1.5],
            {"bound": "hoeffding", "value_range": (0, 1)},
            DataError,
            r"value 1.5 at index 1",
        ),
        ([0.1, 1.5], {"value_range": (0, 1)}, DataError, "outside the declared"),
        ([0.0, 0.5], {"bound": "clopper_pearson"}, DataError, "0/1 outcomes"),
        (
            [0.0, 1.0],
            {"bound": "clopper_pearson", "value_range": (0, 2)},
            ConfigError,
            "value_range",
        ),
    ],
)
def test_invalid_inputs_raise_value_errors(
    values: list, kwargs: dict, error: type, message: str
) -> None:
    kwargs = {"confidence": 0.95, "bound": "student_t", **kwargs}
    with pytest.raises(error, match=message) as info:
        upper_bound(values, **kwargs)
    assert isinstance(info.value, ValueError)
