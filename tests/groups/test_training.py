"""Group reward models for MaxMin: normalisation, reporting, EM recovery and its privacy charge."""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import permutations

import pytest
import torch
from scipy import stats

from safealign.config import (
    BudgetConfig,
    GroupsConfig,
    ModelConfig,
    PrivacyConfig,
    SyntheticConfig,
    TrainConfig,
)
from safealign.constraints.group_rewards import (
    group_report,
    normalize_group_rewards,
)
from safealign.constraints.maxmin_solver import solve_maxmin
from safealign.constraints.solvers import policy_objective, solve_unconstrained
from safealign.data.records import PairDataset
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError, DataError
from safealign.groups.em import (
    COIN_FLIP,
    assign_users,
    holdout_split,
    pooled_initial_assignment,
)
from safealign.groups.training import train_group_reward_models
from safealign.privacy.accounting import Mechanism, compute_epsilon
from safealign.privacy.release import budget_target
from safealign.privacy.training import train_reward_model


@pytest.fixture(autouse=True)
def _one_thread():
    # Two shared cores: one torch thread per test process avoids oversubscription.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rewards(seed: int, groups: int = 3, n: int = 12, k: int = 6):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(groups, n, k, generator=gen, dtype=torch.float64)
    log_p = torch.log_softmax(torch.randn(n, k, generator=gen, dtype=torch.float64), -1)
    return rewards, log_p


# ---- normalisation ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_centred_rewards_have_zero_mean_under_p(seed: int) -> None:
    rewards, log_p = _rewards(seed)
    centred = normalize_group_rewards(rewards, mode="reference", log_p=log_p)
    torch.testing.assert_close(
        (log_p.exp() * centred).sum(-1), torch.zeros(3, 12, dtype=torch.float64), rtol=0, atol=1e-12
    )
    # Bradley-Terry rewards are defined up to a per-prompt shift: normalisation removes it.
    shifted = rewards + torch.randn(3, 12, 1, dtype=torch.float64)
    torch.testing.assert_close(normalize_group_rewards(shifted, log_p=log_p), centred)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_regret_matches_closed_form_and_each_groups_own_optimum_is_zero(beta: float) -> None:
    rewards, log_p = _rewards(2)
    regret = normalize_group_rewards(rewards, mode="regret", beta=beta, log_p=log_p)
    log_z = torch.log((log_p.exp()[None] * torch.exp(rewards / beta)).sum(-1, keepdim=True))
    torch.testing.assert_close(regret, rewards - beta * log_z)
    assert bool(
        ((log_p.exp() * regret).sum(-1) <= 1e-12).all()
    )  # Jensen: E_p[r] <= β log E_p e^{r/β}
    for r in regret:
        q = solve_unconstrained(r, beta=beta, log_p=log_p)
        assert policy_objective(q, r, beta=beta, log_p=log_p) == pytest.approx(0.0, abs=1e-10)


def test_normalisation_rejects_bad_arguments() -> None:
    rewards, _ = _rewards(0)
    with pytest.raises(ConfigError, match="beta"):
        normalize_group_rewards(rewards, mode="regret")
    with pytest.raises(ConfigError, match="reference"):
        normalize_group_rewards(rewards, mode="zscore")
    with pytest.raises(DataError, match=r"\[G, N, K\]"):
        normalize_group_rewards(rewards[0])


@pytest.mark.parametrize("mode", ["reference", "regret"])
def test_maxmin_with_one_group_equals_the_plain_objective(mode: str) -> None:
    rewards, log_p = _rewards(3, groups=1)
    normalised = normalize_group_rewards(rewards, mode=mode, beta=0.5, log_p=log_p)
    result = solve_maxmin(normalised, beta=0.5, log_p=log_p)
    plain = solve_unconstrained(normalised[0], beta=0.5, log_p=log_p)
    torch.testing.assert_close(result.q, plain, rtol=0, atol=1e-12)
    # Reference centring is a per-prompt shift: the plain policy on the raw reward is the same.
    torch.testing.assert_close(plain, solve_unconstrained(rewards[0], beta=0.5, log_p=log_p))
    assert result.objective == pytest.approx(
        policy_objective(plain, normalised[0], beta=0.5, log_p=log_p), rel=1e-10
    )


