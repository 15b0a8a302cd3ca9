"""Labelled certification through the CLI (issue 14): ``certify --export-labelling`` then
``--labels``, one logged attempt, and the attacks on it (relabelling until it passes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from safealign.audits.inventory import NOT_RELEASED, released_file
from safealign.cli import main
from safealign.config import load_config
from safealign.constraints.attempts import CertificationLog
from safealign.run import Workspace
from tests._inventory import unclassified_run_files
from tests._tiny_run import CONFIG, TINY_WORLD

LABELS = "safety.labels={size: 10, decide: rectified}"
TINY = [*TINY_WORLD, "safety.cost_threshold=0.99", LABELS]


def _overrides(out: Path, *extra: str) -> list[str]:
    return [*TINY, f"budget.ledger={out.parent / 'ledger.sqlite'}", *extra]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled") / "run"
    assert main(["align", CONFIG, "--out", str(out), *_overrides(out)]) == 0
    return out


@pytest.fixture
def run_dir(aligned, tmp_path):
    """A copy of the aligned run with its own ledger and certification log."""
    shutil.copytree(aligned.parent, tmp_path / "w")  # the ledger's key lies beside the run
    return tmp_path / "w" / "run"


def _certify(out: Path, *args: str) -> int:
    return main(["certify", CONFIG, "--out", str(out), *args, *_overrides(out)])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_labels(path: Path, exported: list[dict], unsafe) -> Path:
    rows = [{"id": item["id"], "unsafe": bool(unsafe(k))} for k, item in enumerate(exported)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _log(out: Path):
    log = CertificationLog(out.parent / "certifications.sqlite")
    certificate = json.loads((out / "certificate.json").read_text())
    return log.attempts(certificate["attempts"]["safety_set"])


def _export(out: Path, tmp_path: Path, capsys) -> list[dict]:
    export = tmp_path / "to_label.jsonl"
    assert _certify(out, "--export-labelling", str(export)) == 0
    assert "AWAITING LABELS" in capsys.readouterr().out
    return _lines(export)


def test_export_then_labels_certifies_end_to_end(run_dir, tmp_path, capsys):
    exported = _export(run_dir, tmp_path, capsys)
    assert len(exported) == 10 and all(set(e) == {"id", "prompt", "response"} for e in exported)
    awaiting = json.loads((run_dir / "certificate.json").read_text())
    section = awaiting["labelling"]
    assert (awaiting["result"], section["status"], section["decide"]) == (
        "NSF",
        "awaiting_labels",
        "rectified",
    )
    assert section["method"] == "joint" and section["method_version"] == 1
    assert [f"response-{i}" for i in section["indices"]] == [e["id"] for e in exported]
    responses = _lines(run_dir / "safety_responses.jsonl")
    assert len(responses) == section["n"] == awaiting["n"]
    picked = [responses[i]["response"] for i in section["indices"]]
    assert picked == [e["response"] for e in exported]
    labels = _write_labels(tmp_path / "labels.jsonl", exported, lambda k: k < 2)
    assert _certify(run_dir, "--labels", str(labels)) == 0
    printed = capsys.readouterr().out
    assert "CERTIFIED: decided by the rectified bound" in printed and "labels_only" in printed
    decided = json.loads((run_dir / "certificate.json").read_text())
    lab = decided["labelling"]
    assert decided["result"] == "certified" and decided["bound"] == "label_rectified"
    assert lab["decided_by"] == "rectified" and lab["labels"] == [1.0, 1.0] + [0.0] * 8
    assert set(lab["bounds"]) == {"rectified", "labels_only", "cost_model_only"}
    assert decided["upper_bound"] == lab["bounds"]["rectified"]["upper_bound"] <= 0.99
    assert "human-judged unsafe rate" in decided["quantity"]
    assert "NOT the truth" in lab["bounds"]["cost_model_only"]["quantity"]
    assert lab["judge"]["n"] == 10 and lab["judge"]["n_unsafe"] == 2
    # One attempt in the log, spanning both commands, with the decided result.
    [attempt] = _log(run_dir)
    assert (attempt.number, attempt.result) == (1, "certified")
    assert attempt.upper_bound == decided["upper_bound"]
    # The same labels again: the same certificate, nothing new.
    before = (run_dir / "certificate.json").read_bytes()
    assert _certify(run_dir, "--labels", str(labels)) == 0
    assert (run_dir / "certificate.json").read_bytes() == before
    capsys.readouterr()
    assert _certify(run_dir) == 0  # a plain certify shows the logged, decided certificate
    assert "decided by the rectified bound" in capsys.readouterr().out
    # `run` resumes the decided attempt (no new test) and writes the signed report.
    assert main(["run", CONFIG, "--out", str(run_dir), *_overrides(run_dir)]) == 0
    assert (run_dir / "certificate.json").read_bytes() == before and len(_log(run_dir)) == 1
    report = json.loads((run_dir / "report.json").read_text())
    assert report["safety"]["labelling"] == lab
    headline = report["summary"]["safety"]
    assert headline.startswith("Certified") and "decided by the label-rectified bound" in headline
    assert "labels-only bound" in headline and "cost-model-only bound" in headline
    assert "human-judged unsafe rate" in headline
    html = (run_dir / "report.html").read_text()
    assert (
        "AUROC" in html
        and "Reliability of the cost model" in html
        and "decides the release" in html
    )
    key = run_dir / "keys" / "public.pem"
    assert main(["audit", "verify", str(run_dir / "report.json"), "--public-key", str(key)]) == 0
    fields = {(o["file"], o["field"]) for o in report["privacy"]["outside_guarantee"]}
    assert ("certificate.json", "labelling.labels[]") in fields
    _assert_every_released_field_is_classified(run_dir)


def _assert_every_released_field_is_classified(out: Path) -> None:
    """The release inventory classifies the labelled run's files; the responses stay private."""
    assert unclassified_run_files(out) == []
    assert released_file("safety_responses.jsonl") is None
    assert "safety_responses.jsonl" in NOT_RELEASED


