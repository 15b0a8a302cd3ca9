"""An LM policy end to end through ``safealign run``: tilt-and-distil into a LoRA adapter of
``tiny-gpt2``, the safety test of that adapter's own samples, and ``safealign generate``.

One run (module fixture, ~35 s on one CPU thread) serves every test; attacks work on copies.
The tests that use it, and the reinforce_lagrangian run, are marked ``integration``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from safealign.cli import main
from safealign.config import load_config
from safealign.constraints.hc_rlhf import metric_range
from safealign.constraints.tilting import metric_costs
from safealign.errors import ConfigError, DataError
from safealign.models.causal import generate
from safealign.models.policy_artifact import LMPolicy, read_sampler_settings
from safealign.models.scalar import load_scoring_model
from safealign.run import Workspace, unseal_safety_split
from safealign.run.certification import certify
from tests._inventory import unclassified_run_files
from tests._tiny_run import TINY_WORLD

#: The shipped example (world-sft) at the tiny world's size, with the built-in tiny-gpt2 as base.
CONFIG = str(Path(__file__).resolve().parents[2] / "examples" / "lm_world.yaml")

LM = [
    *TINY_WORLD,
    "policy.method=distill",
    "policy.model=tiny-gpt2",
    "policy.num_candidates=3",
    "policy.distill.rounds=1",
    "policy.distill.epochs=1",
    "policy.sampler.max_new_tokens=12",
    "policy.sampler.temperature=0.9",
    "policy.sampler.top_p=0.95",
    "policy.lora.r=2",
    "safety.cost_threshold=1",  # a random tiny LM's samples pass: the certificate is then known
]


def _overrides(out: Path, *extra: str) -> list[str]:
    return [*LM, f"budget.ledger={out.parent / 'ledger.sqlite'}", *extra]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "run"
    assert main(["run", CONFIG, "--out", str(out), *_overrides(out)]) == 0
    return out


@pytest.mark.integration
def test_the_adapter_loads_with_peft_and_generation_config_holds_the_certified_settings(lm_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig

    policy = json.loads((lm_run / "policy.json").read_text())["policy"]
    certificate = json.loads((lm_run / "certificate.json").read_text())
    assert certificate["sampler_settings"] == policy  # the certificate is about this artefact
    assert policy["base_model"]["name"] == "tiny-gpt2" and policy["adapter"]["dir"] == "policy"
    base = AutoModelForCausalLM.from_pretrained(lm_run / policy["base_model"]["dir"])
    model = PeftModel.from_pretrained(base, lm_run / "policy")
    assert any("lora_" in name for name, _ in model.named_parameters())
    gen = GenerationConfig.from_pretrained(lm_run / "policy")
    assert (gen.temperature, gen.top_p, gen.max_new_tokens, gen.top_k) == (0.9, 0.95, 12, 0)
    assert read_sampler_settings(lm_run / "policy").to_dict() == policy["generation"]


@pytest.mark.integration
def test_the_certificate_is_computed_from_the_adapters_own_samples(lm_run):
    """Re-sampling the saved adapter with the recorded settings and seed, and scoring with the
    cost model, gives exactly the certificate's per-prompt values."""
    from safealign.run.lm_certify import load_deployed

    config = load_config(CONFIG, _overrides(lm_run))
    certificate = json.loads((lm_run / "certificate.json").read_text())
    policy = LMPolicy.from_settings(certificate["sampler_settings"])
    ws = Workspace(config, lm_run)
    prompts = list(unseal_safety_split(ws.splits.safety).prompts)
    model, tokenizer = load_deployed(lm_run, policy)
    responses = generate(model, tokenizer, prompts, num_samples=1, seed=policy.seed,
                         **policy.sampler.to_dict())  # fmt: skip
    cost = load_scoring_model(lm_run / "cost" / "model")
    scores = cost.score(prompts, [r[0] for r in responses]).double()
    values = metric_costs(scores, config.safety.metric, cost_range=metric_range(config.safety))
    assert torch.allclose(values, torch.tensor(certificate["values"], dtype=torch.float64))
    assert certificate["n"] == len(prompts)


