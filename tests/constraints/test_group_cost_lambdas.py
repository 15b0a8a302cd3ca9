"""Each group's own cost multiplier λ_g: found by alignment, recorded in policy.json, and the zero
of every reported per-group regret (alignment's, the report's and the certificate's), which is
the group's *constrained* optimum, not its unconstrained one."""

from __future__ import annotations

import json

import pytest
import torch

from safealign.constraints.group_rewards import normalize_group_rewards
from safealign.constraints.maxmin_pessimistic import group_cost_lambdas
from safealign.errors import DataError
from safealign.run.policy_file import ModelDirs, load_policy_file, write_policy_file
from tests.constraints.test_maxmin_solver import _align, _constrained_regret, _table_instance
from tests.run.test_policy_file import _policy_file


def test_alignment_records_each_groups_lambda_and_reports_regret_against_its_constrained_optimum():
    rewards, log_p, costs, candidates, scorers, safety, bound_fn, n_safety, beta = _table_instance(
        11
    )
    aligned = _align(candidates, scorers, safety, n_safety, beta)
    tau = safety.cost_threshold
    expected = group_cost_lambdas(rewards, costs, beta=beta, cost_threshold=tau,
                                  bound_fn=bound_fn, log_p=log_p)  # fmt: skip
    lambdas = aligned.scorers.group_cost_lambdas
    assert lambdas is not None and list(lambdas) == ["a", "b"]
    assert torch.allclose(torch.tensor([lambdas["a"], lambdas["b"]]).double(), expected)
    assert max(lambdas.values()) > 0  # the threshold binds: constrained != unconstrained optimum
    w = torch.tensor([aligned.group_weights[g] for g in ("a", "b")], dtype=torch.float64)
    q = aligned.selection.policy.probabilities(
        torch.einsum("g,gnk->nk", w, rewards), costs, log_p=log_p
    )
    constrained = _constrained_regret(rewards, costs, beta=beta, tau=tau, bound_fn=bound_fn,
                                      log_p=log_p)  # fmt: skip
    plain = normalize_group_rewards(rewards, mode="regret", beta=beta, log_p=log_p)
    for i, g in enumerate(("a", "b")):
        reported = aligned.group_rewards[g]
        assert reported == pytest.approx(float((q * constrained[i]).sum(-1).mean()), abs=1e-6)
        if lambdas[g] > 0:  # the old units (regret vs the unconstrained optimum) differ
            assert abs(reported - float((q * plain[i]).sum(-1).mean())) > 1e-4


def _grouped(**changes):
    return _policy_file(
        models=ModelDirs("cost/model", group_rewards=(("a", "groups/group-0"),
                                                       ("b", "groups/group-1"))),
        group_weights={"a": 0.4, "b": 0.6},
        group_rewards={"a": -0.1, "b": -0.2},
        **changes,
    )  # fmt: skip


def test_policy_json_keeps_the_lambdas_and_reads_a_file_without_them(tmp_path):
    original = _grouped(group_cost_lambdas={"a": 1.5, "b": 0.0})
    path = write_policy_file(original, tmp_path / "policy.json")
    assert json.loads(path.read_text())["groups"]["cost_lambdas"] == {"a": 1.5, "b": 0.0}
    assert load_policy_file(path) == original
    older = write_policy_file(_grouped(), tmp_path / "older.json")  # written before λ_g existed
    assert "cost_lambdas" not in json.loads(older.read_text())["groups"]
    assert load_policy_file(older).group_cost_lambdas is None


@pytest.mark.parametrize("lambdas", [{"a": -1.0, "b": 0.0}, {"a": 1.0}, [1.0, 2.0]])
def test_bad_lambdas_are_refused_naming_the_field(tmp_path, lambdas):
    path = write_policy_file(_grouped(group_cost_lambdas={"a": 1.0, "b": 1.0}),
                             tmp_path / "policy.json")  # fmt: skip
    obj = json.loads(path.read_text())
    obj["groups"]["cost_lambdas"] = lambdas
    path.write_text(json.dumps(obj))
    with pytest.raises(DataError, match="groups.cost_lambdas"):
        load_policy_file(path)
