"""Best-of-K over a language model end to end through ``safealign run``: the deployed policy is
the base LM (``tiny-gpt2``, untrained) plus the pessimistic resampler; the certificate is
computed from K of the LM's own samples per safety prompt, resampled as recorded, and
``safealign generate`` samples the same artefact.

One run (module fixture) serves every test; attacks work on copies of it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from safealign.cli import main
from safealign.config import load_config
from safealign.constraints.align import normalized_groups, score_candidates
from safealign.constraints.group_bounds import group_rows, safety_prompt_groups
from safealign.constraints.hc_rlhf import metric_range
from safealign.constraints.tilting import metric_costs
from safealign.errors import ConfigError, DataError, IsolationError
from safealign.models.policy_artifact import LMBestOfKPolicy, tree_sha256
from safealign.run import Workspace, unseal_safety_split
from safealign.run.certification import certify
from safealign.run.lm_best_of_k import deploy
from tests._inventory import unclassified_run_files
from tests.run.test_lm_run import CONFIG, LM

BEST_OF_K = [*LM, "policy.method=best_of_k"]
PROMPTS = "How can I bake a loaf of bread?\nTell me how to change a flat tire?\n"


def _overrides(out: Path, *extra: str) -> list[str]:
    return [*BEST_OF_K, f"budget.ledger={out.parent / 'ledger.sqlite'}", *extra]


@pytest.fixture(scope="module")
def bok_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bok") / "run"
    assert main(["run", CONFIG, "--out", str(out), *_overrides(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


@pytest.mark.integration
def test_policy_json_and_certificate_record_the_deployed_artefact(bok_run):
    policy = json.loads((bok_run / "policy.json").read_text())["policy"]
    certificate = json.loads((bok_run / "certificate.json").read_text())
    assert certificate["sampler_settings"] == policy  # the certificate is about this artefact
    assert policy["policy"] == "causal_lm_best_of_k" and policy["num_candidates"] == 3
    assert policy["base_model"]["name"] == "tiny-gpt2"
    assert policy["base_model"]["sha256"] == tree_sha256(bok_run / policy["base_model"]["dir"])
    assert policy["generation"] == {"max_new_tokens": 12, "temperature": 0.9, "top_p": 0.95}
    assert policy["beta"] == 0.1 and policy["lambda"] >= 0
    models = policy["scoring_models"]
    assert set(models) == {"cost", "group:majority", "group:minority"}  # lm_world: given groups
    assert all(m["sha256"] == tree_sha256(bok_run / m["dir"]) for m in models.values())
    assert set(policy["group_weights"]) == {"majority", "minority"}
    assert not (bok_run / "policy" / "adapter_model.safetensors").exists()  # no training
    report = json.loads((bok_run / "report.json").read_text())
    assert report["safety"]["sampler_settings"] == policy
    key = str(bok_run / "keys" / "public.pem")
    assert main(["audit", "verify", str(bok_run / "report.json"), "--public-key", key]) == 0


@pytest.mark.integration
def test_the_certificate_reproduces_from_the_recorded_seeds(bok_run):
    """K LM samples per sealed safety prompt with the recorded seed, scored by the recorded
    models, resampled with the recorded seed: exactly the certificate's per-prompt values."""
    config = load_config(CONFIG, _overrides(bok_run))
    certificate = json.loads((bok_run / "certificate.json").read_text())
    policy = LMBestOfKPolicy.from_settings(certificate["sampler_settings"])
    pairs = unseal_safety_split(Workspace(config, bok_run).splits.safety)
    prompts = list(pairs.prompts)
    deployed = deploy(bok_run, policy, batch_size=config.policy.sampler.batch_size)
    scored = score_candidates(deployed.candidates(prompts, seed=policy.seed), deployed.scorers)
    generator = torch.Generator().manual_seed(policy.resample_seed)
    picks = deployed.tilted.sample(scored.rewards, scored.costs, generator=generator)
    costs = scored.costs[torch.arange(len(prompts)), picks]
    values = metric_costs(costs, config.safety.metric, cost_range=metric_range(config.safety))
    assert torch.allclose(values, torch.tensor(certificate["values"], dtype=torch.float64))
    # Per-group bounds on the same picks, each group's regret against its constrained optimum
    # (its own λ_g, recorded in policy.json), on the group's own safety prompts.
    lambdas = json.loads((bok_run / "policy.json").read_text())["groups"]["cost_lambdas"]
    scorers = dataclasses.replace(deployed.scorers, group_cost_lambdas=lambdas)
    normalized = normalized_groups(scored, scorers, beta=policy.beta, safety=config.safety,
                                   mode=config.groups.normalize)  # fmt: skip
    prompt_groups, checked = safety_prompt_groups(pairs), 0
    for i, name in enumerate(scorers.group_rewards):
        block = certificate["groups"]["groups"][name]
        rows = group_rows(prompt_groups, name)
        assert block["n"] == len(rows)
        if len(rows) >= 2:  # fewer: no bound, and a reason (the tiny world's minority)
            picked = normalized[i][torch.arange(len(prompts)), picks][rows]
            assert block["reward_mean"] == pytest.approx(float(picked.mean()), rel=1e-9)
            checked += 1
    assert checked >= 1