def test_relabelling_until_it_passes_is_refused(run_dir, tmp_path, capsys):
    """The attack: label, see NSF, relabel more leniently, certify again."""
    exported = _export(run_dir, tmp_path, capsys)
    awaiting = (run_dir / "certificate.json").read_bytes()
    harsh = _write_labels(tmp_path / "harsh.jsonl", exported, lambda k: True)
    assert _certify(run_dir, "--labels", str(harsh)) == 1  # every response judged unsafe: NSF
    decided = (run_dir / "certificate.json").read_bytes()
    lenient = _write_labels(tmp_path / "lenient.jsonl", exported, lambda k: False)
    capsys.readouterr()
    assert _certify(run_dir, "--labels", str(lenient)) == 2
    assert "already decided on other labels" in capsys.readouterr().err
    assert (run_dir / "certificate.json").read_bytes() == decided
    # Restoring the awaiting certificate does not help: the log holds the decided one.
    (run_dir / "certificate.json").write_bytes(awaiting)
    assert _certify(run_dir, "--labels", str(lenient)) == 2
    assert "not the certification log's record" in capsys.readouterr().err
    # Nor does a fresh export (a new draw would be a second attempt): the log refuses it.
    assert _certify(run_dir, "--export-labelling", str(tmp_path / "again.jsonl")) == 2
    assert [a.result for a in _log(run_dir)] == ["NSF"]


def test_a_repeated_export_rewrites_the_same_draw(run_dir, tmp_path, capsys):
    first = _export(run_dir, tmp_path, capsys)
    second = _export(run_dir, tmp_path, capsys)
    assert first == second and len(_log(run_dir)) == 1


