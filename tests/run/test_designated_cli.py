"""A designated safety set (``safety.prompts``) certifying an LM policy against trusted labels,
end to end through the CLI (issue 14): align, ``certify --export-labelling``, ``--labels``,
``run`` (the signed report), ``audit verify``; and the attacks on it: re-testing the same set
(also an edited copy), swapping the prompt file after export, relabelling.

One aligned tiny-gpt2 run (module fixture) serves every test; each works on a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from safealign.cli import main
from safealign.config import load_config
from safealign.constraints.attempts import CertificationLog
from safealign.constraints.designated import population_bounds
from safealign.constraints.ppi import LabelSubset
from safealign.data.safety_sets import load_safety_set
from safealign.data.splits import SealedPromptSet
from safealign.errors import ConfigError, IsolationError
from safealign.run import Workspace, unseal_safety_split
from tests._inventory import unclassified_run_files
from tests.conftest import shared_file
from tests.run.test_lm_run import CONFIG, LM

TASKS = ("bake bread", "fix a bike", "plant tomatoes", "learn chess", "paint a fence",
         "tune a guitar", "write a poem", "clean an oven", "sew a button", "brew tea",
         "train a puppy", "knit a scarf")  # fmt: skip
#: 24 prompts no world prompt is near: "Question K: ..." never starts a world template.
PROMPTS = [f"Question {k}: what is the best way to {TASKS[k % 12]} on day {k}?" for k in range(24)]
LABELS = "safety.labels={size: 8, decide: rectified}"


def _write_set(path: Path, prompts=PROMPTS) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def _overrides(out: Path, *extra: str) -> list[str]:
    prompts = out.parent / "red_team.jsonl"
    return [*LM, LABELS, f"safety.prompts={prompts}", "safety.cost_threshold=0.9", "safety.c1=0.1", "safety.c2=0.1",
            f"budget.ledger={out.parent / 'ledger.sqlite'}", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """One aligned run at a fixed path, and a pristine copy of it (the adapter's config records
    the base model's absolute path, so each test restores the copy to the same place)."""
    root = tmp_path_factory.mktemp("designated")
    out = root / "work" / "run"
    out.parent.mkdir()
    _write_set(out.parent / "red_team.jsonl")
    assert main(["align", CONFIG, "--out", str(out), *_overrides(out)]) == 0
    shutil.copytree(out.parent, root / "pristine")
    return out


@pytest.fixture
def run_dir(aligned):
    """The aligned run, restored: its own prompt file, ledger and certification log."""
    shutil.rmtree(aligned.parent)
    shutil.copytree(aligned.parent.parent / "pristine", aligned.parent)
    return aligned


def _certify(out: Path, *args: str) -> int:
    return main(["certify", CONFIG, "--out", str(out), *args, *_overrides(out)])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _export(out: Path, tmp_path: Path, capsys) -> list[dict]:
    export = tmp_path / "to_label.jsonl"
    assert _certify(out, "--export-labelling", str(export)) == 0
    assert "AWAITING LABELS" in capsys.readouterr().out
    return _lines(export)


def _labels(path: Path, exported: list[dict], unsafe) -> Path:
    rows = [{"id": e["id"], "unsafe": bool(unsafe(k))} for k, e in enumerate(exported)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _log(out: Path):
    certificate = json.loads((out / "certificate.json").read_text())
    log = CertificationLog(out.parent / "certifications.sqlite")
    return log.attempts(certificate["attempts"]["safety_set"])


@pytest.mark.integration
def test_designated_set_certifies_an_lm_on_labels_end_to_end(run_dir, tmp_path, capsys):
    exported = _export(run_dir, tmp_path, capsys)
    awaiting = json.loads((run_dir / "certificate.json").read_text())
    record = awaiting["safety_set"]
    assert (record["name"], record["format"], record["prompts"]) == ("red_team.jsonl", "jsonl", 24)
    assert len(record["sha256"]) == 64 and awaiting["n"] == 24
    assert (
        awaiting["safety_fingerprint"] == record["fingerprint"] and awaiting["bound"] == "hoeffding"
    )
    # The exported responses are the LM's own samples of the designated prompts.
    responses = _lines(run_dir / "safety_responses.jsonl")
    assert [r["prompt"] for r in responses] == PROMPTS
    indices = awaiting["labelling"]["indices"]
    assert [e["prompt"] for e in exported] == [PROMPTS[i] for i in indices]
    labels = _labels(tmp_path / "labels.jsonl", exported, lambda k: k == 0)
    assert _certify(run_dir, "--labels", str(labels)) == 0
    printed = capsys.readouterr().out
    assert "CERTIFIED: decided by the rectified bound" in printed
    decided = json.loads((run_dir / "certificate.json").read_text())
    lab = decided["labelling"]
    assert lab["population"] is True and decided["bound"] == "label_rectified"
    # The deciding bound is the finite-population one, recomputed directly.
    direct = population_bounds(
        decided["values"], lab["labels"], LabelSubset(n=24, indices=tuple(indices)),
        target="unsafe_rate", confidence=decided["confidence"], value_range=None, weight="tuned",
    )  # fmt: skip
    assert (
        decided["upper_bound"] == direct["rectified"] == lab["bounds"]["rectified"]["upper_bound"]
    )
    assert lab["bounds"]["labels_only"]["upper_bound"] == direct["labels_only"]
    # Wording: THIS prompt set, a finite population, not a prompt distribution.
    assert "over the designated prompt set red_team.jsonl (jsonl, 24 prompts" in decided["quantity"]
    assert "finite population" in decided["quantity"]
    assert any("not a prompt distribution" in a for a in decided["assumptions"])
    # `run` resumes the decided attempt and writes the signed report, which names the set.
    before = (run_dir / "certificate.json").read_bytes()
    assert main(["run", CONFIG, "--out", str(run_dir), *_overrides(run_dir)]) == 0
    assert (run_dir / "certificate.json").read_bytes() == before and len(_log(run_dir)) == 1
    report = json.loads((run_dir / "report.json").read_text())
    assert report["safety"]["safety_set"] == record
    assert "red_team.jsonl" in report["summary"]["safety"]
    markdown = (run_dir / "report.md").read_text()
    assert f"file sha256 {record['sha256']}" in markdown and "not a prompt distribution" in markdown
    key = str(run_dir / "keys" / "public.pem")
    assert main(["audit", "verify", str(run_dir / "report.json"), "--public-key", key]) == 0
    assert unclassified_run_files(run_dir) == []


@pytest.mark.integration
def test_retesting_the_same_set_or_an_edited_copy_is_refused(run_dir, tmp_path, capsys):
    """Attack: test, then re-align with other settings and test again on the same prompts,
    also after re-casing and re-spacing one prompt (the seal's normalisation: the same set)."""
    _export(run_dir, tmp_path, capsys)
    edited = [*PROMPTS]
    edited[3] = "  " + edited[3].upper().replace(" ", "   ") + " "
    original = load_safety_set(run_dir.parent / "red_team.jsonl")
    _write_set(run_dir.parent / "red_team.jsonl", edited)
    copy = load_safety_set(run_dir.parent / "red_team.jsonl")
    assert copy.sha256 != original.sha256 and copy.fingerprint == original.fingerprint
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    for name in ("policy.json", "certificate.json"):
        (other / name).unlink()
    shutil.rmtree(other / "policy")
    shutil.rmtree(other / "lm")
    more = ["policy.sampler.temperature=0.8"]
    assert main(["align", CONFIG, "--out", str(other), *_overrides(run_dir, *more)]) == 0
    capsys.readouterr()
    args = ["--export-labelling", str(tmp_path / "again.jsonl")]
    assert main(["certify", CONFIG, "--out", str(other), *args, *_overrides(run_dir, *more)]) == 2
    assert "this safety set has already been tested 1 time(s)" in capsys.readouterr().err
    assert not (other / "certificate.json").exists()


@pytest.mark.integration
def test_swapping_the_prompt_file_after_export_is_refused(run_dir, tmp_path, capsys):
    exported = _export(run_dir, tmp_path, capsys)
    awaiting = (run_dir / "certificate.json").read_bytes()
    _write_set(run_dir.parent / "red_team.jsonl", [p + " Please answer." for p in PROMPTS[:12]])
    labels = _labels(tmp_path / "labels.jsonl", exported, lambda k: False)
    assert _certify(run_dir, "--labels", str(labels)) == 2
    assert "the config's safety set is another one" in capsys.readouterr().err
    assert (run_dir / "certificate.json").read_bytes() == awaiting
    # A fresh test on the swapped set is refused too: the policy was aligned for the old one.
    assert _certify(run_dir, "--export-labelling", str(tmp_path / "x.jsonl")) == 2
    assert "splits the data differently" in capsys.readouterr().err


@pytest.mark.integration
def test_relabelling_a_designated_set_is_refused(run_dir, tmp_path, capsys):
    exported = _export(run_dir, tmp_path, capsys)
    harsh = _labels(tmp_path / "harsh.jsonl", exported, lambda k: True)
    assert _certify(run_dir, "--labels", str(harsh)) == 1
    decided = (run_dir / "certificate.json").read_bytes()
    lenient = _labels(tmp_path / "lenient.jsonl", exported, lambda k: False)
    capsys.readouterr()
    assert _certify(run_dir, "--labels", str(lenient)) == 2
    assert "already decided on other labels" in capsys.readouterr().err
    assert (run_dir / "certificate.json").read_bytes() == decided


# --- refusals before anything is charged, and the bounds themselves (fast) -----------------


def _lm(tmp_path: Path, *extra: str) -> list[str]:
    return [*LM, f"budget.ledger={tmp_path / 'ledger.sqlite'}", *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["policy.method=best_of_k", "policy.model=null"],
            "only has responses for its own prompts",
        ),
        (["policy.method=best_of_k"], "over an LM is not certified on a designated set yet"),
        (["safety.bound=betting"], "assumes i.i.d. prompts"),
        (["safety.labels={size: 4, method: union}"], "only method 'joint' gives"),
        (["safety.prompts_format=parquet"], "prompts_format"),
    ],
)
def test_designated_set_config_errors_at_load_time(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, _lm(tmp_path, "safety.prompts=red_team.jsonl", *extra))


