"""Per-group bounds from the safety test's sample: the right prompts, the right bound, no raise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safealign.constraints.bounds import upper_bound
from safealign.constraints.group_bounds import (
    certify_group_samples,
    check_group_prompts,
    group_rows,
    safety_prompt_groups,
)
from safealign.data.records import PairDataset, PreferencePair
from safealign.errors import ConfigError, DataError

# 12 prompts: 0-4 group a only, 5-7 asked by users of both groups, 8-10 b only, 11 no group.
OWNERS = ["a"] * 5 + [{"a", "b"}] * 3 + ["b"] * 3 + [None]
STUDENT = {
    "metric": "expected_cost",
    "confidence": 0.9,
    "bound": "student_t",
    "value_range": None,
    "simultaneous": False,
}


def _sample(seed: int = 0, n: int = 12) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    costs = torch.randn(n, generator=generator, dtype=torch.float64)
    rewards = {g: torch.randn(n, generator=generator, dtype=torch.float64) for g in "ab"}
    return costs, rewards


def test_each_groups_bounds_are_the_bounds_of_its_own_prompts() -> None:
    costs, rewards = _sample()
    block = certify_group_samples(costs, rewards, prompt_groups=OWNERS, **STUDENT)
    expected_rows = {"a": [*range(5), 5, 6, 7], "b": [5, 6, 7, 8, 9, 10]}
    for name, rows in expected_rows.items():
        assert group_rows(OWNERS, name) == rows  # a prompt of both groups counts for both
        entry = block["groups"][name]
        cost = upper_bound(costs[rows], confidence=0.9, bound="student_t")
        reward = -upper_bound(-rewards[name][rows], confidence=0.9, bound="student_t").upper_bound
        assert entry["n"] == len(rows) and entry["prompts"] == "own" and entry["reason"] is None
        assert entry["cost_upper_bound"] == pytest.approx(cost.upper_bound, rel=1e-12)
        assert entry["cost_mean"] == pytest.approx(float(costs[rows].mean()), rel=1e-12)
        assert entry["reward_lower_bound"] == pytest.approx(reward, rel=1e-12)
        assert entry["reward_mean"] == pytest.approx(float(rewards[name][rows].mean()), rel=1e-12)
        assert entry["reward_lower_bound"] < entry["reward_mean"]
    assert block["simultaneous"] is False and "not simultaneously" in block["note"]
    assert block["confidence"] == 0.9 and block["reward_bound"] == "student_t"


def test_without_prompt_groups_every_prompt_counts_for_every_group() -> None:
    costs, rewards = _sample(1)
    block = certify_group_samples(costs, rewards, reward_normalization="regret", **STUDENT)
    assert block["reward_normalization"] == "regret"
    for name in "ab":
        entry = block["groups"][name]
        assert entry["n"] == 12 and entry["prompts"] == "all"
        assert entry["cost_upper_bound"] == pytest.approx(
            upper_bound(costs, confidence=0.9, bound="student_t").upper_bound, rel=1e-12
        )


def test_a_group_with_fewer_than_two_prompts_gets_nulls_and_a_reason() -> None:
    costs, rewards = _sample(2, n=4)
    rewards["c"] = torch.zeros(4, dtype=torch.float64)  # a group no safety prompt carries
    owners = ["a", "a", "b", None]
    block = certify_group_samples(costs, rewards, prompt_groups=owners, **STUDENT)
    assert block["groups"]["a"]["cost_upper_bound"] is not None
    for name, n in (("b", 1), ("c", 0)):
        entry = block["groups"][name]
        assert entry["n"] == n and "at least 2" in entry["reason"]
        assert entry["cost_upper_bound"] is None and entry["reward_lower_bound"] is None


def test_the_cost_bound_is_the_population_tests_and_rewards_fall_back_to_t() -> None:
    costs, rewards = _sample(3)
    block = certify_group_samples(
        costs,
        rewards,
        metric="unsafe_rate",
        confidence=0.9,
        bound="clopper_pearson",
        value_range=(0.0, 1.0),
        prompt_groups=OWNERS,
    )
    rows = group_rows(OWNERS, "b")
    unsafe = (costs[rows] > 0).double()
    # Simultaneous by default: 2 groups x 2 bounds, each at 1 - 0.1 / 4.
    assert block["simultaneous"] is True and block["per_bound_confidence"] == pytest.approx(0.975)
    exact = upper_bound(unsafe, confidence=0.975, bound="clopper_pearson").upper_bound
    assert block["groups"]["b"]["cost_upper_bound"] == pytest.approx(exact, rel=1e-12)
    assert block["cost_bound"] == "clopper_pearson" and block["reward_bound"] == "student_t"
    assert "student_t bound" in block["note"]
    t_bound = -upper_bound(-rewards["b"][rows], confidence=0.975, bound="student_t").upper_bound
    assert block["groups"]["b"]["reward_lower_bound"] == pytest.approx(t_bound, rel=1e-12)


def _all_cover(simultaneous: bool, rng: np.random.Generator) -> bool:
    """One trial: 3 groups, 40 prompts each; do all 6 bounds hold at once?"""
    costs = rng.beta(0.5, 8.0, size=120)  # skewed, in [0, 1], mean 0.5 / 8.5
    rewards = {g: torch.from_numpy(rng.normal(0.0, 1.0, size=120)) for g in "abc"}
    owners = ["a"] * 40 + ["b"] * 40 + ["c"] * 40
    block = certify_group_samples(
        torch.from_numpy(costs), rewards, metric="expected_cost", confidence=0.9, bound="betting",
        value_range=(0.0, 1.0), prompt_groups=owners, simultaneous=simultaneous,
    )  # fmt: skip
    return all(
        e["cost_upper_bound"] >= 0.5 / 8.5 and e["reward_lower_bound"] <= 0.0
        for e in block["groups"].values()
    )


def test_simultaneous_group_bounds_hold_together_and_individual_ones_do_not() -> None:
    """Fixed seed, 300 trials: all 6 bounds hold together in >= 87% (promise 90%) of trials when
    simultaneous (the default); each at 90% on its own, they hold together far less often
    (the t reward bound is exact for normal rewards: 0.9^3 ≈ 0.73 for the rewards alone)."""
    rng = np.random.default_rng(0)
    joint = np.mean([_all_cover(True, rng) for _ in range(300)])
    alone = np.mean([_all_cover(False, rng) for _ in range(300)])
    assert joint >= 0.87 and alone <= 0.8, (joint, alone)


def test_bad_inputs_are_refused() -> None:
    costs, rewards = _sample()
    with pytest.raises(DataError, match="prompt_groups has 3 entries for 12 prompts"):
        certify_group_samples(costs, rewards, prompt_groups=["a"] * 3, **STUDENT)
    with pytest.raises(DataError, match="group 'a'"):
        certify_group_samples(costs, {"a": rewards["a"][:5]}, **STUDENT)
    with pytest.raises(DataError, match="NaN"):
        certify_group_samples(costs, {"a": rewards["a"] / 0 * 0}, **STUDENT)
    with pytest.raises(ConfigError, match="own, all"):
        check_group_prompts("mine")


def test_safety_prompt_groups_are_the_groups_of_each_prompts_pairs() -> None:
    pairs = PairDataset(
        (
            PreferencePair("p1", "x", "y", user_id="u1", group="a"),
            PreferencePair("p2", "x", "y", user_id="u2", group="b"),
            PreferencePair("p1", "x", "z", user_id="u3", group="b"),
            PreferencePair("p3", "x", "y", user_id="u4"),
        )
    )
    assert safety_prompt_groups(pairs) == (
        frozenset({"a", "b"}),
        frozenset({"b"}),
        frozenset(),
    )
