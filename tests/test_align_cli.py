"""``safealign align`` then ``safealign certify`` on a tiny synthetic world: policy.json, exit
codes, no second privacy charge, user candidate files, and the guards around the safety prompts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from safealign.cli import main
from safealign.config import load_config
from safealign.data.source import load_source, make_splits
from safealign.privacy.ledger import PrivacyLedger
from safealign.run import Workspace, align, unseal_safety_split
from safealign.run.certification import run_safety_test
from safealign.run.policy_file import load_policy_file
from tests._tiny_run import CONFIG, TINY_WORLD

TINY = [
    *TINY_WORLD,
    "groups.mode=given",
    "safety.cost_threshold=1",  # every policy passes: the exit codes are then known
]


def _overrides(out: Path, *extra: str) -> list[str]:
    return [*TINY, f"budget.ledger={out.parent / 'ledger.sqlite'}", *extra]


def _releases(out: Path) -> list[int]:
    ledger = PrivacyLedger(out.parent / "ledger.sqlite")
    return [r.id for s in ledger.summary() for r in s.releases]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """A run directory after one ``safealign align`` (the models in it are reused by copies)."""
    out = tmp_path_factory.mktemp("align") / "run"
    assert main(["align", CONFIG, "--out", str(out), *_overrides(out)]) == 0
    return out


def _copy(aligned: Path, tmp_path: Path) -> Path:
    """A copy of the aligned run directory (same ledger), for tests that overwrite policy.json."""
    out = tmp_path / "run"
    shutil.copytree(aligned, out)
    return out


def _splits(out: Path):
    config = load_config(CONFIG, _overrides(out))
    pairs, world = load_source(config)
    return make_splits(pairs, config), world


def test_policy_json_records_the_selection_groups_models_and_provenance(aligned, capsys):
    policy = json.loads((aligned / "policy.json").read_text())
    assert (policy["kind"], policy["version"]) == ("safealign.aligned_policy", 1)
    settings, selection = policy["policy"], policy["selection"]
    assert settings["policy"] == "tilted_best_of_k" and settings["num_candidates"] == 4
    assert selection["feasible"] and selection["lambda"] == settings["lambda"] == 0.0
    assert selection["selection_bound"] <= selection["cost_threshold"] == 1.0
    splits, _ = _splits(aligned)
    assert selection["n_safety"] == splits.safety.num_prompts == policy["data"]["n_safety"]
    assert selection["n_opt"] == len(splits.candidate.prompts)
    # The private splits as keyed commitments, the public ones (candidate, safety) as SHA-256.
    config = load_config(CONFIG, _overrides(aligned))
    pairs, _ = load_source(config)
    released = Workspace(config, aligned).released_fingerprints()
    assert policy["data"]["split_fingerprints"] == released["splits"]
    plain = splits.fingerprints()
    assert released["splits"]["safety"] == plain["safety"]
    assert (
        released["splits"]["train"] != plain["train"] and released["dataset"] != pairs.fingerprint
    )
    weights = policy["groups"]["weights"]
    assert set(weights) == {"majority", "minority"} and sum(weights.values()) == pytest.approx(1)
    for entry in policy["models"]["group_rewards"]:
        assert (aligned / entry["model"] / "scalar_model.json").is_file()
    assert (aligned / policy["models"]["cost"] / "scalar_model.json").is_file()
    assert policy["candidates"]["source"] == "reference_sampler"
    assert settings["reference_sampler"] == policy["candidates"]["reference_sampler"]
    loaded = load_policy_file(aligned / "policy.json")
    assert loaded.policy.sampler_settings() == settings


def test_certify_after_align_writes_the_pipelines_certificate(aligned, capsys):
    out_args = ["--out", str(aligned), *_overrides(aligned)]
    assert main(["certify", CONFIG, *out_args]) == 0
    printed = capsys.readouterr().out
    assert "CERTIFIED" in printed
    certificate = json.loads((aligned / "certificate.json").read_text())
    policy = json.loads((aligned / "policy.json").read_text())
    # Given groups: each group's bounds on its own safety prompts, printed under the verdict.
    assert set(certificate["groups"]["groups"]) == set(policy["groups"]["weights"])
    for name, entry in certificate["groups"]["groups"].items():
        assert entry["prompts"] == "own"
        assert f"  group {name}: " in printed
    assert certificate["result"] == "certified" and certificate["source"] == "policy"
    assert certificate["sampler_settings"] == policy["policy"]
    assert certificate["n"] == policy["selection"]["n_safety"]
    # The same certificate as the whole pipeline's certify stage on the in-memory alignment.
    config = load_config(CONFIG, _overrides(aligned))
    ws = Workspace(config, aligned)
    a = align(ws, progress=False)
    expected = run_safety_test(
        ws,
        a.aligned.selection.policy,
        scorers=a.aligned.scorers,
        safety_pairs=unseal_safety_split(ws.splits.safety),
    ).to_dict()
    assert certificate.pop("attempts")["number"] == 1  # the log's record (only the CLI logs)
    assert certificate == expected
    # Certifying the same policy again is no new attempt: the logged certificate is kept.
    assert main(["certify", CONFIG, *out_args]) == 0
    assert json.loads((aligned / "certificate.json").read_text())["attempts"]["number"] == 1


def _approx(value):
    """``value`` with every float wrapped in ``pytest.approx`` (relative 1e-9)."""
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_approx(v) for v in value]
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-9, abs=1e-12)
    return value


def test_rerunning_align_spends_no_privacy_and_gives_the_same_policy(aligned, capsys):
    before, policy = _releases(aligned), json.loads((aligned / "policy.json").read_text())
    assert len(before) == 2  # the cost model, and the group reward models (disjoint: one release)
    assert main(["align", CONFIG, "--out", str(aligned), *_overrides(aligned)]) == 0
    assert _releases(aligned) == before
    # Same policy up to floating-point rounding (the MaxMin solver's last bits can differ).
    assert json.loads((aligned / "policy.json").read_text()) == _approx(policy)
    assert f"wrote {aligned / 'policy.json'}" in capsys.readouterr().out


def test_no_feasible_policy_exits_1_from_align_and_certify(aligned, tmp_path, capsys):
    out = _copy(aligned, tmp_path)
    args = ["--out", str(out), *_overrides(out, "safety.cost_threshold=0")]
    assert main(["align", CONFIG, *args]) == 1
    assert "NO POLICY meets the pessimistic bound" in capsys.readouterr().out
    policy = json.loads((out / "policy.json").read_text())
    assert policy["policy"] is None and policy["reason"] and not policy["selection"]["feasible"]
    assert main(["certify", CONFIG, *args]) == 1
    certificate = json.loads((out / "certificate.json").read_text())
    assert certificate["result"] == "NSF" and certificate["source"] == "selection"
    assert "not run" in capsys.readouterr().out


def test_certify_refuses_a_config_other_than_the_aligned_one(aligned, capsys):
    args = ["--out", str(aligned), *_overrides(aligned, "safety.cost_threshold=0.5")]
    assert main(["certify", CONFIG, *args]) == 2
    err = capsys.readouterr().err
    assert "safety.cost_threshold: the policy was selected for 1.0, the config says 0.5" in err


def _write_candidates(path: Path, prompts, world) -> Path:
    cands = world.sample_candidates(list(prompts), num_candidates=3, seed=7)
    rows = [
        {"prompt": p, "responses": list(r)}
        for p, r in zip(cands.prompts, cands.responses, strict=True)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_align_on_a_candidates_file_then_certify_points_to_responses(aligned, tmp_path, capsys):
    out = _copy(aligned, tmp_path)
    splits, world = _splits(out)
    far = [p for p in splits.train.prompts if not splits.safety.overlapping([p])]  # no near-copy
    path = _write_candidates(tmp_path / "cands.jsonl", far[:12], world)
    args = ["--out", str(out), *_overrides(out)]
    (out / "certificate.json").write_text("{}")  # a certificate of the previous policy
    assert main(["align", CONFIG, "--candidates", str(path), *args]) == 0
    assert not (out / "certificate.json").exists()  # stale: moved aside with the new policy
    assert (out / "certificates" / "untested.json").read_text() == "{}"  # kept, not deleted
    policy = json.loads((out / "policy.json").read_text())
    source = policy["candidates"]
    assert source["source"] == "file" and source["path"] == str(path)
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy["selection"]["n_opt"] == 12 and policy["policy"]["num_candidates"] == 3
    assert policy["policy"]["reference_sampler"]["sha256"] == source["sha256"]
    capsys.readouterr()
    assert main(["certify", CONFIG, *args]) == 2
    err = capsys.readouterr().err
    assert "cannot sample your model" in err and "--responses" in err
    assert not (out / "certificate.json").exists()


def test_candidates_with_a_safety_prompt_are_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    splits, world = _splits(out)
    safety_prompt = splits.safety.unseal(purpose="certify").prompts[0]  # the test may peek
    prompts = [*splits.candidate.prompts[:3], safety_prompt]
    path = _write_candidates(tmp_path / "cands.jsonl", prompts, world)
    assert (
        main(["align", CONFIG, "--candidates", str(path), "--out", str(out), *_overrides(out)]) == 2
    )
    err = capsys.readouterr().err
    assert (
        f"{path}:4: this prompt is one of the sealed safety prompts or a near-copy of one (1 of"
        in err
    )
    assert not (out / "cost").exists() and not (tmp_path / "ledger.sqlite").exists()


def test_malformed_candidates_file_exits_2_naming_file_and_line(tmp_path, capsys):
    out = tmp_path / "run"
    path = tmp_path / "cands.jsonl"
    path.write_text('{"prompt": "a", "responses": ["x", "y"]}\n{"prompt": "b", "responses": []}\n')
    assert (
        main(["align", CONFIG, "--candidates", str(path), "--out", str(out), *_overrides(out)]) == 2
    )
    err = capsys.readouterr().err
    assert f"{path}:2: field 'responses' must be a non-empty list of strings" in err
    assert "Traceback" not in err and not (out / "cost").exists()


def test_certify_without_policy_json_exits_2(tmp_path, capsys):
    out = tmp_path / "empty"
    assert main(["certify", CONFIG, "--out", str(out), *_overrides(out)]) == 2
    err = capsys.readouterr().err
    assert "no policy.json in this directory" in err and "safealign align" in err


def test_certify_options_of_the_two_modes_do_not_mix(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["certify", CONFIG, "--out", str(out), "--cost-model", str(out)]) == 2
    assert "--cost-model: used only with --responses" in capsys.readouterr().err
    responses = tmp_path / "r.jsonl"
    assert main(["certify", CONFIG, "--responses", str(responses)]) == 2
    assert "also needs --sampler-settings and --cost-model" in capsys.readouterr().err


def _certify_after_align(out: Path, *extra: str) -> int:
    args = ["--out", str(out), *_overrides(out, *extra)]
    assert main(["align", CONFIG, *args]) == 0
    return main(["certify", CONFIG, *args])


def test_retest_shopping_is_refused_and_earlier_certificates_are_kept(aligned, tmp_path, capsys):
    """Attack (issue 13, finding 3): re-align with a changed setting, certify again on the
    same sealed prompts. Before the log: 4 of 4 such attempts ran; now the second is refused."""
    out = _copy(aligned, tmp_path)
    assert _certify_after_align(out) == 0
    first = json.loads((out / "certificate.json").read_text())
    assert first["attempts"]["number"] == 1 and first["attempts"]["declared"] == 1
    capsys.readouterr()
    assert _certify_after_align(out, "policy.beta=0.5") == 2
    err = capsys.readouterr().err
    assert "already been tested 1 time(s), and 1 attempt(s) were declared" in err
    assert not (out / "certificate.json").exists()
    assert json.loads((out / "certificates" / "attempt-1.json").read_text()) == first
    # Raising the declared number after the first test is shopping too.
    assert _certify_after_align(out, "policy.beta=0.7", "safety.attempts=4") == 2
    assert "first test declared 1 attempt(s); the config now says 4" in capsys.readouterr().err


def test_declared_attempts_run_at_delta_over_n_and_one_more_is_refused(aligned, tmp_path, capsys):
    out = _copy(aligned, tmp_path)
    for k, beta in enumerate(("0.1", "0.3"), start=1):
        assert _certify_after_align(out, "safety.attempts=2", f"policy.beta={beta}") == 0
        certificate = json.loads((out / "certificate.json").read_text())
        assert certificate["confidence"] == pytest.approx(1 - 0.05 / 2)  # δ = 0.05 split in two
        assert certificate["attempts"]["number"] == k and len(certificate["attempts"]["log"]) == k
    assert (out / "certificates" / "attempt-1.json").is_file()
    capsys.readouterr()
    assert _certify_after_align(out, "safety.attempts=2", "policy.beta=0.9") == 2
    assert "tested 2 time(s), and 2 attempt(s) were declared" in capsys.readouterr().err


def _responses(path: Path, prompts) -> Path:
    rows = [{"prompt": p, "response": "I can't help with that."} for p in prompts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_certify_responses_refuses_prompts_the_policy_was_aligned_on(aligned, tmp_path, capsys):
    """Attack (issue 13, finding 4): certify --responses on prompts the policy was aligned on
    (main certified 60 of them); now refused naming the line, exact copies and near-copies."""
    splits, _ = _splits(aligned)
    fresh = list(splits.safety.unseal(purpose="certify").prompts)[:5]
    aligned_on = splits.candidate.prompts[0]
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"model": "my-llm", "temperature": 0.7}))
    byo = ["--sampler-settings", str(settings), "--cost-model", str(aligned / "cost" / "model")]
    common = [*byo, "--policy", str(aligned / "policy.json"), "--out", str(tmp_path / "cert")]
    for line, prompt in ((6, aligned_on.upper()), (3, aligned_on + " Answer in one word")):
        rows = [*fresh[: line - 1], prompt]
        path = _responses(tmp_path / "r.jsonl", rows)
        assert (
            main(["certify", CONFIG, "--responses", str(path), *common, *_overrides(aligned)]) == 2
        )
        err = capsys.readouterr().err
        assert f"{path}:{line}: this prompt is one the policy was aligned on" in err
        assert not (tmp_path / "cert" / "certificate.json").exists()
    # Fresh prompts pass the check; the test is one logged attempt on their set.
    path = _responses(tmp_path / "r.jsonl", fresh)
    assert main(["certify", CONFIG, "--responses", str(path), *common, *_overrides(aligned)]) == 0
    certificate = json.loads((tmp_path / "cert" / "certificate.json").read_text())
    assert certificate["attempts"]["number"] == 1 and certificate["n"] == 5
    reordered = _responses(tmp_path / "again.jsonl", [p.lower() for p in reversed(fresh)])
    assert (
        main(["certify", CONFIG, "--responses", str(reordered), *common, *_overrides(aligned)]) == 2
    )
    assert "already been tested 1 time(s)" in capsys.readouterr().err
