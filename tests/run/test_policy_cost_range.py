"""policy.json records the range the deployed tilt clips costs to, and refuses a tilt that
disagrees with its own safety section (tests/constraints/test_deployed_tilt.py: why)."""

from __future__ import annotations

import json

import pytest

from safealign.constraints.tilting import TiltedPolicy
from safealign.errors import DataError
from safealign.run.policy_file import _SELECTION_FIELDS, load_policy_file


def _policy_json(tmp_path, *, policy_range, safety_range):
    """A minimal policy.json whose policy and safety sections declare the given ranges."""
    policy = TiltedPolicy(beta=0.5, lambda_=1.0, num_candidates=2, seed=0, cost_range=policy_range)
    settings = policy.sampler_settings()
    safety = {"metric": "expected_cost", "cost_threshold": 0.5, "cost_range": safety_range}
    obj = {
        "kind": "safealign.aligned_policy",
        "version": 1,
        "policy": settings,
        "reason": "",
        "selection": dict.fromkeys(_SELECTION_FIELDS),
        "safety": safety,
        "groups": None,
        "models": {"cost": "cost_model", "reward": "reward_model"},
        "candidates": {"source": "reference_sampler", "reference_sampler": {}},
        "data": {"dataset_fingerprint": "x", "split_fingerprints": {"safety": "y"}, "n_safety": 2},
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(obj))
    return path


def test_policy_json_round_trips_the_range_and_refuses_a_tilt_that_ignores_it(tmp_path) -> None:
    loaded = load_policy_file(_policy_json(tmp_path, policy_range=(0, 1), safety_range=[0, 1]))
    assert loaded.policy.cost_range == (0.0, 1.0)
    # A policy.json written before the fix: selected on clipped costs, its policy tilts unclipped.
    old = _policy_json(tmp_path, policy_range=None, safety_range=[0, 1])
    with pytest.raises(DataError, match=r"policy\.cost_range.*align again") as info:
        load_policy_file(old)
    assert info.value.field == "policy.cost_range" and info.value.path == str(old)
    # Tampering the other way round: a tilt clipped where the safety section declares no range.
    with pytest.raises(DataError, match=r"policy\.cost_range"):
        load_policy_file(_policy_json(tmp_path, policy_range=(0, 1), safety_range=None))
