"""HC-RLHF: the tilted policy, candidate selection, the safety test, and its validity in simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from safealign.config import SafetyConfig, SyntheticConfig
from safealign.constraints.bounds import pessimism_k, upper_bound
from safealign.constraints.hc_rlhf import (
    Certificate,
    certify,
    certify_samples,
    write_certificate,
)
from safealign.constraints.selection import select_candidate_policy
from safealign.constraints.solvers import solve_constrained
from safealign.constraints.tilting import TiltedPolicy, best_of_k_sampler, metric_costs
from safealign.data.records import PairDataset, PreferencePair
from safealign.data.splits import SealedDataset
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError, DataError, IsolationError

BETA = 0.1
# The HC-RLHF paper's test on the raw cost score: opt-in and approximate now (the default bounds
# the predicted unsafe rate by betting); these tests check its arithmetic and plumbing.
RAW_T = {"metric": "expected_cost", "bound": "student_t"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: with several threads on a loaded machine, torch's workers
    spin-wait for cores and the simulation takes 10x longer; one thread, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(SyntheticConfig(num_prompts=600, num_users=5, pairs_per_user=2), seed=3)


@pytest.fixture(scope="module")
def population(world: SyntheticWorld) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards, costs)``, ``[2400, 16]``: every world prompt with 4 independent candidate sets.

    The simulation treats this finite set of rows (a prompt with its K reference candidates) as
    the population: trials draw rows i.i.d. from it, so a policy's true expected cost is exactly
    its mean over all rows, with no Monte Carlo error in the truth.
    """
    sets = [world.sample_candidates(world.prompts, num_candidates=16, seed=s) for s in range(4)]
    rewards = torch.from_numpy(np.concatenate([s.population_reward for s in sets]))
    costs = torch.from_numpy(np.concatenate([s.true_cost for s in sets]))
    return rewards, costs


def _sealed(world: SyntheticWorld, n: int) -> SealedDataset:
    pairs = tuple(PreferencePair(prompt=p, chosen="a", rejected="b") for p in world.prompts[:n])
    return SealedDataset(PairDataset(pairs, name="test:safety"))


