"""Attacks on the default safety certificate (issue 13, findings 1, 2 and 5).

Each test fails on the former default (Student t on the raw expected cost) and passes now.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safealign.config import MIN_STUDENT_T_N, SafetyConfig, load_config
from safealign.constraints.hc_rlhf import certify_samples
from safealign.errors import ConfigError

SETTINGS = {"policy": "fixed"}

# A rare-catastrophe world of cost-model scores: 97% of responses are clearly safe (c = -4),
# 3% are catastrophic (c = +6). At n = 30, 40% of samples hold no catastrophe at all (0.97^30).
SAFE, CATASTROPHE, P_CATASTROPHE = -4.0, 6.0, 0.03


def _truth(metric: str) -> float:
    """The world's exact mean of each metric's per-response value."""
    per_value = {
        "expected_cost": lambda c: c,
        "predicted_unsafe_probability": lambda c: 1.0 / (1.0 + np.exp(-c)),
        "unsafe_rate": lambda c: float(c > 0),
    }[metric]
    return (1 - P_CATASTROPHE) * per_value(SAFE) + P_CATASTROPHE * per_value(CATASTROPHE)


def test_default_bound_covers_a_rare_catastrophe_world() -> None:
    """Fixed seed, 400 trials at n = 30, δ = 0.05: the default bound sits below the metric's
    true mean in at most 8% of trials (it is valid, so the expected rate is <= 5%; the former
    default, Student t on the raw cost, missed in ~40%: every catastrophe-free sample)."""
    safety = SafetyConfig()
    rng = np.random.default_rng(0)
    trials, misses = 400, 0
    for _ in range(trials):
        costs = np.where(rng.random(30) < P_CATASTROPHE, CATASTROPHE, SAFE)
        cert = certify_samples(
            costs, safety=safety, sampler_settings=SETTINGS, safety_fingerprint=None
        )
        misses += cert.upper_bound < _truth(cert.metric)
    assert misses / trials <= 0.08, f"the default bound missed {misses} of {trials} trials"


def test_default_certificate_names_a_bounded_quantity_and_a_valid_bound() -> None:
    costs = np.full(40, -3.0)
    cert = certify_samples(
        costs, safety=SafetyConfig(), sampler_settings=SETTINGS, safety_fingerprint=None
    )
    assert cert.metric == "predicted_unsafe_probability" and cert.bound == "betting"
    assert cert.approximate is False and cert.value_range == (0.0, 1.0)
    assert "predicted unsafe rate" in cert.quantity
    assert cert.values == pytest.approx(tuple(1 / (1 + np.exp(3.0)) for _ in range(40)))


def test_a_zero_variance_unsafe_rate_sample_does_not_pass_at_zero() -> None:
    """No unsafe response among 30: the exact bound is 1 - 0.05^(1/30) ≈ 0.095 > 0 (Student t's was 0)."""
    safety = SafetyConfig(metric="unsafe_rate", cost_threshold=0.0)
    cert = certify_samples(
        np.full(30, -1.0), safety=safety, sampler_settings=SETTINGS, safety_fingerprint=None
    )
    assert cert.bound == "clopper_pearson" and not cert.passed
    assert cert.upper_bound == pytest.approx(1 - 0.05 ** (1 / 30))


def test_student_t_is_refused_for_an_unsafe_rate() -> None:
    safety = SafetyConfig(metric="unsafe_rate", bound="student_t", cost_threshold=0.0)
    with pytest.raises(ConfigError, match="student_t is refused for 0/1 data"):
        certify_samples(
            np.full(40, -1.0), safety=safety, sampler_settings=SETTINGS, safety_fingerprint=None
        )
    with pytest.raises(ConfigError, match="student_t is refused for 0/1 data"):
        load_config(
            None,
            ["safety.metric=unsafe_rate", "safety.bound=student_t", "safety.cost_threshold=0.0"],
        )


def test_student_t_is_refused_below_the_minimum_n_and_marked_approximate_above() -> None:
    safety = SafetyConfig(metric="expected_cost", bound="student_t", cost_threshold=0.0)
    small = torch.linspace(-2.0, -1.0, MIN_STUDENT_T_N - 1)
    with pytest.raises(ConfigError, match=f"refused on {MIN_STUDENT_T_N - 1} safety prompts"):
        certify_samples(small, safety=safety, sampler_settings=SETTINGS, safety_fingerprint=None)
    enough = torch.linspace(-2.0, -1.0, MIN_STUDENT_T_N)
    cert = certify_samples(
        enough, safety=safety, sampler_settings=SETTINGS, safety_fingerprint=None
    )
    assert cert.approximate is True and cert.bound == "student_t"


def _default_report(tmp_path) -> dict:
    from safealign.config import Config
    from tests.audits.test_report import make_report

    costs = np.random.default_rng(1).normal(-2.5, 1.5, size=60)
    cert = certify_samples(
        costs, safety=SafetyConfig(), sampler_settings=SETTINGS, safety_fingerprint=None
    )
    config = Config().to_dict()
    return make_report(tmp_path, certificate=cert.to_dict(), config=config, groups=None)


def test_the_verifier_recomputes_the_default_bound_from_the_recorded_values(tmp_path) -> None:
    """The former safety-bound check had no closed form for betting, so any betting bound passed."""
    from safealign.audits.checks import check_report
    from safealign.audits.summary import plain_summary

    report = _default_report(tmp_path)
    assert check_report(report) == []
    assert "betting bound, valid for any distribution on [0, 1]" in report["summary"]["safety"]
    assert "predicted unsafe rate" in report["summary"]["safety"]
    forgeries = {
        "bound-lowered": lambda s: s.update(upper_bound=s["mean"]),
        "value-dropped": lambda s: s.update(values=s["values"][1:]),
        "approximate-claimed-exact": lambda s: s.update(bound="student_t", approximate=False),
    }
    for name, forge in forgeries.items():
        forged = _default_report(tmp_path / name)
        forge(forged["safety"])
        forged["summary"] = plain_summary(forged).to_dict()  # a thorough forger rewrites it too
        failed = {p.check for p in check_report(forged)}
        assert "safety-bound" in failed, (name, failed)


def test_a_raw_cost_with_a_declared_range_is_bounded_clipped_and_says_so() -> None:
    safety = SafetyConfig(metric="expected_cost", cost_range=(-2.0, 2.0), cost_threshold=0.0)
    costs = np.array([-5.0, -1.0, 3.0, -2.5] * 10)
    cert = certify_samples(costs, safety=safety, sampler_settings=SETTINGS, safety_fingerprint=None)
    assert cert.bound == "betting" and cert.mean == pytest.approx(np.clip(costs, -2, 2).mean())
    assert "clipped to [-2.0, 2.0]" in cert.quantity and max(cert.values) == 2.0
    with pytest.raises(ConfigError, match="required by bound 'betting' with metric expected_cost"):
        certify_samples(
            costs,
            safety=SafetyConfig(metric="expected_cost"),
            sampler_settings=SETTINGS,
            safety_fingerprint=None,
        )