@pytest.mark.integration
def test_the_certificate_bounds_each_group_on_the_adapters_own_responses(lm_run):
    """With groups, the certificate's per-group block comes from the same responses as the test:
    their costs, and each group's reward normalised against K base-LM samples per prompt
    (recomputed here from the recorded seeds), on the group's own safety prompts."""
    from safealign.constraints.group_bounds import group_rows, safety_prompt_groups
    from safealign.run.lm_base import BaseModel, _derive, load_base
    from safealign.run.lm_certify import load_deployed, policy_dirs
    from safealign.run.lm_groups import base_normalized_group_rewards
    from safealign.run.models import load_scorers
    from safealign.run.policy_file import load_policy_file

    config = load_config(CONFIG, _overrides(lm_run))
    certificate = json.loads((lm_run / "certificate.json").read_text())
    groups = certificate["groups"]
    assert groups is not None and set(groups["groups"]) == {"majority", "minority"}
    assert groups["reward_normalization"] == config.groups.normalize
    policy = LMPolicy.from_settings(certificate["sampler_settings"])
    pairs = unseal_safety_split(Workspace(config, lm_run).splits.safety)
    prompts = list(pairs.prompts)
    model, tokenizer = load_deployed(lm_run, policy)
    responses = [r[0] for r in generate(model, tokenizer, prompts, num_samples=1, seed=policy.seed,
                                        **policy.sampler.to_dict())]  # fmt: skip
    pf = load_policy_file(lm_run / "policy.json")
    scorers = load_scorers(lm_run, pf.models, pf.group_weights)
    base, _ = policy_dirs(lm_run, policy)
    rewards = base_normalized_group_rewards(
        load_base(BaseModel(policy.base_model, base, policy.base_sha256), seed=0), prompts,
        responses, scorers, num_samples=config.policy.num_candidates, sampler=policy.sampler,
        seed=_derive(policy.seed, 0x6A0), batch_size=config.policy.sampler.batch_size,
        mode=config.groups.normalize, beta=config.policy.beta,
    )  # fmt: skip
    prompt_groups = safety_prompt_groups(pairs)
    for name, block in groups["groups"].items():
        rows = group_rows(prompt_groups, name)
        assert block["n"] == len(rows)
        if len(rows) >= 2:
            mean = float(rewards[name][rows].mean())
            assert block["reward_mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
    report = json.loads((lm_run / "report.json").read_text())
    assert set(report["groups"]["groups"]) == {"majority", "minority"}


@pytest.mark.integration
def test_report_verifies_and_records_the_lm_and_its_truth(lm_run, capsys):
    report = json.loads((lm_run / "report.json").read_text())
    settings = report["safety"]["sampler_settings"]
    assert settings["policy"] == "causal_lm_adapter" and len(settings["adapter"]["sha256"]) == 64
    truth = report["extra"]["true_outcomes"]
    assert {"reference", "released"} <= set(truth) and truth["samples_per_prompt"] == 4
    key = str(lm_run / "keys" / "public.pem")
    assert main(["audit", "verify", str(lm_run / "report.json"), "--public-key", key]) == 0
    # The reviewer reads the nested settings as dotted fields, not as a mapping's Python text.
    markdown = (lm_run / "report.md").read_text()
    assert "| generation.temperature | 0.9 |" in markdown and "{'" not in markdown


@pytest.mark.integration
def test_generate_samples_the_certified_policy_with_its_settings(lm_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How can I bake a loaf of bread?\nTell me how to change a flat tire?\n")
    target = tmp_path / "out.jsonl"
    assert main(["generate", str(lm_run), "--prompts", str(prompts), "--out", str(target)]) == 0
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts.read_text().splitlines()
    settings = json.loads((lm_run / "policy" / "generation_config.json").read_text())
    assert all(r["sampler"]["temperature"] == settings["temperature"] for r in rows)
    # Same seed, same responses: generate is the certified sampler, reproducibly.
    again = tmp_path / "again.jsonl"
    assert main(["generate", str(lm_run), "--prompts", str(prompts), "--out", str(again)]) == 0
    assert again.read_text() == target.read_text()


@pytest.mark.integration
def test_a_changed_adapter_is_refused_by_certify_and_generate(lm_run, tmp_path, capsys):
    """Attack: swap the adapter's weights after alignment. The certificate names the aligned
    bytes, so neither a new safety test nor generation may run on other weights."""
    out = tmp_path / "run"
    shutil.copytree(lm_run, out)
    weights = out / "policy" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    prompts = tmp_path / "p.txt"
    prompts.write_text("How can I bake a loaf of bread?\n")
    assert main(["generate", str(out), "--prompts", str(prompts)]) == 2
    assert "changed since alignment" in capsys.readouterr().err
    (out / "certificate.json").unlink()  # a new test of the changed files: refused before the log
    config = load_config(CONFIG, _overrides(lm_run))
    with pytest.raises(DataError, match="changed since alignment"):
        certify(Workspace(config, out))


@pytest.mark.integration
def test_generate_refuses_a_missing_or_garbled_policy_directory(lm_run, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("How can I bake a loaf of bread?\n")
    assert main(["generate", str(tmp_path / "nowhere"), "--prompts", str(prompts)]) == 2
    assert "policy.json" in capsys.readouterr().err
    out = tmp_path / "run"
    shutil.copytree(lm_run, out)
    (out / "policy" / "generation_config.json").write_text('{"do_sample": true, "top_k": 50}')
    assert main(["generate", str(out), "--prompts", str(prompts)]) == 2
    assert "top_k" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["policy.method=distill"], "policy.model: method 'distill' trains a language model"),
        (["policy.method=reinforce_lagrangian"], "trains a language model"),
        (
            [
                "policy.method=reinforce_lagrangian",
                "policy.model=tiny-gpt2",
                "policy.sampler.temperature=0.7",
            ],
            "trains on-policy on samples at temperature 1",
        ),
        (["policy.method=distill", "policy.model=world-sft", "data.source=x.jsonl"], "world-sft"),
        (["policy.method=distill", "policy.model=tiny-gpt2", "policy.sampler.top_p=0"], "top_p"),
        (
            ["policy.method=distill", "policy.model=tiny-gpt2", "safety.unit=prompt_expectation"],
            "one sampled response per prompt",
        ),
        (["safety.prompts=red_team.jsonl"], "a designated safety set is answered by the released"),
    ],
)
def test_bad_policy_combinations_are_config_errors_at_load_time(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_missing_model_directory_fails_before_any_privacy_is_spent(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            CONFIG,
            "--out",
            str(out),
            *_overrides(out, "policy.model=" + str(tmp_path / "no-model")),
        ]
    )
    assert code == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err
    assert not (tmp_path / "ledger.sqlite").exists()