def _scorer(world: SyntheticWorld, seed: int):
    def score(prompts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        cands = world.sample_candidates(prompts, num_candidates=16, seed=seed)
        return cands.population_reward, cands.true_cost

    return score


# --- the tilted policy ----------------------------------------------------------------------


def test_tilted_policy_reproduces_the_solver_and_reapplies(population) -> None:
    rewards, costs = population[0][:300], population[1][:300]
    solved = solve_constrained(rewards, costs, beta=BETA, thresholds=0.0)
    policy = TiltedPolicy(beta=BETA, lambda_=float(solved.lambdas[0]), num_candidates=16)
    torch.testing.assert_close(policy.probabilities(rewards, costs), solved.q, atol=1e-12, rtol=0)
    # On fresh candidates it is the same closed form: softmax((r - lambda c) / beta).
    fresh_r, fresh_c = population[0][300:400], population[1][300:400]
    expected = torch.softmax((fresh_r - policy.lambda_ * fresh_c) / BETA, dim=-1)
    torch.testing.assert_close(policy.probabilities(fresh_r, fresh_c), expected)


def test_tilted_policy_samples_its_probabilities() -> None:
    rewards = torch.tensor([[0.0, 0.1, 0.3, -0.2]]).repeat(40_000, 1)
    costs = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(40_000, 1)
    policy = TiltedPolicy(beta=0.2, lambda_=0.15, num_candidates=4)
    picks = policy.sample(rewards, costs, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(picks, minlength=4).double() / picks.numel()
    q = policy.probabilities(rewards[:1], costs[:1])[0]
    assert float((freq - q).abs().max()) < 4 * math.sqrt(0.25 / picks.numel())


def test_tilted_policy_records_and_enforces_its_settings() -> None:
    policy = TiltedPolicy(
        beta=0.5,
        lambda_=2.0,
        num_candidates=3,
        metric="unsafe_rate",
        reference_sampler={"temperature": 0.7, "top_p": 0.9},
        seed=11,
    )
    settings = json.loads(json.dumps(policy.sampler_settings()))
    assert settings["beta"] == 0.5 and settings["lambda"] == 2.0
    assert settings["num_candidates"] == 3 and settings["seed"] == 11
    assert settings["reference_sampler"] == {"temperature": 0.7, "top_p": 0.9}
    # unsafe_rate tilts by 1[c > 0]: two unsafe candidates of different cost weigh the same.
    q = policy.probabilities(torch.zeros(1, 3), torch.tensor([[-1.0, 0.5, 5.0]]))
    assert float(q[0, 1]) == pytest.approx(float(q[0, 2]))
    assert float(q[0, 0]) == pytest.approx(1 / (1 + 2 * math.exp(-4.0)))
    with pytest.raises(DataError, match="K=3"):
        policy.probabilities(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ConfigError) as info:
        TiltedPolicy(beta=0.0, lambda_=-1.0, num_candidates=0)
    assert len(info.value.problems) == 3


# --- step 1: candidate selection ------------------------------------------------------------


def test_selection_takes_lambda_zero_when_already_safe(population) -> None:
    rewards, costs = population[0][:200], population[1][:200]
    result = select_candidate_policy(
        rewards, costs, beta=BETA, safety=SafetyConfig(cost_threshold=5.0, **RAW_T), n_safety=100
    )
    assert result.feasible and result.lambda_ == 0.0
    assert result.selection_bound <= 5.0


def test_selection_is_the_smallest_lambda_meeting_the_pessimistic_bound(population) -> None:
    rewards, costs = population[0][:200], population[1][:200]
    safety = SafetyConfig(cost_threshold=0.0, confidence=0.9, c1=1.0, c2=2.0, **RAW_T)
    result = select_candidate_policy(rewards, costs, beta=BETA, safety=safety, n_safety=150)
    k = pessimism_k(200, 150, confidence=0.9, c1=1.0, c2=2.0)
    assert result.feasible and result.pessimism_k == pytest.approx(k)
    assert result.selection_bound == pytest.approx(0.0, abs=1e-8)

    def bound(lam: float) -> float:
        per_prompt = TiltedPolicy(beta=BETA, lambda_=lam, num_candidates=16).expectation(
            costs, rewards, costs
        )
        return float(per_prompt.mean() + k * per_prompt.std(correction=1))

    assert bound(result.lambda_) <= 1e-8
    assert bound(0.99 * result.lambda_) > 0.0
    plain = select_candidate_policy(
        rewards, costs, beta=BETA, safety=safety, n_safety=150, method="no_pessimism"
    )
    assert plain.mean_cost == pytest.approx(0.0, abs=1e-8) and plain.lambda_ < result.lambda_
    assert plain.pessimism_k == 0.0 and plain.requires_safety_test


def test_infeasible_selection_is_a_result_not_an_exception(population) -> None:
    rewards, costs = population[0][:200], population[1][:200]
    for method in ("hc_rlhf", "lagrangian_no_test"):
        result = select_candidate_policy(
            rewards,
            costs,
            beta=BETA,
            safety=SafetyConfig(cost_threshold=-3.5, **RAW_T),
            n_safety=100,
            method=method,
        )
        assert not result.feasible and result.policy is None and result.lambda_ is None
        assert "threshold" in result.reason


def test_unsafe_rate_selection_bounds_the_rate(population) -> None:
    rewards, costs = population[0][:300], population[1][:300]
    safety = SafetyConfig(metric="unsafe_rate", cost_threshold=0.05, bound="clopper_pearson")
    result = select_candidate_policy(rewards, costs, beta=BETA, safety=safety, n_safety=200)
    rate = result.policy.expectation((costs > 0).double(), rewards, costs)
    assert result.policy.metric == "unsafe_rate"
    assert float(rate.mean()) == pytest.approx(result.mean_cost)
    assert result.selection_bound <= 0.05 + 1e-9


# --- step 2: the safety test ----------------------------------------------------------------


@pytest.mark.parametrize(("confidence", "tau"), [(0.9, 0.0), (0.95, 0.4), (0.99, 0.2)])
def test_certificate_arithmetic_matches_scipy(confidence: float, tau: float) -> None:
    costs = np.random.default_rng(0).normal(-0.1, 1.0, size=57)
    safety = SafetyConfig(cost_threshold=tau, confidence=confidence, **RAW_T)
    cert = certify_samples(
        costs, safety=safety, sampler_settings={"k": 16}, safety_fingerprint="abc"
    )
    n = costs.size
    expected = costs.mean() + stats.t.ppf(confidence, n - 1) * costs.std(ddof=1) / math.sqrt(n)
    assert cert.upper_bound == pytest.approx(expected, rel=1e-12)
    assert (cert.n, cert.mean, cert.std) == (
        n,
        pytest.approx(costs.mean()),
        pytest.approx(costs.std(ddof=1)),
    )
    assert cert.passed == bool(expected <= tau)
    assert cert.result == ("certified" if expected <= tau else "NSF")
    assert any("t approximation" in a for a in cert.assumptions)


def test_hoeffding_and_clopper_pearson_certificates() -> None:
    costs = np.array([-3.0, -3.0, 1.0, 6.0] * 50)
    safety = SafetyConfig(
        metric="expected_cost", cost_threshold=3.0, bound="hoeffding", cost_range=(-3.0, 9.0)
    )
    cert = certify_samples(costs, safety=safety, sampler_settings={}, safety_fingerprint=None)
    assert cert.upper_bound == pytest.approx(
        costs.mean() + 12.0 * math.sqrt(math.log(1 / 0.05) / (2 * costs.size))
    )
    assert cert.value_range == (-3.0, 9.0) and any("[-3.0, 9.0]" in a for a in cert.assumptions)
    rate = SafetyConfig(metric="unsafe_rate", cost_threshold=0.6, bound="clopper_pearson")
    cert = certify_samples(costs, safety=rate, sampler_settings={}, safety_fingerprint=None)
    unsafe = int((costs > 0).sum())
    expected = stats.beta.ppf(0.95, unsafe + 1, costs.size - unsafe)
    assert cert.mean == pytest.approx(0.5) and cert.upper_bound == pytest.approx(expected)
    assert cert.passed


def test_nsf_is_a_result_and_the_certificate_is_json(tmp_path) -> None:
    safety = SafetyConfig(cost_threshold=0.1, confidence=0.95)
    cert = certify_samples(
        [0.5, 1.0, -0.2, 0.3], safety=safety, sampler_settings={"x": 1}, safety_fingerprint="f"
    )
    assert isinstance(cert, Certificate) and not cert.passed and cert.result == "NSF"
    path = write_certificate(cert, tmp_path / "certificate.json")
    assert json.loads(path.read_text()) == cert.to_dict()
    assert cert.to_dict()["sampler_settings"] == {"x": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


class _CountingSeal(SealedDataset):
    def __init__(self, dataset: PairDataset) -> None:
        super().__init__(dataset)
        self.purposes: list[str] = []

    def unseal(self, *, purpose: str) -> PairDataset:
        self.purposes.append(purpose)
        return super().unseal(purpose=purpose)


def test_isolation_guard(world: SyntheticWorld) -> None:
    sealed = _sealed(world, 30)
    for purpose in ("train", "select", "certify ", "CERTIFY", "eval"):
        with pytest.raises(IsolationError):
            sealed.unseal(purpose=purpose)
    with pytest.raises(IsolationError):
        list(sealed)
    with pytest.raises(IsolationError):
        sealed[0]
    # Only a sealed split is unsealed for the test (safealign.run's one unseal function).
    from safealign.run import unseal_safety_split

    plain = PairDataset(tuple(sealed.unseal(purpose="certify")))
    with pytest.raises(IsolationError, match="SealedDataset"):
        unseal_safety_split(plain)
    counting = _CountingSeal(plain)
    assert unseal_safety_split(counting) == plain and counting.purposes == ["certify"]


def test_certify_samples_once_with_the_deployment_settings(world) -> None:
    dataset = _sealed(world, 120).unseal(purpose="certify")
    policy = TiltedPolicy(
        beta=BETA,
        lambda_=3.0,
        num_candidates=16,
        reference_sampler={"sampler": "reference"},
        seed=5,
    )
    seen: list[tuple[str, ...]] = []

    def score(prompts: tuple[str, ...]):
        seen.append(prompts)
        return _scorer(world, 9)(prompts)

    safety = SafetyConfig(cost_threshold=0.0, confidence=0.9, **RAW_T)
    cert = certify(policy, dataset, best_of_k_sampler(score), safety=safety)
    assert seen == [dataset.prompts]
    assert cert.n == 120 and cert.source == "policy"
    assert cert.sampler_settings == policy.sampler_settings()
    assert cert.safety_fingerprint == dataset.fingerprint
    # The same draw by hand: K fresh candidates, one pick from q_lambda, its cost.
    r, c = _scorer(world, 9)(seen[0])
    picks = policy.sample(r, c, generator=torch.Generator().manual_seed(5))
    by_hand = certify_samples(
        c[np.arange(120), picks.numpy()],
        safety=safety,
        sampler_settings={},
        safety_fingerprint=None,
    )
    assert cert.upper_bound == pytest.approx(by_hand.upper_bound, rel=1e-12)
    # A misconfigured bound is rejected before anything is sampled.
    with pytest.raises(ConfigError):
        certify(
            policy, dataset, best_of_k_sampler(score), safety=SafetyConfig(bound="clopper_pearson")
        )
    assert seen == [dataset.prompts]


def test_certify_rejects_a_sampler_that_skips_prompts(world) -> None:
    policy = TiltedPolicy(beta=BETA, lambda_=0.0, num_candidates=16, seed=0)
    with pytest.raises(DataError, match="one response per prompt"):
        certify(
            policy,
            _sealed(world, 20).unseal(purpose="certify"),
            lambda _p, prompts: np.zeros(len(prompts) - 1),
            safety=SafetyConfig(),
        )


def _grouped_scorer(world: SyntheticWorld, seed: int):
    """Population reward, true cost and each group's reward centred on the candidates' mean."""

    def score(prompts: tuple[str, ...]):
        cands = world.sample_candidates(prompts, num_candidates=16, seed=seed)
        groups = {
            g: torch.from_numpy(r - r.mean(-1, keepdims=True))
            for g, r in cands.true_rewards.items()
        }
        return cands.population_reward, cands.true_cost, None, groups

    return score


def test_certify_with_groups_bounds_each_group_and_leaves_the_population_test_alone(world) -> None:
    # Prompts 0-29 asked by majority users, 20-39 by minority users: 20-29 count for both.
    prompts = world.prompts[:40]
    pairs = [PreferencePair(p, "a", "b", group="majority") for p in prompts[:30]]
    pairs += [PreferencePair(p, "c", "d", group="minority") for p in prompts[20:]]
    sealed = PairDataset(tuple(pairs), name="test:safety")  # the unsealed safety pairs
    policy = TiltedPolicy(beta=BETA, lambda_=2.0, num_candidates=16, seed=4)
    safety = SafetyConfig(cost_threshold=0.0, confidence=0.9, group_coverage="individual", **RAW_T)
    plain = certify(policy, sealed, best_of_k_sampler(_scorer(world, 9)), safety=safety)
    grouped = certify(
        policy,
        sealed,
        best_of_k_sampler(_grouped_scorer(world, 9)),
        safety=safety,
        group_prompts="own",
        reward_normalization="reference",
    )
    as_dict = grouped.to_dict()
    block = as_dict.pop("groups")
    assert as_dict == plain.to_dict() and "groups" not in plain.to_dict()
    assert block["reward_normalization"] == "reference" and block["confidence"] == 0.9
    # By hand: the same picks, each group's bounds on the prompts its pairs carry.
    r, c, _, groups = _grouped_scorer(world, 9)(tuple(prompts))
    picks = policy.sample(r, c, generator=torch.Generator().manual_seed(4))
    rows = torch.arange(40)
    for name, own in (("majority", list(range(30))), ("minority", list(range(20, 40)))):
        cost = upper_bound(torch.from_numpy(c)[rows, picks][own], confidence=0.9, bound="student_t")
        reward = -upper_bound(
            -groups[name][rows, picks][own], confidence=0.9, bound="student_t"
        ).upper_bound
        entry = block["groups"][name]
        assert entry["n"] == len(own)
        assert entry["prompts"] == "own"
        assert entry["cost_upper_bound"] == pytest.approx(cost.upper_bound, rel=1e-12)
        assert entry["reward_lower_bound"] == pytest.approx(reward, rel=1e-12)
    # EM clusters are not released per user: every safety prompt counts for every cluster.
    everyone = certify(policy, sealed, best_of_k_sampler(_grouped_scorer(world, 9)), safety=safety)
    assert {e["n"] for e in everyone.groups["groups"].values()} == {40}
    assert everyone.groups["groups"]["majority"]["cost_upper_bound"] == pytest.approx(
        plain.upper_bound, rel=1e-12
    )
    with pytest.raises(ConfigError, match="group_prompts"):
        certify(
            policy, sealed, best_of_k_sampler(_scorer(world, 9)), safety=safety, group_prompts="x"
        )


# --- validity in simulation -----------------------------------------------------------------


def _released_cost(method: str, population, safety: SafetyConfig, rng, gen) -> float | None:
    """One trial: fresh i.i.d. rows for step 1 and the safety test; the released policy's true cost."""
    rewards, costs = population
    n_opt, n_safety = 200, 200
    rows = torch.from_numpy(rng.integers(0, rewards.shape[0], n_opt))
    result = select_candidate_policy(
        rewards[rows], costs[rows], beta=BETA, safety=safety, n_safety=n_safety, method=method
    )
    if not result.feasible:
        return None
    policy = result.policy
    if result.requires_safety_test:
        safe_rows = torch.from_numpy(rng.integers(0, rewards.shape[0], n_safety))
        r, c = rewards[safe_rows], costs[safe_rows]
        picked = c[torch.arange(n_safety), policy.sample(r, c, generator=gen)]
        settings = policy.sampler_settings()
        cert = certify_samples(
            picked, safety=safety, sampler_settings=settings, safety_fingerprint=None
        )
        if not cert.passed:
            return None
    return float(policy.expectation(metric_costs(costs, safety.metric), rewards, costs).mean())


def test_hc_rlhf_failure_rate_holds_in_simulation(population) -> None:
    """P(release a policy with true E[c] > tau) <= 1 - confidence (Chittepu et al. 2025, Thm. 1)."""
    tau, confidence, trials = 0.0, 0.9, 200
    safety = SafetyConfig(cost_threshold=tau, confidence=confidence, **RAW_T)
    # The constraint is tight: the unconstrained tilt is unsafe on the population.
    unconstrained = TiltedPolicy(beta=BETA, lambda_=0.0, num_candidates=16)
    assert float(unconstrained.expectation(population[1], *population).mean()) > tau + 0.5
    rng, gen = np.random.default_rng(2024), torch.Generator().manual_seed(2024)
    released = [_released_cost("hc_rlhf", population, safety, rng, gen) for _ in range(trials)]
    failures = sum(j is not None and j > tau for j in released)
    solutions = sum(j is not None for j in released)
    noise = 3.5 * math.sqrt(trials * confidence * (1 - confidence))
    assert failures <= trials * (1 - confidence) + noise
    assert solutions >= trials // 2  # the guarantee is not bought by never releasing anything
    # The test alone carries the guarantee: the plain-mean optimum (true cost ~ tau) is caught.
    tested = [_released_cost("no_pessimism", population, safety, rng, gen) for _ in range(100)]
    failures = sum(j is not None and j > tau for j in tested)
    assert failures <= 100 * (1 - confidence) + 3.5 * math.sqrt(100 * confidence * (1 - confidence))
    # The same simulation can fail: without the test, the plain-mean optimum overfits n_b prompts.
    no_test = [
        _released_cost("lagrangian_no_test", population, safety, rng, gen) for _ in range(60)
    ]
    assert sum(j > tau for j in no_test) > 60 * (1 - confidence) + 3.5 * math.sqrt(60 * 0.09)


def test_default_certificate_is_valid_and_releases_in_simulation(population) -> None:
    """The default (betting on the predicted unsafe rate, step 1 anticipating it) keeps the
    failure rate within 1 - confidence and still releases: measured 35 of 60 trials here (0
    failures), where the former t-based step 1 before the same betting test released 22 of 60."""
    tau, confidence, trials = 0.15, 0.9, 60
    safety = SafetyConfig(cost_threshold=tau, confidence=confidence)
    rng, gen = np.random.default_rng(7), torch.Generator().manual_seed(7)
    released = [_released_cost("hc_rlhf", population, safety, rng, gen) for _ in range(trials)]
    failures = sum(j is not None and j > tau for j in released)
    assert failures <= trials * (1 - confidence) + 3.5 * math.sqrt(trials * 0.09)
    assert sum(j is not None for j in released) >= 0.45 * trials


# --- the Rao-Blackwellised unit (safety.unit: prompt_expectation) -------------------------------


def test_prompt_expectation_unit_with_one_hot_weights_is_the_response_unit():
    from safealign.config import SafetyConfig
    from safealign.constraints.hc_rlhf import certify_samples

    rng = np.random.default_rng(0)
    costs = rng.normal(-2.0, 1.5, (40, 4))
    picks = rng.integers(0, 4, 40)
    weights = torch.zeros(40, 4, dtype=torch.float64)
    weights[torch.arange(40), torch.from_numpy(picks)] = 1.0
    safety = SafetyConfig(cost_threshold=0.5, unit="prompt_expectation")
    rb = certify_samples(
        torch.from_numpy(costs), safety=safety, sampler_settings={}, safety_fingerprint=None,
        weights=weights,
    )  # fmt: skip
    plain = certify_samples(
        costs[np.arange(40), picks], safety=SafetyConfig(cost_threshold=0.5),
        sampler_settings={}, safety_fingerprint=None,
    )  # fmt: skip
    assert rb.values == pytest.approx(plain.values, rel=1e-12)
    assert rb.upper_bound == pytest.approx(plain.upper_bound, rel=1e-9)
    assert "Rao-Blackwellised" in " ".join(rb.assumptions)


def test_prompt_expectation_unit_is_the_weighted_mean_of_the_metric_and_ignores_padding():
    from safealign.config import SafetyConfig
    from safealign.constraints.hc_rlhf import certify_samples

    costs = torch.tensor([[-3.0, 1.0, 5.0]] * 30, dtype=torch.float64)
    weights = torch.tensor([[0.5, 0.5, 0.0]] * 30, dtype=torch.float64)
    costs[:, 2] = float("nan")  # a padded slot of weight 0 may hold anything
    cert = certify_samples(
        costs, safety=SafetyConfig(cost_threshold=0.9, unit="prompt_expectation"),
        sampler_settings={}, safety_fingerprint=None, weights=weights,
    )  # fmt: skip
    expected = 0.5 * torch.sigmoid(torch.tensor(-3.0)) + 0.5 * torch.sigmoid(torch.tensor(1.0))
    assert cert.values == pytest.approx([float(expected)] * 30)


def test_prompt_expectation_unit_refuses_weights_that_are_not_probabilities():
    from safealign.config import SafetyConfig
    from safealign.constraints.hc_rlhf import certify_samples
    from safealign.errors import DataError

    costs = torch.zeros(30, 2, dtype=torch.float64)
    with pytest.raises(DataError, match="probabilities"):
        certify_samples(
            costs, safety=SafetyConfig(unit="prompt_expectation"), sampler_settings={},
            safety_fingerprint=None, weights=torch.full((30, 2), 0.7, dtype=torch.float64),
        )  # fmt: skip


def test_unsafe_rate_with_the_expectation_unit_is_bounded_by_betting_not_clopper_pearson():
    from safealign.config import SafetyConfig, safety_config_problems

    assert SafetyConfig(metric="unsafe_rate").resolved_bound == "clopper_pearson"
    rb = SafetyConfig(metric="unsafe_rate", unit="prompt_expectation")
    assert rb.resolved_bound == "betting" and not safety_config_problems(rb)
    cp = SafetyConfig(metric="unsafe_rate", unit="prompt_expectation", bound="clopper_pearson")
    assert any("0/1" in problem for problem in safety_config_problems(cp))


def test_best_of_k_sampler_expectation_unit_returns_the_policy_weights():
    from safealign.constraints.tilting import SafetySample, TiltedPolicy, best_of_k_sampler

    rng = np.random.default_rng(1)
    rewards, costs = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    policy = TiltedPolicy(beta=0.5, lambda_=1.0, num_candidates=4, seed=0)
    sample = best_of_k_sampler(lambda prompts: (rewards, costs), unit="prompt_expectation")
    out = sample(policy, tuple("abcde"))
    assert isinstance(out, SafetySample) and out.group_rewards == {}
    torch.testing.assert_close(out.weights, policy.probabilities(rewards, costs))
    torch.testing.assert_close(out.costs, torch.from_numpy(costs))


def test_certify_with_the_expectation_unit_bounds_each_prompts_expected_metric(world) -> None:
    # Through certify(): the safety pairs, the sampler in prompt_expectation mode, and groups.
    prompts = world.prompts[:40]
    pairs = [PreferencePair(p, "a", "b", group="majority") for p in prompts[:30]]
    pairs += [PreferencePair(p, "c", "d", group="minority") for p in prompts[20:]]
    sealed = PairDataset(tuple(pairs), name="test:safety")
    policy = TiltedPolicy(beta=BETA, lambda_=2.0, num_candidates=16, seed=4)
    safety = SafetyConfig(cost_threshold=0.5, unit="prompt_expectation")
    sampler = best_of_k_sampler(_grouped_scorer(world, 9), unit="prompt_expectation")
    cert = certify(policy, sealed, sampler, safety=safety, group_prompts="own")
    r, c, _, groups = _grouped_scorer(world, 9)(tuple(prompts))
    expected = policy.expectation(torch.sigmoid(torch.from_numpy(c)), r, c)
    assert cert.values == pytest.approx(expected.tolist(), rel=1e-12)
    direct = upper_bound(expected, confidence=0.95, bound="betting", value_range=(0.0, 1.0))
    assert cert.upper_bound == pytest.approx(direct.upper_bound, rel=1e-12)
    assert cert.passed == (direct.upper_bound <= 0.5)
    minority = policy.expectation(groups["minority"], r, c)[20:]
    entry = cert.groups["groups"]["minority"]
    assert entry["n"] == 20 and entry["reward_mean"] == pytest.approx(float(minority.mean()))
    # Without groups the sampler still returns every candidate with the weights.
    plain = certify(
        policy, sealed, best_of_k_sampler(_scorer(world, 9), unit="prompt_expectation"),
        safety=safety,
    )  # fmt: skip
    assert plain.values == cert.values and plain.groups is None
