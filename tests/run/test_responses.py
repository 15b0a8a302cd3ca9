"""``certify --responses`` checks every input before the one-shot test is logged.

A test on a safety set is logged (the certification log allows ``safety.attempts`` of them), so a
fault found after the log's ``begin`` either costs an attempt (a crash after the test ran) or
reaches the user as a message about the bound, not about the file. Every fault of the inputs
must be found first: exit 2, naming file, line and field, and the log untouched.
"""

from __future__ import annotations

import json

import pytest

from safealign.cli import main
from safealign.constraints.attempts import LOG_FILE
from safealign.privacy.identity import default_data_dir
from tests import test_byo

TINY = test_byo.TINY
cost_model_dir = test_byo.cost_model_dir  # the same tiny trained cost model (a fixture)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(world, n=12):
    return [
        {"prompt": p, "response": "Sure thing! Step 1: gather things."} for p in world.prompts[:n]
    ]


def _certify(tmp_path, model_dir, responses, *overrides, out=None):
    settings = tmp_path / "sampler.json"
    settings.write_text(json.dumps({"model": "my-llm-v3", "temperature": 0.7}))
    return main(
        [
            "certify",
            "examples/synthetic.yaml",
            "--responses",
            str(responses),
            "--sampler-settings",
            str(settings),
            "--cost-model",
            str(model_dir),
            "--out",
            str(out or tmp_path / "cert"),
            "safety.cost_threshold=1.0",
            *overrides,
        ]
    )


def _log_untouched() -> bool:
    return not (default_data_dir() / LOG_FILE).exists()


def test_attack_a_repeated_prompt_names_its_line_and_field(cost_model_dir, tmp_path, capsys):
    model_dir, world = cost_model_dir
    rows = _rows(world)
    rows.append({"prompt": "  " + rows[3]["prompt"].upper() + " ", "response": "again"})
    path = _write(tmp_path / "samples.jsonl", rows)
    assert _certify(tmp_path, model_dir, path) == 2
    err = capsys.readouterr().err
    assert f"{path}:13:" in err and "'prompt'" in err and "line 4" in err, err
    assert _log_untouched()


@pytest.mark.parametrize(
    ("n", "overrides", "why"),
    [
        (1, (), "at least 2"),
        (12, ("safety.bound=student_t",), "student_t"),
    ],
)
def test_attack_too_few_responses_are_refused_before_the_test_is_logged(
    cost_model_dir, tmp_path, capsys, n, overrides, why
):
    """Old code refused these inside the logged test: the log was opened and an attempt begun
    (then withdrawn), and the message named the bound, not the file."""
    model_dir, world = cost_model_dir
    path = _write(tmp_path / "samples.jsonl", _rows(world, n))
    assert _certify(tmp_path, model_dir, path, *overrides) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and why in err, err
    assert _log_untouched()


def test_attack_an_unwritable_certificate_costs_no_attempt(cost_model_dir, tmp_path, capsys):
    """A certificate path that cannot be written (here a directory) failed only after the test
    had run: its attempt stayed in the log as started, one of ``safety.attempts`` gone."""
    model_dir, world = cost_model_dir
    out = tmp_path / "cert"
    (out / "certificate.json").mkdir(parents=True)
    path = _write(tmp_path / "samples.jsonl", _rows(world))
    assert _certify(tmp_path, model_dir, path, out=out) == 2
    assert "certificate.json" in capsys.readouterr().err
    assert _log_untouched()


def test_good_responses_are_still_tested_and_logged(cost_model_dir, tmp_path):
    model_dir, world = cost_model_dir
    path = _write(tmp_path / "samples.jsonl", _rows(world))
    assert _certify(tmp_path, model_dir, path) == 0
    assert not _log_untouched()
    assert json.loads((tmp_path / "cert" / "certificate.json").read_text())["n"] == 12
