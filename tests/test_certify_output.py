"""`safealign certify` states the group bounds' coverage as the certificate does: the default
simultaneous bounds were printed as "not simultaneously" before."""

from __future__ import annotations

from safealign.cli.certify import _print_group_bounds
from safealign.constraints.group_bounds import _note


def _block(simultaneous: bool) -> dict:
    entry = {"cost_upper_bound": 0.1, "reward_lower_bound": 0.2, "n": 50, "prompts": "own"}
    note = _note(0.95, 2, "betting", "betting", simultaneous=simultaneous)
    return {"groups": {"majority": entry, "minority": entry}, "reward_normalization": "regret",
            "metric": "predicted_unsafe_probability", "simultaneous": simultaneous, "note": note}  # fmt: skip


def test_simultaneous_group_bounds_are_not_printed_as_per_group(capsys):
    _print_group_bounds(_block(True))
    out = capsys.readouterr().out
    assert "Simultaneous: all 4 group bounds hold together" in out
    assert "not simultaneously" not in out


def test_per_group_bounds_say_so(capsys):
    _print_group_bounds(_block(False))
    assert "not simultaneously" in capsys.readouterr().out
