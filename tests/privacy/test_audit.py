"""The one-run privacy audit (Steinke, Nasr & Jagielski 2023): the bound's arithmetic, and that the
audit separates a DP run from the same run with its noise switched off."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from safealign.config import load_config
from safealign.data.synthetic import SyntheticWorld
from safealign.privacy.audit import (
    audit_p_value,
    epsilon_lower_bound,
    make_canaries,
    prepare_audit,
    run_privacy_audit,
)


def test_p_value_without_delta_is_a_binomial_tail():
    q = 1 / (1 + math.exp(-1.0))
    assert audit_p_value(100, 50, 40, epsilon=1.0, target_delta=0.0) == pytest.approx(
        stats.binom.sf(39, 50, q)
    )


def test_all_correct_guesses_bound():
    # r correct out of r: the largest ε with p^r < 0.05, p = e^ε/(1+e^ε), ignoring δ.
    r = 100
    p = 0.05 ** (1 / r)
    expected = math.log(p / (1 - p))
    assert epsilon_lower_bound(1000, r, r, target_delta=0.0) == pytest.approx(expected, abs=1e-6)


def test_chance_level_guesses_give_zero_and_bound_is_monotone():
    assert epsilon_lower_bound(1000, 100, 50, target_delta=1e-5) == 0.0
    values = [epsilon_lower_bound(1000, 100, v, target_delta=1e-5) for v in range(60, 101, 5)]
    assert values == sorted(values) and values[-1] > 3


def test_delta_term_weakens_the_bound():
    assert epsilon_lower_bound(1000, 100, 90, target_delta=1e-3) < epsilon_lower_bound(
        1000, 100, 90, target_delta=0
    )


def test_canaries_are_deterministic_and_distinct():
    a, b = make_canaries(50, seed=1), make_canaries(50, seed=1)
    assert a == b and len({c.prompt for c in a}) == 50
    assert make_canaries(50, seed=2) != a


AUDIT = [
    "data.synthetic.num_users=4",
    "data.synthetic.pairs_per_user=10",
    "reward_model.lora=null",
    "reward_model.train.epochs=30",
    "reward_model.train.batch_size=16",
    "reward_model.train.lr=0.01",
    "reward_model.privacy.target_delta=1e-3",
    "budget.delta=1e-3",
    "cost_model.privacy.target_delta=1e-3",
    "reward_model.privacy.accountant=rdp",
    "reward_model.privacy.target_epsilon=1",
]


@pytest.mark.integration
def test_audit_separates_dp_from_noise_off():
    """One draw of the (secret, here repeatable: tests/conftest.py) sampling and noise. The gap
    depends on the draw: over five draws at these settings the noise-off run's ε_lower was
    1.30, 1.88, 1.37, 1.52 and 0.28 against the DP run's 0.33, 0, 0, 0 and 0.37 (with 100
    canaries the gaps were smaller), so the test fixes the draw instead of sampling it."""
    config = load_config(None, AUDIT)
    pairs = SyntheticWorld(config.data.synthetic, seed=0).pairs
    results = {}
    for noise_off in (False, True):
        setup = prepare_audit(
            pairs, config=config.reward_model, seed=0, num_canaries=200, noise_off=noise_off
        )
        results[noise_off] = run_privacy_audit(
            setup, config=config.reward_model, seed=0, guess_fraction=0.5, progress=False
        )
    dp, leaky = results[False], results[True]
    assert dp.epsilon is not None and dp.epsilon_lower <= dp.epsilon
    assert leaky.epsilon is None and leaky.noise_multiplier == 0.0
    assert leaky.epsilon_lower > dp.epsilon_lower + 0.5, (dp, leaky)
