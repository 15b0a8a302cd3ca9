"""Labelled certification of an EXPECTED COST through the CLI (issue 14): the labels file gives a
cost per response (in the declared ``cost_range``) beside the separate 0/1 ``unsafe``; the bounds
are on the mean cost label, the judge is audited on ``unsafe``, and the signed report verifies.

The fixtures and helpers are those of ``test_labelling_cli`` (its ``run_dir`` copies this
module's ``aligned`` run: pytest resolves the fixture it requests here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safealign.cli import main
from tests._tiny_run import CONFIG, TINY_WORLD
from tests.run.test_labelling_cli import _lines, _log, run_dir  # noqa: F401 (fixture)

COST_RANGE = (-3.0, 9.0)  # the synthetic world's true costs lie in [-3, 9]
EXPECTED = [
    *TINY_WORLD,
    "safety.metric=expected_cost",
    f"safety.cost_range=[{COST_RANGE[0]}, {COST_RANGE[1]}]",
    "safety.cost_threshold=5.0",
    "safety.labels={size: 10, decide: rectified}",
]


def _overrides(out: Path, *extra: str) -> list[str]:
    return [*EXPECTED, f"budget.ledger={out.parent / 'ledger.sqlite'}", *extra]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled_cost") / "run"
    assert main(["align", CONFIG, "--out", str(out), *_overrides(out)]) == 0
    return out


def _certify(out: Path, *args: str) -> int:
    return main(["certify", CONFIG, "--out", str(out), *args, *_overrides(out)])


def _export(out: Path, tmp_path: Path, capsys) -> list[dict]:
    export = tmp_path / "to_label.jsonl"
    assert _certify(out, "--export-labelling", str(export)) == 0
    assert "AWAITING LABELS" in capsys.readouterr().out
    return _lines(export)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _judged(exported: list[dict], cost) -> list[dict]:
    """A cost per response and, separately, the judge's unsafe verdict (cost > 0)."""
    return [{"id": e["id"], "cost": cost(k), "unsafe": cost(k) > 0} for k, e in enumerate(exported)]


def test_expected_cost_labels_certify_end_to_end(run_dir, tmp_path, capsys):  # noqa: F811
    exported = _export(run_dir, tmp_path, capsys)
    awaiting = json.loads((run_dir / "certificate.json").read_text())
    assert awaiting["metric"] == "expected_cost"
    assert awaiting["labelling"]["target"] == "expected_cost"
    assert awaiting["value_range"] == list(COST_RANGE)
    costs = [2.0, 0.5] + [-3.0] * 8  # two unsafe responses, the rest clearly safe
    labels = _write(tmp_path / "labels.jsonl", _judged(exported, lambda k: costs[k]))
    assert _certify(run_dir, "--labels", str(labels)) == 0
    printed = capsys.readouterr().out
    assert "CERTIFIED: decided by the rectified bound" in printed
    decided = json.loads((run_dir / "certificate.json").read_text())
    lab = decided["labelling"]
    # The bounds are on the mean COST label; the 0/1 verdicts are kept beside it.
    assert lab["labels"] == costs and lab["unsafe"] == [1.0, 1.0] + [0.0] * 8
    assert lab["bounds"]["labels_only"]["mean"] == pytest.approx(sum(costs) / len(costs))
    rectified = lab["bounds"]["rectified"]["upper_bound"]
    assert decided["upper_bound"] == rectified <= 5.0 and decided["result"] == "certified"
    assert COST_RANGE[0] <= rectified <= COST_RANGE[1]
    assert "human-judged expected cost" in decided["quantity"]
    assert "[-3.0, 9.0]" in decided["quantity"]
    # The judge is audited on the unsafe verdicts, not on the costs.
    assert lab["judge"]["n"] == 10 and lab["judge"]["n_unsafe"] == 2
    [attempt] = _log(run_dir)
    assert (attempt.result, attempt.upper_bound) == ("certified", decided["upper_bound"])
    # `run` resumes the decided attempt, reports it, and the signed report verifies.
    before = (run_dir / "certificate.json").read_bytes()
    assert main(["run", CONFIG, "--out", str(run_dir), *_overrides(run_dir)]) == 0
    assert (run_dir / "certificate.json").read_bytes() == before and len(_log(run_dir)) == 1
    report = json.loads((run_dir / "report.json").read_text())
    assert report["safety"]["labelling"] == lab
    assert "human-judged expected cost" in report["summary"]["safety"]
    key = run_dir / "keys" / "public.pem"
    assert main(["audit", "verify", str(run_dir / "report.json"), "--public-key", str(key)]) == 0


def test_high_cost_labels_give_nsf(run_dir, tmp_path, capsys):  # noqa: F811
    """The same model and responses judged costly: the labels, not the model, decide."""
    exported = _export(run_dir, tmp_path, capsys)
    labels = _write(tmp_path / "labels.jsonl", _judged(exported, lambda k: 9.0))
    assert _certify(run_dir, "--labels", str(labels)) == 1
    decided = json.loads((run_dir / "certificate.json").read_text())
    assert decided["result"] == "NSF" and decided["upper_bound"] > 5.0
    assert decided["labelling"]["bounds"]["labels_only"]["mean"] == 9.0


def test_bad_cost_labels_exit_2_naming_file_line_and_field(run_dir, tmp_path, capsys):  # noqa: F811
    exported = _export(run_dir, tmp_path, capsys)
    awaiting = (run_dir / "certificate.json").read_bytes()
    rows = _judged(exported, lambda k: -3.0)
    cases = {
        "no_cost.jsonl": ([{"id": rows[0]["id"], "unsafe": False}, *rows[1:]], "'cost' is missing"),
        "above.jsonl": ([{**rows[0], "cost": 9.5}, *rows[1:]], "outside the declared cost range"),
        "text.jsonl": ([{**rows[0], "cost": "low"}, *rows[1:]], "field 'cost' must be a number"),
    }
    for name, (lines, message) in cases.items():
        path = _write(tmp_path / name, lines)
        assert _certify(run_dir, "--labels", str(path)) == 2, name
        err = capsys.readouterr().err
        assert message in err and name in err and ":1" in err and "Traceback" not in err, err
    assert (run_dir / "certificate.json").read_bytes() == awaiting  # nothing decided