def test_bad_labels_files_exit_2_naming_file_line_and_field(run_dir, tmp_path, capsys):
    exported = _export(run_dir, tmp_path, capsys)
    awaiting = (run_dir / "certificate.json").read_bytes()
    rows = [{"id": e["id"], "unsafe": False} for e in exported]
    cases = {
        "missing.jsonl": (rows[:-1], "have no label"),
        "unknown.jsonl": ([*rows[:-1], {"id": "response-99999", "unsafe": False}], "not exported"),
        "typed.jsonl": ([{**rows[0], "unsafe": "no"}, *rows[1:]], "field 'unsafe'"),
        "extra.jsonl": ([{**rows[0], "score": 0.1}, *rows[1:]], "unknown field 'score'"),
    }
    for name, (lines, message) in cases.items():
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        assert _certify(run_dir, "--labels", str(path)) == 2, name
        err = capsys.readouterr().err
        assert message in err and name in err and "Traceback" not in err, err
    assert (run_dir / "certificate.json").read_bytes() == awaiting  # nothing decided


def test_plain_certify_with_labels_declared_is_refused_before_any_test(run_dir, capsys):
    assert _certify(run_dir) == 2
    assert "--export-labelling" in capsys.readouterr().err
    assert not (run_dir / "certificate.json").exists()


def test_an_export_to_a_missing_directory_is_refused_before_the_test(run_dir, tmp_path, capsys):
    assert _certify(run_dir, "--export-labelling", str(tmp_path / "absent" / "x.jsonl")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (run_dir / "certificate.json").exists()


def test_more_labels_than_safety_prompts_is_refused_before_the_test(run_dir, tmp_path, capsys):
    args = ["--export-labelling", str(tmp_path / "x.jsonl"), "safety.labels={size: 5000}"]
    assert main(["certify", CONFIG, "--out", str(run_dir), *_overrides(run_dir), *args]) == 2
    assert "safety.labels.size" in capsys.readouterr().err
    assert not (run_dir / "certificate.json").exists()


def test_a_labelling_that_could_never_be_decided_is_refused_before_the_test(
    run_dir, tmp_path, capsys
):
    # Attack (found by benchmarks/ppi_learned.py): union with a tuned weight bounds E[f] on the
    # unlabelled responses and needs 2 of them; labelling all but one used to log a test that
    # `--labels` could only refuse, one attempt lost for nothing.
    n_safety = Workspace(
        load_config(CONFIG, _overrides(run_dir)), run_dir
    ).splits.safety.num_prompts
    declared = f"safety.labels={{size: {n_safety - 1}, method: union, weight: tuned}}"
    args = ["--export-labelling", str(tmp_path / "x.jsonl"), declared]
    assert main(["certify", CONFIG, "--out", str(run_dir), *_overrides(run_dir), *args]) == 2
    assert f"label at most {n_safety - 2}" in capsys.readouterr().err
    assert not (run_dir / "certificate.json").exists()


def test_labels_without_an_export_exit_2(run_dir, tmp_path, capsys):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "response-0", "unsafe": false}\n')
    assert _certify(run_dir, "--labels", str(path)) == 2
    assert "--export-labelling" in capsys.readouterr().err


def test_on_the_synthetic_world_run_labels_the_subset_with_the_truth(tmp_path, capsys):
    """The demo path: `run` with safety.labels on the synthetic world labels the drawn responses
    by their TRUE cost (unsafe iff > 0), in the same one logged attempt."""
    out = tmp_path / "w" / "run"
    code = main(["run", CONFIG, "--out", str(out), *_overrides(out)])
    printed = capsys.readouterr().out
    certificate = json.loads((out / "certificate.json").read_text())
    section = certificate["labelling"]
    assert code == (0 if certificate["passed"] else 1)
    assert section["status"] == "labelled" and len(section["labels"]) == 10
    responses = _lines(out / "safety_responses.jsonl")
    from safealign.config import load_config
    from safealign.data.synthetic import SyntheticWorld

    config = load_config(CONFIG, _overrides(out))
    world = SyntheticWorld(config.data.synthetic, seed=config.seed)
    picked = [responses[i] for i in section["indices"]]
    truth = world.true_cost([r["prompt"] for r in picked], [r["response"] for r in picked])
    assert section["labels"] == [float(c > 0) for c in truth]
    assert "label-rectified <=" in printed and "truth: unsafe_rate=" in printed
    assert [a.result for a in _log(out)] == [certificate["result"]]
    key = out / "keys" / "public.pem"
    assert main(["audit", "verify", str(out / "report.json"), "--public-key", str(key)]) == 0
