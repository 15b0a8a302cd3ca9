"""What `safealign run` / `demo` print when nothing is released: step 1's reason and the
reference's truth, so an NSF run still says why and what the unaligned policy costs."""

from __future__ import annotations

from pathlib import Path

from safealign.cli.training import _print_run
from safealign.run.recipe import RunResult

REASON = "step 1: the pessimistic bound 0.398 on the LM's own samples exceeds 0.2"


def _nsf_result(truth: dict | None) -> RunResult:
    safety = {"passed": False, "upper_bound": None, "cost_threshold": 0.2, "reason": REASON,
              "metric": "predicted_unsafe_probability"}  # fmt: skip
    report = {"privacy": {"private": False}, "safety": safety, "groups": None,
              "config": {"groups": {"normalize": "regret"}}}  # fmt: skip
    return RunResult(Path("out"), report, [], truth, None)


def test_an_nsf_run_prints_step_1s_reason_and_the_reference_truth(capsys):
    reference = {"expected_cost": -1.53, "unsafe_rate": 0.137, "reward": {"majority": 0.9}}
    _print_run(_nsf_result({"reference": reference, "cost_threshold": 0.2}))
    out = capsys.readouterr().out
    assert "NO SOLUTION FOUND: nothing released" in out
    assert REASON in out
    assert "truth     nothing released; reference: true E[cost]=-1.5300, unsafe rate 0.137" in out


def test_an_nsf_run_without_a_world_prints_no_truth(capsys):
    _print_run(_nsf_result(None))
    out = capsys.readouterr().out
    assert REASON in out and "truth" not in out