def test_normalised_maxmin_ignores_each_groups_arbitrary_offset() -> None:
    rewards, log_p = _rewards(4, groups=2)
    offset = torch.tensor([0.0, 5.0], dtype=torch.float64)[:, None, None]  # group 1 looks better
    raw = solve_maxmin(rewards + offset, beta=0.3, log_p=log_p)
    assert raw.weights.tolist() == [1.0, 0.0]  # without normalisation the offset decides
    fair = solve_maxmin(
        normalize_group_rewards(rewards + offset, log_p=log_p), beta=0.3, log_p=log_p
    )
    same = solve_maxmin(normalize_group_rewards(rewards, log_p=log_p), beta=0.3, log_p=log_p)
    torch.testing.assert_close(fair.q, same.q)
    assert 0.0 < float(fair.weights[0]) < 1.0


# ---- reporting ----------------------------------------------------------------------------------
def test_group_report_matches_a_direct_computation() -> None:
    rewards, log_p = _rewards(5, groups=2, n=30)
    rewards[1] -= 0.5  # group b is worse off
    result = solve_maxmin(rewards, beta=1.0, log_p=log_p)
    report = group_report(result, rewards, names=["a", "b"], sizes={"a": 10, "b": 1})
    for g, name in enumerate(["a", "b"]):
        values = (result.q * rewards[g]).sum(-1).numpy()
        mean = values.mean()
        half = stats.t.ppf(0.975, 29) * values.std(ddof=1) / math.sqrt(30)
        entry = report[name]
        assert entry["reward"] == pytest.approx(mean, rel=1e-12)
        assert entry["reward"] == pytest.approx(float(result.group_rewards[g]), rel=1e-9)
        assert entry["reward_ci"] == pytest.approx([mean - half, mean + half], rel=1e-12)
        assert set(entry) == {"size", "reward", "reward_ci"}
    assert report["a"]["size"] == 10 and report["b"]["size"] == 1
    assert report["worst_group"] == min("ab", key=lambda n: report[n]["reward"])


def test_a_prompt_asked_by_two_groups_counts_for_both() -> None:
    rewards, log_p = _rewards(4, groups=2, n=20)
    q = solve_unconstrained(rewards.mean(0), beta=1.0, log_p=log_p)
    owners = ["a"] * 8 + [("a", "b")] * 5 + ["b"] * 6 + [None]
    report = group_report(q, rewards, names=["a", "b"], prompt_groups=owners, confidence=0.9)
    for g, (name, rows) in enumerate((("a", range(13)), ("b", range(8, 19)))):
        reward = (q[list(rows)] * rewards[g, list(rows)]).sum(-1)
        half = stats.t.ppf(0.95, len(rows) - 1) * float(reward.std()) / math.sqrt(len(rows))
        assert report[name]["size"] == len(rows)
        assert report[name]["reward"] == pytest.approx(float(reward.mean()), rel=1e-12)
        assert report[name]["reward_ci"] == pytest.approx(
            [float(reward.mean()) - half, float(reward.mean()) + half], rel=1e-12
        )


# ---- training -----------------------------------------------------------------------------------
def _world(users: int, pairs_per_user: int) -> SyntheticWorld:
    config = SyntheticConfig(
        num_prompts=60,
        num_users=users,
        pairs_per_user=pairs_per_user,
        group_weights={"a": 1.0, "b": 1.0},
        style_preference={"a": 2.0, "b": -2.0},
    )
    return SyntheticWorld(config, seed=0)


def _config(target_epsilon: float | None, epochs: int = 6) -> ModelConfig:
    return ModelConfig(
        backbone="tiny",
        lora=None,
        train=TrainConfig(epochs=epochs, batch_size=3, lr=1e-2, max_length=48),
        privacy=PrivacyConfig(target_epsilon=target_epsilon, target_delta=1e-3, accountant="rdp"),
    )


def test_em_recovers_conflicting_groups() -> None:
    world = _world(users=12, pairs_per_user=20)
    groups = GroupsConfig(mode="em", num_groups=2, em_max_iters=5)  # em_init pooled
    result = train_group_reward_models(
        world.pairs, groups=groups, model_config=_config(None), seed=0
    )
    assignment = assign_users(world.pairs, result.models)
    truth = dict(zip(world.user_ids, world.user_groups, strict=True))
    accuracy = max(
        sum(truth[u] == labels[c] for u, c in assignment.items())
        for labels in permutations(["a", "b"])
    ) / len(truth)
    assert accuracy >= 0.9
    assert result.converged and 1 <= result.iterations <= 5
    assert sum(result.assignment_counts.values()) == 12
    # The pooled start model (trained here, on every user), then both clusters per iteration.
    assert result.receipts[0].num_units == 12
    assert len(result.receipts) == 1 + 2 * result.iterations
    assert result.mechanisms == ()  # explicitly non-private: nothing to charge
    assert all(r.privacy_unit == "user" for r in result.receipts)  # forced to user level