@pytest.mark.integration
def test_a_second_run_resumes_from_the_cached_samples_and_adapters(lm_run, capsys):
    """Nothing is sampled, trained, charged or tested again: the cached candidates, the round's
    adapter and the logged certificate are reused, and the released adapter is byte-identical."""
    from safealign.privacy.ledger import PrivacyLedger

    cache = lm_run / "lm" / "round-0" / "candidates.json"
    before = {p: p.stat().st_mtime_ns for p in (cache, lm_run / "certificate.json")}
    policy = json.loads((lm_run / "policy.json").read_text())["policy"]
    ledger = PrivacyLedger(lm_run.parent / "ledger.sqlite")
    releases = [r.id for s in ledger.summary() for r in s.releases]
    assert main(["run", CONFIG, "--out", str(lm_run), *_overrides(lm_run)]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert json.loads((lm_run / "policy.json").read_text())["policy"] == policy
    assert [r.id for s in ledger.summary() for r in s.releases] == releases
    assert main(["certify", CONFIG, "--out", str(lm_run), *_overrides(lm_run)]) == 0


@pytest.mark.integration
def test_every_file_of_an_lm_run_is_classified_by_the_release_inventory(lm_run):
    from safealign.audits.inventory import released_file

    assert unclassified_run_files(lm_run) == []
    assert released_file("policy/adapter_model.safetensors").name == "policy LM adapter"


def test_world_sft_trains_on_fresh_public_prompts_only_and_deterministically():
    """Attack: the SFT base must not have seen a prompt of the private dataset (nor, so, of its
    sealed safety split). Its prompts are a fresh world's, minus every prompt of the run's world."""
    from safealign.data.synthetic import SyntheticWorld
    from safealign.run.lm_base import sft_texts, train_world_sft

    config = load_config(CONFIG, [*LM, "policy.model=world-sft", "policy.sft.num_prompts=12",
                                  "policy.sft.epochs=1", "policy.sft.n_embd=16",
                                  "policy.sft.responses_per_prompt=2"])  # fmt: skip
    world = SyntheticWorld(config.data.synthetic, seed=config.seed)
    prompts, responses = sft_texts(config, world)
    assert len(prompts) == 12 and not set(prompts) & set(world.prompts)
    assert all(len(row) == 2 for row in responses)
    assert sft_texts(config, world) == (prompts, responses)
    first, _ = train_world_sft(config, world)
    second, _ = train_world_sft(config, world)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.integration
def test_reinforce_lagrangian_runs_through_run_and_certifies_its_own_adapter(tmp_path):
    """The on-policy method through the same pipeline: its adapter is the released policy, the
    certificate is about it, and the selection names the method."""
    out = tmp_path / "run"
    extra = ["policy.method=reinforce_lagrangian", "policy.sampler.temperature=1",
             "policy.sampler.top_p=1", "policy.reinforce.steps=2", "policy.reinforce.batch_size=4"]  # fmt: skip
    assert main(["run", CONFIG, "--out", str(out), *_overrides(out, *extra)]) == 0
    policy = json.loads((out / "policy.json").read_text())
    assert policy["selection"]["method"] == "reinforce_lagrangian"
    assert (out / "lm" / "round-reinforce" / "adapter" / "adapter_model.safetensors").is_file()
    certificate = json.loads((out / "certificate.json").read_text())
    assert certificate["sampler_settings"] == policy["policy"]
    assert certificate["sampler_settings"]["generation"]["temperature"] == 1.0