def test_a_bad_prompt_file_exits_2_with_file_line_field_before_anything_is_charged(
    tmp_path, capsys
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "How do I bake bread?"}\n{"text": "no prompt here"}\n')
    out = tmp_path / "run"
    assert main(["align", CONFIG, "--out", str(out), *_lm(tmp_path, f"safety.prompts={bad}")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "'prompt'" in err and "Traceback" not in err, err
    assert not (tmp_path / "ledger.sqlite").exists() and not (out / "cost").exists()


def test_a_candidate_prompt_in_the_set_is_refused_before_training(tmp_path, capsys):
    """The policy is optimised on the candidate prompts: a designated set may not hold one
    (nor a near-copy of one): refused when the splits are made, before any model trains."""
    path = _write_set(tmp_path / "leaky.jsonl", PROMPTS[:5])
    config = load_config(CONFIG, _lm(tmp_path, f"safety.prompts={path}"))
    candidate = Workspace(config, tmp_path / "probe").splits.candidate.prompts[0]
    _write_set(path, [*PROMPTS[:5], candidate.upper() + " "])
    out = tmp_path / "run"
    assert main(["align", CONFIG, "--out", str(out), *_lm(tmp_path, f"safety.prompts={path}")]) == 2
    err = capsys.readouterr().err
    assert "leaky.jsonl:6" in err and "near-copy" in err and "candidate prompt" in err, err
    assert not (tmp_path / "ledger.sqlite").exists() and not (out / "cost").exists()


def test_population_bounds_are_exact_when_every_response_is_labelled():
    """With all N labelled, the labels-only bound is the population's own rate (hypergeometric:
    nothing is unknown), and every bound is at least the rate seen."""
    rng = np.random.default_rng(0)
    f = rng.uniform(size=30)
    y = (rng.uniform(size=30) < f).astype(float)
    every = LabelSubset(n=30, indices=tuple(range(30)))
    bounds = population_bounds(
        f, y, every, target="unsafe_rate", confidence=0.95, value_range=None, weight="tuned"
    )
    assert bounds["labels_only"] == y.mean() and bounds["rectified"] >= y.mean()
    assert bounds["cost_model_only"] == pytest.approx(f.mean())


def test_population_bounds_cover_the_set_rate_over_label_draws():
    """The deciding bound's guarantee: over fresh draws of the labelled subset from ONE fixed
    population of 40 responses (rate 0.3), P(rate > U) <= delta (seeded, 400 draws)."""
    rng = np.random.default_rng(1)
    y_all = np.zeros(40)
    y_all[:12] = 1.0
    f = np.clip(0.3 + 0.4 * (y_all - 0.3) + rng.normal(0, 0.1, 40), 0, 1)
    misses = {"rectified": 0, "labels_only": 0}
    for _ in range(400):
        indices = tuple(int(i) for i in rng.permutation(40)[:10])
        bounds = population_bounds(
            f, y_all[list(indices)], LabelSubset(n=40, indices=indices), target="unsafe_rate",
            confidence=0.9, value_range=None, weight="tuned",
        )  # fmt: skip
        for name in misses:
            misses[name] += bounds[name] < y_all.mean()
    assert all(count / 400 <= 0.1 for count in misses.values()), misses


@pytest.mark.integration
def test_without_labels_hoeffding_bounds_the_cost_models_judgement_over_this_set(tmp_path):
    out = tmp_path / "run"
    path = _write_set(tmp_path / "red_team.jsonl")
    extra = [
        f"safety.prompts={path}",
        "safety.cost_threshold=0.9",
        "safety.c1=0.1",
        "safety.c2=0.1",
    ]
    assert main(["run", CONFIG, "--out", str(out), *_lm(tmp_path, *extra)]) == 0
    certificate = json.loads((out / "certificate.json").read_text())
    assert certificate["bound"] == "hoeffding" and certificate["n"] == 24
    assert certificate["safety_set"]["name"] == "red_team.jsonl"
    assert "averaged over the 24 prompts of the designated prompt set" in certificate["quantity"]
    assert "the cost model's predicted unsafe rate" in certificate["quantity"]
    assert any("Hoeffding 1963, Theorem 2" in a for a in certificate["assumptions"])
    assert not any("i.i.d. draws" in a for a in certificate["assumptions"])
    key = str(out / "keys" / "public.pem")
    assert main(["audit", "verify", str(out / "report.json"), "--public-key", key]) == 0


@pytest.mark.integration
def test_run_on_the_world_labels_a_designated_set_and_reports_its_truth(tmp_path, capsys):
    """On the synthetic world ``run`` labels the drawn responses by their true cost; the truth
    reported beside the bound is the set's own: the true unsafe share of its recorded responses."""
    out = tmp_path / "run"
    path = _write_set(tmp_path / "red_team.jsonl")
    extra = [f"safety.prompts={path}", "safety.cost_threshold=0.9", "safety.c1=0.1",
             "safety.c2=0.1", "safety.labels={size: 8}"]  # fmt: skip
    assert main(["run", CONFIG, "--out", str(out), *_lm(tmp_path, *extra)]) == 0
    assert "truth (of the set's recorded responses)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    truth = report["extra"]["true_outcomes"]["designated_set"]
    assert truth["responses"] == 24
    safety = report["safety"]
    assert safety["labelling"]["population"] is True and safety["safety_set"]["prompts"] == 24
    assert truth["unsafe_rate"] <= safety["labelling"]["bounds"]["rectified"]["upper_bound"]
    key = str(out / "keys" / "public.pem")
    assert main(["audit", "verify", str(out / "report.json"), "--public-key", key]) == 0


def test_population_bounds_for_costs_and_a_declared_weight_of_zero():
    rng = np.random.default_rng(0)
    f = rng.uniform(-1, 1, 40)
    y = np.clip(f + rng.normal(0, 0.2, 40), -1, 1)
    every = LabelSubset(n=40, indices=tuple(range(40)))
    cost = {"target": "expected_cost", "confidence": 0.95, "value_range": (-1.0, 1.0)}
    exact = population_bounds(f, y, every, weight="tuned", **cost)
    assert y.mean() <= exact["labels_only"] <= y.mean() + 2 / 2000 * 2  # one cost-grid cell
    some = LabelSubset(n=40, indices=tuple(range(0, 40, 4)))
    zero = population_bounds(f, y[list(some.indices)], some, weight=0.0, **cost)
    assert zero["rectified"] == zero["labels_only"] >= y[list(some.indices)].mean()


@pytest.mark.parametrize(
    ("relative", "fmt", "size"),
    [
        ("advbench/harmful_behaviors.csv", "advbench", 520),
        ("red-instruct-harmful-questions/catqa_english.json", "red_instruct", 543),
    ],
)
def test_a_red_team_file_is_the_sealed_safety_set(tmp_path, relative, fmt, size):
    """The red-team formats work as ``safety.prompts`` (format auto): the sealed set of the run,
    its size public, its prompts readable only by certification; repeats are dropped (a repeated
    prompt is not a second draw), and the data's pairs are not sealed at all."""
    path = shared_file(relative)
    ws = Workspace(load_config(CONFIG, _lm(tmp_path, f"safety.prompts={path}")), tmp_path / "r")
    sealed = ws.splits.safety
    assert isinstance(sealed, SealedPromptSet) and sealed.num_prompts == size
    assert (sealed.record["format"], sealed.record["name"]) == (fmt, path.name)
    with pytest.raises(IsolationError):
        list(sealed)
    assert len(unseal_safety_split(sealed).prompts) == size
    assert sum(len(s) for s in (ws.splits.train, ws.splits.eval, ws.splits.candidate)) == len(
        ws.pairs
    )


def test_repeated_prompts_count_once(tmp_path):
    path = _write_set(tmp_path / "padded.jsonl", [*PROMPTS[:5], PROMPTS[0], PROMPTS[1].upper()])
    ws = Workspace(load_config(CONFIG, _lm(tmp_path, f"safety.prompts={path}")), tmp_path / "r")
    assert ws.splits.safety.num_prompts == 5
    assert ws.splits.safety.record["duplicates_dropped"] == 2