def _user_level(config: ModelConfig) -> ModelConfig:
    return replace(config, privacy=replace(config.privacy, privacy_unit="user"))


@pytest.mark.parametrize(
    ("start", "count_noise"),
    [("random", None), ("random", 3.0), ("given pooled", None), ("pooled trained here", 3.0)],
)
def test_every_em_iteration_is_charged(tmp_path, monkeypatch, count_noise, start) -> None:
    # Calibration is tested in privacy/; a fixed σ keeps this test fast.
    monkeypatch.setattr("safealign.privacy.plan._calibrate", lambda **_: 0.8)
    pairs = _world(users=6, pairs_per_user=4).pairs
    budget = budget_target(
        BudgetConfig(epsilon=1e3, delta=1e-3, ledger=str(tmp_path / "ledger.sqlite")),
        pairs, privacy_unit="user", dataset_id=None,
    )  # fmt: skip
    config = _config(5.0, epochs=1)
    pooled = None  # a released pooled model is charged by whoever trained it, not by EM
    if start == "given pooled":
        pooled = train_reward_model(
            pairs, config=_user_level(config), seed=9, progress=False,
            commitment_key=budget.ledger.key,  # committed under the ledger EM charges
        )  # fmt: skip
    init = "random" if start == "random" else "pooled"
    result = train_group_reward_models(
        pairs, groups=GroupsConfig(mode="em", num_groups=2, em_max_iters=2, em_init=init),
        model_config=config, seed=1, budget=budget, stop_early=False,
        count_noise=count_noise, pooled=pooled,
    )  # fmt: skip
    assert result.iterations == 2
    # One shared schedule: each iteration's M-step is one mechanism over all users (q = 3/6).
    steps = {r.steps for r in result.receipts}
    training = Mechanism(0.8, 0.5, steps.pop())
    assert not steps and {(r.noise_multiplier, r.sample_rate) for r in result.receipts} == {
        (0.8, 0.5)
    }
    per_iteration = (training,) if count_noise is None else (training, Mechanism(3.0, 1.0, 1))
    # Starting from a given pooled model spends exactly what a random start does: the start is
    # post-processing of that release. Without one, EM trains it first: one more release.
    first = [("group reward models, EM start (pooled model)", "committed", (training,))]
    first = first if start == "pooled trained here" else []
    assert result.mechanisms == tuple(m for _, _, ms in first for m in ms) + per_iteration * 2
    # What is published composes to exactly the ledger's charge, count noise included.
    assert tuple(r.mechanism for r in result.release_receipts) == result.mechanisms
    summary = budget.ledger.dataset_spend(pairs.fingerprint, accountant="rdp")
    assert [(r.label, r.status, r.actual) for r in summary.releases] == [
        *first,
        ("group reward models, EM iteration 1", "committed", per_iteration),
        ("group reward models, EM iteration 2", "committed", per_iteration),
    ]
    assert summary.epsilon == pytest.approx(
        compute_epsilon(list(result.mechanisms), target_delta=1e-3, accountant="rdp").epsilon
    )
    assert result.release_ids == tuple(r.id for r in summary.releases)


class _TrueReward:
    """Scores with one group's true reward: a stand-in pooled model (the start only scores)."""

    def __init__(self, world: SyntheticWorld, group: str) -> None:
        self.world, self.group = world, group

    def score(self, prompts, responses) -> torch.Tensor:
        return torch.tensor(self.world.true_reward(list(prompts), list(responses), self.group))


def _mean_log_likelihood(pairs: PairDataset, model, user: str) -> float:
    own = [p for p in pairs if p.user_id == user]
    prompts = [p.prompt for p in own]
    margin = model.score(prompts, [p.chosen for p in own]) - model.score(
        prompts, [p.rejected for p in own]
    )
    return float(torch.nn.functional.logsigmoid(margin.double()).mean())


