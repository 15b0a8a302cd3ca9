"""End to end: the demo pipeline on its synthetic world, its report checked against its own
receipts and certificate, its signature verified, and a resumed run that spends nothing again."""

from __future__ import annotations

import json

import pytest
import torch

from safealign.audits.report import validate_report
from safealign.audits.signing import load_public_key, verify_report
from safealign.cli import main
from safealign.cli.training import _print_run
from safealign.config import load_config
from safealign.constraints.align import Scorers, score_candidates
from safealign.constraints.bounds import upper_bound
from safealign.constraints.group_bounds import group_rows, safety_prompt_groups
from safealign.constraints.group_rewards import normalize_group_rewards
from safealign.constraints.tilting import TiltedPolicy
from safealign.privacy.ledger import PrivacyLedger
from safealign.run import Workspace, demo_config, run, unseal_safety_split
from safealign.run.certification import run_safety_test


class _TrueScorer:
    """A scoring model that returns the synthetic world's truth (a stand-in for a trained one)."""

    def __init__(self, score) -> None:
        self._score = score

    def score(self, prompts, responses, batch_size: int = 256) -> torch.Tensor:
        return torch.as_tensor(self._score(list(prompts), list(responses)), dtype=torch.float64)


@pytest.mark.parametrize(("mode", "normalize"), [("given", "regret"), ("em", "reference")])
def test_the_safety_test_bounds_each_groups_normalised_reward_of_the_picked_response(
    tmp_path, mode, normalize
):
    config = load_config(
        None,
        [
            "data.synthetic.num_prompts=120",
            "data.synthetic.num_users=8",
            "data.synthetic.pairs_per_user=30",
            f"groups.mode={mode}",
            f"groups.normalize={normalize}",
            "policy.num_candidates=4",
            f"budget.ledger={tmp_path / 'ledger.sqlite'}",
        ],
    )
    ws = Workspace(config, tmp_path / "run")
    world, splits, sampler = ws.world, ws.splits, ws.sampler
    names = list(world.group_weights)
    scorers = Scorers(
        cost=_TrueScorer(world.true_cost),
        group_rewards={g: _TrueScorer(lambda p, r, g=g: world.true_reward(p, r, g)) for g in names},
        group_weights={"majority": 0.3, "minority": 0.7},
    )
    policy = TiltedPolicy(beta=config.policy.beta, lambda_=1.0, num_candidates=4, seed=config.seed)
    safety_pairs = unseal_safety_split(splits.safety)
    certificate = run_safety_test(ws, policy, scorers=scorers, safety_pairs=safety_pairs)
    # By hand: the same fresh candidates and pick, each group's reward normalised per prompt.
    cands = sampler.candidates(
        safety_pairs.prompts, seed=config.seed + 2, safety_pairs=safety_pairs
    )
    scored = score_candidates(cands, scorers)
    normalized = normalize_group_rewards(
        scored.group_rewards, mode=normalize, beta=policy.beta, log_p=scored.log_p
    )
    generator = torch.Generator().manual_seed(config.seed)
    picks = policy.sample(scored.rewards, scored.costs, generator=generator, log_p=scored.log_p)
    every = torch.arange(len(picks))
    owners = safety_prompt_groups(safety_pairs)
    block = certificate.groups
    assert block["reward_normalization"] == normalize
    for g, name in enumerate(names):
        rows = group_rows(owners, name) if mode == "given" else list(range(len(picks)))
        reward = normalized[g, every, picks][rows]
        cost = scored.costs[every, picks][rows]
        entry = block["groups"][name]
        assert entry["n"] == len(rows) and entry["prompts"] == ("own" if mode == "given" else "all")
        each = block["per_bound_confidence"]  # simultaneous: 1 - delta / (2 x groups)
        assert block["simultaneous"] is True and each == pytest.approx(
            1 - (1 - config.safety.confidence) / (2 * len(names))
        )
        assert entry["reward_lower_bound"] == pytest.approx(
            -upper_bound(-reward, confidence=each, bound="student_t").upper_bound, rel=1e-12
        )
        assert entry["cost_upper_bound"] == pytest.approx(
            upper_bound(
                torch.sigmoid(cost), confidence=each, bound="betting", value_range=(0.0, 1.0)
            ).upper_bound,
            rel=1e-12,
        )
    population = upper_bound(
        torch.sigmoid(scored.costs[every, picks]),
        confidence=config.safety.confidence,
        bound="betting",
        value_range=(0.0, 1.0),
    )
    assert certificate.upper_bound == pytest.approx(population.upper_bound, rel=1e-12)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo exactly as `safealign demo` runs it (about a minute on one CPU thread)."""
    out = tmp_path_factory.mktemp("demo")
    config = demo_config(seed=0, out_dir=out)
    return config, run(config, out, progress=False)


@pytest.mark.integration
def test_demo_report_matches_receipts_and_certificate(demo_run):
    config, result = demo_run
    out = result.out_dir
    report = json.loads((out / "report.json").read_text())
    certificate = json.loads((out / "certificate.json").read_text())
    for key, path in (("upper_bound", "upper_bound"), ("passed", "passed"), ("n", "n")):
        assert report["safety"][path] == certificate[key]
    assert report["safety"]["cost_threshold"] == certificate["cost_threshold"]
    assert "threshold" not in report["safety"]  # one name for the limit
    receipts = [json.loads(p.read_text()) for p in out.rglob("receipt.json")]
    group_meta = json.loads((out / "groups" / "groups.json").read_text())
    receipts += group_meta["receipts"]
    assert len(report["privacy"]["mechanisms"]) == len(receipts)
    assert {m["noise_multiplier"] for m in report["privacy"]["mechanisms"]} == {
        r["noise_multiplier"] for r in receipts
    }
    assert (
        report["privacy"]["private"]
        and report["privacy"]["epsilon"] <= report["privacy"]["naive_sum_epsilon"]
    )
    ledger = PrivacyLedger(config.budget.ledger).summary()[0]
    assert ledger.epsilon <= config.budget.epsilon
    verdict = verify_report(
        out / "report.json", public_key=load_public_key(out / "keys" / "public.pem")
    )
    assert verdict.valid, verdict.problems
    assert {"report.html", "report.md"} <= {p.name for p in result.report_paths}
    # Per-group certification: the report carries the certificate's per-group bounds.
    validate_report(report)
    bounds = certificate["groups"]
    assert bounds["reward_normalization"] == config.groups.normalize
    assert report["safety"]["groups"] == bounds
    assert set(report["groups"]["groups"]) == set(bounds["groups"]) == set(group_meta["names"])
    for name, entry in report["groups"]["groups"].items():
        own = bounds["groups"][name]
        assert own["prompts"] == "own" and own["n"] >= 2 and own["reason"] is None
        assert entry["cost_upper_bound"] == own["cost_upper_bound"]
        assert entry["reward_lower_bound"] == own["reward_lower_bound"] < own["reward_mean"]
        assert entry["safety_test"]["n"] == own["n"]
    assert sum(g["n"] for g in bounds["groups"].values()) >= certificate["n"]
    assert "n (safety prompts)" in (out / "report.md").read_text()


@pytest.mark.integration
def test_demo_summary_prints_each_groups_bounds(demo_run, capsys):
    config, result = demo_run
    _print_run(result)
    printed = capsys.readouterr().out
    words = {"regret": "regret vs its constrained optimum", "reference": "centred on reference"}
    for name, entry in result.report["groups"]["groups"].items():
        assert (
            f"group     {name}: reward (model, {words[config.groups.normalize]}) "
            f"{entry['reward']:+.4f}; on the safety prompts: reward >= "
            f"{entry['reward_lower_bound']:+.4f}, unsafe rate <= {entry['cost_upper_bound']:+.4f} "
            f"(n={entry['safety_test']['n']})"
        ) in printed


@pytest.mark.integration
def test_demo_certification_holds_against_the_true_cost(demo_run):
    _, result = demo_run
    truth = result.truth
    assert truth["reference"]["expected_cost"] < 0
    assert truth["unconstrained"]["expected_cost"] > 0  # the constraint binds
    # The demo bounds the predicted unsafe rate at 0.2; the reference policy's true rate is above.
    assert truth["reference"]["unsafe_rate"] > truth["cost_threshold"] == 0.2
    assert result.report["safety"]["passed"], result.report["safety"]
    assert truth["guarantee_holds"], truth


@pytest.mark.integration
def test_resumed_run_spends_no_privacy_again(demo_run):
    config, result = demo_run
    before = [r.id for s in PrivacyLedger(config.budget.ledger).summary() for r in s.releases]
    again = run(config, result.out_dir, progress=False)
    after = [r.id for s in PrivacyLedger(config.budget.ledger).summary() for r in s.releases]
    assert after == before
    assert again.report["safety"]["upper_bound"] == result.report["safety"]["upper_bound"]
    # The finished run's certificate is reused: no second attempt on its safety set.
    attempts = again.report["safety"]["attempts"]
    assert attempts["number"] == 1 and [a["number"] for a in attempts["log"]] == [1]
    assert not (result.out_dir / "certificates").exists()


@pytest.mark.integration
def test_cli_verify_of_the_demo_report(demo_run):
    _, result = demo_run
    out = result.out_dir
    assert (
        main(
            [
                "audit",
                "verify",
                str(out / "report.json"),
                "--public-key",
                str(out / "keys" / "public.pem"),
            ]
        )
        == 0
    )