@pytest.mark.integration
def test_generate_samples_the_certified_best_of_k_policy_reproducibly(bok_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    first, again = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for target in (first, again):
        assert (
            main(["generate", str(bok_run), "--prompts", str(prompts), "--out", str(target)]) == 0
        )
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS.splitlines()
    assert all(r["sampler"]["num_candidates"] == 3 for r in rows)
    assert again.read_text() == first.read_text()


@pytest.mark.integration
def test_a_changed_scoring_model_is_refused_by_certify_and_generate(bok_run, tmp_path, capsys):
    """Attack: swap the cost model's weights after alignment. Best-of-K deploys the LM with its
    scoring models, so other models are another policy: no new test and no generation."""
    out = _copy(bok_run, tmp_path)
    head = next((out / "cost" / "model").rglob("*.safetensors"))
    data = bytearray(head.read_bytes())
    data[-1] ^= 1
    head.write_bytes(bytes(data))
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    assert main(["generate", str(out), "--prompts", str(prompts)]) == 2
    assert "cost scoring model's files changed since alignment" in capsys.readouterr().err
    (out / "certificate.json").unlink()  # a new test of the changed files: refused before the log
    config = load_config(CONFIG, _overrides(bok_run))
    with pytest.raises(DataError, match="changed since alignment"):
        certify(Workspace(config, out))


@pytest.mark.integration
def test_a_missing_scoring_model_is_refused_by_generate(bok_run, tmp_path, capsys):
    out = _copy(bok_run, tmp_path)
    shutil.rmtree(out / "groups" / "group-0")
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    assert main(["generate", str(out), "--prompts", str(prompts)]) == 2
    assert "scoring model directory is missing" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("num_candidates", 2, ConfigError, "policy.json's num_candidates is 2"),
        ("seed", 1, ConfigError, "policy.json's seed is 1"),
        ("resample_seed", 1, ConfigError, "policy.json's resample_seed is 1"),
        ("lambda", 5.0, IsolationError, "already been tested"),  # step 1's output: the log counts
    ],
)
def test_an_edited_policy_is_refused_by_generate_and_certify(
    bok_run, tmp_path, capsys, field, value, error, message
):
    """Attack: edit policy.json's K, seeds or λ (shopping for a pass, or deploying another
    resampler under the old certificate). Generation finds no certificate of that policy;
    certification refuses a policy the config did not align, and the log a second test."""
    out = _copy(bok_run, tmp_path)
    path = out / "policy.json"
    obj = json.loads(path.read_text())
    obj["policy"][field] = value
    path.write_text(json.dumps(obj))
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    assert main(["generate", str(out), "--prompts", str(prompts)]) == 2
    assert "no passing certificate of this policy" in capsys.readouterr().err
    config = load_config(CONFIG, _overrides(bok_run))
    with pytest.raises(error, match=message):
        certify(Workspace(config, out))


@pytest.mark.integration
def test_every_file_of_a_best_of_k_run_is_classified_by_the_release_inventory(bok_run):
    assert unclassified_run_files(bok_run) == []


def test_labelled_certification_of_best_of_k_over_an_lm_is_refused_at_load_time():
    with pytest.raises(ConfigError, match="labelled certification of best-of-K over an LM"):
        load_config(None, ["policy.model=tiny-gpt2", "safety.labels.size=10"])


def test_align_on_a_candidates_file_is_refused_for_best_of_k_over_an_lm(tmp_path, capsys):
    candidates = tmp_path / "c.jsonl"
    candidates.write_text('{"prompt": "a", "responses": ["b", "c"]}\n')
    out = tmp_path / "run"
    code = main(["align", CONFIG, "--out", str(out), "--candidates", str(candidates),
                 *_overrides(out)])  # fmt: skip
    assert code == 2
    assert "drop --candidates" in capsys.readouterr().err
    assert not (tmp_path / "ledger.sqlite").exists()


@pytest.mark.integration
def test_the_prompt_expectation_unit_certifies_best_of_k_over_an_lm(tmp_path):
    """Given the prompt, the LM's K fresh samples are i.i.d., so each safety prompt's exact
    expected metric under the resampler is a valid unit, as for the reference sampler's."""
    out = tmp_path / "run"
    extra = ["safety.unit=prompt_expectation", "groups.mode=none"]
    assert main(["run", CONFIG, "--out", str(out), *_overrides(out, *extra)]) == 0
    certificate = json.loads((out / "certificate.json").read_text())
    assert certificate["sampler_settings"]["policy"] == "causal_lm_best_of_k"
    assert any("exact expected metric" in a for a in certificate["assumptions"])
    assert certificate["sampler_settings"]["scoring_models"].keys() == {"cost", "reward"}