def test_pooled_start_sends_users_explained_worse_than_a_coin_flip_out_of_cluster_0() -> None:
    world = _world(users=12, pairs_per_user=20)
    pooled = _TrueReward(world, "a")  # the majority's view; group b prefers the opposite style
    truth = dict(zip(world.user_ids, world.user_groups, strict=True))
    poor = {u for u in world.user_ids if _mean_log_likelihood(world.pairs, pooled, u) < COIN_FLIP}
    assert poor and all(truth[u] == "b" for u in poor)  # the rule finds the other group
    for k in (1, 2, 3):
        start = pooled_initial_assignment(world.pairs, pooled, num_groups=k, seed=0)
        assert set(start) == set(world.user_ids)
        assert {u for u, c in start.items() if c != 0} == (poor if k > 1 else set())
    # K > 2: each poorly explained user draws one of clusters 1..K-1.
    assert set(pooled_initial_assignment(world.pairs, pooled, num_groups=3, seed=0).values()) == {
        0,
        1,
        2,
    }


def test_pooled_start_is_a_function_of_each_users_own_pairs() -> None:
    world = _world(users=10, pairs_per_user=10)
    pairs, pooled = world.pairs, _TrueReward(world, "a")
    base = pooled_initial_assignment(pairs, pooled, num_groups=3, seed=4)
    # A user the pooled model explains, whose labels are then all flipped: they must move...
    victim = next(u for u, g in zip(world.user_ids, world.user_groups, strict=True) if g == "a")
    assert base[victim] == 0
    flipped = PairDataset(
        tuple(
            replace(p, chosen=p.rejected, rejected=p.chosen) if p.user_id == victim else p
            for p in pairs
        )
    )
    dropped = PairDataset(tuple(p for p in pairs if p.user_id != victim))
    after = pooled_initial_assignment(flipped, pooled, num_groups=3, seed=4)
    without = pooled_initial_assignment(dropped, pooled, num_groups=3, seed=4)
    assert after[victim] in (1, 2)
    # ...and no one else may: changing or removing one user's data moves no other user.
    others = {u: c for u, c in base.items() if u != victim}
    assert {u: c for u, c in after.items() if u != victim} == others
    assert without == others


def test_homogeneous_population_keeps_one_cluster_and_maxmin_still_runs() -> None:
    config = SyntheticConfig(
        num_prompts=60, num_users=8, pairs_per_user=20,
        group_weights={"a": 1.0}, style_preference={"a": 2.0},
    )  # fmt: skip
    world = SyntheticWorld(config, seed=0)
    model = replace(_config(None), backbone="features")
    pooled = train_reward_model(world.pairs, config=model, seed=3, progress=False)
    result = train_group_reward_models(
        world.pairs, groups=GroupsConfig(mode="em", num_groups=2, em_max_iters=3),
        model_config=model, seed=0, pooled=pooled, stop_early=True,  # opted in
    )  # fmt: skip
    assert result.assignment_counts == {"cluster-0": 8, "cluster-1": 0}
    assert result.converged and result.iterations == 1
    assert result.models[1] is pooled.model  # never trained: holds the pooled model
    assert len(result.receipts) == 1  # cluster 0 only; the given pooled model is not EM's
    prompts = list(world.prompts[:4])
    cands = world.sample_candidates(prompts, num_candidates=4, seed=1)
    rewards = normalize_group_rewards(result.score_candidates(prompts, cands.responses))
    maxmin = solve_maxmin(rewards, beta=0.5)
    report = group_report(maxmin, rewards, names=result.names, sizes=result.assignment_counts)
    assert report["cluster-1"]["size"] == 0 and torch.isfinite(maxmin.q).all()


def test_pooled_start_refuses_a_model_outside_the_guarantee(monkeypatch) -> None:
    monkeypatch.setattr("safealign.privacy.plan._calibrate", lambda **_: 0.8)
    pairs = _world(users=4, pairs_per_user=2).pairs
    config = _config(5.0, epochs=1)
    pooled = train_reward_model(pairs, config=_user_level(config), seed=0, progress=False)
    groups = GroupsConfig(mode="em", em_init="pooled")

    def start_from(receipt_changes: dict, data: PairDataset = pairs) -> None:
        given = replace(pooled, receipt=replace(pooled.receipt, **receipt_changes))
        train_group_reward_models(data, groups=groups, model_config=config, seed=0, pooled=given)

    with pytest.raises(DataError, match="same pairs"):
        start_from({}, PairDataset(pairs.pairs[:-1]))
    with pytest.raises(ConfigError, match="pair-level DP"):
        start_from({"privacy_unit": "pair"})
    with pytest.raises(ConfigError, match="NON-PRIVATE"):
        start_from({"private": False})
    with pytest.raises(ConfigError, match="not a reward model"):
        start_from({"kind": "cost"})


