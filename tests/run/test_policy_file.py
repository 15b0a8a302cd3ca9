"""policy.json: a write/load round trip, and errors that name the file and the field."""

from __future__ import annotations

import json

import pytest

from safealign.constraints.tilting import TiltedPolicy
from safealign.errors import ConfigError, DataError
from safealign.run.policy_file import (
    ModelDirs,
    PolicyFile,
    check_policy_file_matches,
    load_policy_file,
    write_policy_file,
)

SAFETY = {
    "metric": "expected_cost",
    "cost_threshold": 0.0,
    "confidence": 0.95,
    "bound": "student_t",
}
DATA = {
    "dataset": "synthetic",
    "dataset_fingerprint": "a" * 64,
    "split_fingerprints": {"train": "b" * 64, "safety": "c" * 64},
    "n_safety": 20,
}
SAMPLER = {"source": "synthetic world reference policy", "num_candidates": 4, "world_seed": 0}


def _policy_file(**changes) -> PolicyFile:
    fields = {
        "policy": TiltedPolicy(
            beta=0.1, lambda_=2.5, num_candidates=4, reference_sampler=SAMPLER, seed=0
        ),
        "reason": "",
        "selection": {"lambda": 2.5, "selection_bound": -0.1, "n_opt": 30, "n_safety": 20},
        "safety": SAFETY,
        "group_weights": None,
        "group_rewards": None,
        "models": ModelDirs("cost/model", "reward/model"),
        "candidates": {"source": "reference_sampler", "reference_sampler": SAMPLER},
        "data": DATA,
    }
    fields["selection"] = {
        **dict.fromkeys(
            (
                "method",
                "metric",
                "feasible",
                "pessimism_k",
                "cost_threshold",
                "mean_cost",
                "std_cost",
                "expected_reward",
                "requires_safety_test",
            )
        ),
        **fields["selection"],
    }
    return PolicyFile(**{**fields, **changes})


@pytest.mark.parametrize(
    "models",
    [
        ModelDirs("cost/model", "reward/model"),
        ModelDirs("cost/model", group_rewards=(("b", "groups/group-0"), ("a", "groups/group-1"))),
    ],
)
def test_round_trip_keeps_the_policy_and_the_group_order(tmp_path, models):
    grouped = models.group_rewards is not None
    original = _policy_file(
        models=models,
        group_weights={"b": 0.25, "a": 0.75} if grouped else None,
        group_rewards={"b": 0.1, "a": 0.1} if grouped else None,
    )
    path = write_policy_file(original, tmp_path / "policy.json")
    loaded = load_policy_file(path)
    assert loaded == original
    assert loaded.policy.sampler_settings() == original.policy.sampler_settings()


def test_a_policy_of_none_round_trips_with_its_reason(tmp_path):
    original = _policy_file(policy=None, reason="infeasible: tau < min c")
    loaded = load_policy_file(write_policy_file(original, tmp_path / "policy.json"))
    assert loaded.policy is None and loaded.reason == "infeasible: tau < min c"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(kind="something.else"), "field 'kind' is 'something.else'"),
        (lambda d: d.update(version=99), "field 'version' is 99"),
        (lambda d: d["policy"].update(beta=-1), "field 'policy' is not a valid tilted policy"),
        (lambda d: d["policy"].pop("lambda"), "field 'policy.lambda' is missing"),
        (lambda d: d["models"].update(cost=3), "field 'models.cost' must be a JSON string"),
        (lambda d: d.update(groups={"weights": {"a": 1.0}}), "field 'groups.rewards' is missing"),
        (
            lambda d: d.update(groups={"weights": {"a": 1.0}, "rewards": None}),
            "field 'models.group_rewards' must be a JSON array (got None)",
        ),
        (
            lambda d: d.update(
                groups={"weights": {"a": 1.0}, "rewards": None},
                models={"cost": "c", "group_rewards": [{"name": "b", "model": "m"}]},
            ),
            "field 'models.group_rewards' must list one model per group of groups.weights (a)",
        ),
        (lambda d: d["selection"].pop("n_opt"), "field 'selection.n_opt' is missing"),
        (lambda d: d["candidates"].update(source="x"), "field 'candidates.source' is 'x'"),
        (lambda d: d["data"].pop("n_safety"), "field 'data.n_safety' is missing"),
    ],
)
def test_bad_content_names_the_file_and_field(tmp_path, edit, message):
    path = write_policy_file(_policy_file(), tmp_path / "policy.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="policy.json: ") as info:
        load_policy_file(path)
    assert message in str(info.value)


def test_missing_and_non_json_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_policy_file(tmp_path / "policy.json")
    (tmp_path / "policy.json").write_text("{not json")
    with pytest.raises(DataError, match="policy.json: not valid JSON"):
        load_policy_file(tmp_path / "policy.json")


def test_certification_config_must_match_the_aligned_one():
    policy_file = _policy_file()
    check_policy_file_matches(
        policy_file, "p.json", safety=SAFETY, data=DATA, reference_sampler=SAMPLER
    )
    with pytest.raises(ConfigError) as info:
        check_policy_file_matches(
            policy_file,
            "p.json",
            safety={**SAFETY, "confidence": 0.9},
            data={**DATA, "split_fingerprints": {"train": "b" * 64, "safety": "d" * 64}},
            reference_sampler={**SAMPLER, "num_candidates": 8},
        )
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("safety.confidence: the policy was selected for 0.95")
    assert "splits the data differently" in problems[1]
    assert "reference sampler" in problems[2]