def test_em_runs_every_iteration_by_default_and_publishes_one_receipt_per_mechanism() -> None:
    # A homogeneous population converges after one iteration; by default EM still runs all
    # em_max_iters (the number of releases must not depend on the data).
    config = SyntheticConfig(
        num_prompts=60, num_users=8, pairs_per_user=20,
        group_weights={"a": 1.0}, style_preference={"a": 2.0},
    )  # fmt: skip
    world = SyntheticWorld(config, seed=0)
    model = replace(_config(None), backbone="features")
    pooled = train_reward_model(world.pairs, config=model, seed=3, progress=False)
    result = train_group_reward_models(
        world.pairs, groups=GroupsConfig(mode="em", num_groups=2, em_max_iters=3),
        model_config=model, seed=0, pooled=pooled,
    )  # fmt: skip
    assert result.converged and result.iterations == 3
    assert len(result.release_receipts) == 3  # non-private: one NON-PRIVATE receipt per release
    for receipt in result.release_receipts:
        assert not receipt.private and receipt.num_units is None and receipt.metrics == {}
        assert receipt.dataset_fingerprint == pooled.receipt.dataset_fingerprint  # all users


def test_given_groups_publish_no_subset_sizes_hashes_or_metrics(monkeypatch) -> None:
    monkeypatch.setattr("safealign.privacy.plan._calibrate", lambda **_: 0.8)
    pairs = _world(users=4, pairs_per_user=3).pairs
    result = train_group_reward_models(
        pairs, groups=GroupsConfig(mode="given"), model_config=_config(5.0, epochs=1), seed=0,
        eval_pairs=pairs,
    )  # fmt: skip
    subsets = {PairDataset(tuple(p for p in pairs if p.group == g)).fingerprint for g in ("a", "b")}
    (published,) = result.release_receipts  # one mechanism: the groups compose in parallel
    assert published.mechanism == result.mechanisms[0]
    assert published.num_units is None and published.num_pairs is None
    assert published.metrics == {}
    text = repr(published.to_dict())
    assert not any(fp in text for fp in subsets | {pairs.fingerprint})
    # The internal receipts (never written) are per group, each committed, never hashed plainly.
    assert not any(fp in repr([r.to_dict() for r in result.receipts]) for fp in subsets)


def test_given_groups_compose_in_parallel(monkeypatch) -> None:
    monkeypatch.setattr("safealign.privacy.plan._calibrate", lambda **_: 0.8)
    pairs = _world(users=4, pairs_per_user=3).pairs
    result = train_group_reward_models(
        pairs, groups=GroupsConfig(mode="given"), model_config=_config(5.0, epochs=1), seed=0
    )
    assert result.names == ("a", "b") and len(result.models) == 2
    assert len(result.mechanisms) == 1  # disjoint groups: one mechanism, ε = max over groups
    assert result.assignment_counts == {"a": 6, "b": 6}  # pair-level units
    scores = result.score_candidates([pairs[0].prompt], [[pairs[0].chosen, pairs[0].rejected]])
    assert scores.shape == (2, 1, 2)


def test_holdout_split_alternates_each_users_pairs() -> None:
    pairs = _world(users=3, pairs_per_user=5).pairs
    fit, held_out = holdout_split(pairs)
    assert sorted(fit.pairs + held_out.pairs, key=pairs.pairs.index) == list(pairs.pairs)
    for user in pairs.user_ids:
        own = [p for p in pairs if p.user_id == user]
        assert [p for p in fit if p.user_id == user] == own[0::2]
        assert [p for p in held_out if p.user_id == user] == own[1::2]


def test_refuses_what_it_cannot_do_privately() -> None:
    pairs = _world(users=4, pairs_per_user=2).pairs
    with pytest.raises(ConfigError, match="mode"):
        train_group_reward_models(pairs, groups=GroupsConfig(), model_config=_config(None), seed=0)
    anonymous = PairDataset(tuple(replace(p, user_id=None) for p in pairs))
    with pytest.raises(DataError, match="user_id"):
        train_group_reward_models(
            anonymous, groups=GroupsConfig(mode="em"), model_config=_config(None), seed=0
        )
    other = "b" if pairs[0].group == "a" else "a"
    moved = PairDataset((*pairs.pairs, replace(pairs[0], group=other)))  # one user, two groups
    user_level = replace(
        _config(None), privacy=PrivacyConfig(target_epsilon=None, privacy_unit="user")
    )
    with pytest.raises(DataError, match="several groups"):
        train_group_reward_models(
            moved, groups=GroupsConfig(mode="given"), model_config=user_level, seed=0
        )
