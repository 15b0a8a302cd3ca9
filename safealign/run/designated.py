"""Labelled certification on a designated safety set (``safety.prompts``): the decision over
the set's own recorded responses, and the check that the set did not change after the export.

:mod:`safealign.run.labelling` runs the logged attempt (export, then labels) exactly as on the
data's split; what differs is what is bounded (:mod:`safealign.constraints.designated`): the
share of the set's N recorded responses the judges call unsafe, a finite population, bounded
using only the random draw of the labelled subset.
"""

from __future__ import annotations

from dataclasses import replace

from safealign.audits.judge import judge_agreement
from safealign.constraints.certificate import CERTIFIED, LABELLED_BOUNDS, NSF, Certificate
from safealign.constraints.designated import (
    population_assumptions,
    population_bounds,
    population_quantities,
)
from safealign.constraints.ppi import LabelSubset
from safealign.data.io import iter_json_lines
from safealign.data.labels import LabelSet
from safealign.errors import ConfigError
from safealign.run.workspace import Workspace


def set_truth(ws: Workspace) -> dict | None:
    """The synthetic world's truth about the quantity a labelled designated certificate bounds:
    the TRUE unsafe share (and mean true cost) of the set's N recorded responses. None without a
    world, a designated set, or kept responses (``safety_responses.jsonl``, labelled runs only)."""
    path = ws.paths.safety_responses
    if ws.world is None or ws.config.safety.prompts is None or not path.is_file():
        return None
    rows = [obj for _, obj in iter_json_lines(path)]
    cost = ws.world.true_cost([r["prompt"] for r in rows], [r["response"] for r in rows])
    return {
        "responses": len(rows),
        "unsafe_rate": float((cost > 0).mean()),
        "expected_cost": float(cost.mean()),
    }


def check_same_set(ws: Workspace, current: Certificate) -> None:
    """The config's designated set must be the one the attempt sampled (no swap after export)."""
    if ws.config.safety.prompts is None and current.safety_set is None:
        return
    recorded = (current.safety_set or {}).get("name", "the data's safety split")
    if (
        ws.config.safety.prompts is None
        or ws.splits.safety.fingerprint != current.safety_fingerprint
    ):
        raise ConfigError(
            f"safety.prompts: the attempt awaiting labels sampled {recorded} (fingerprint "
            f"{str(current.safety_fingerprint)[:12]}...); the config's safety set is another one: "
            "the labels decide that attempt only. Restore its prompt file, or certify a new policy "
            "on the new set"
        )


def decide_population(
    awaiting: Certificate, labels: LabelSet, y, subset: LabelSubset, *, status: str
) -> Certificate:
    """A designated set's labelled decision: the three finite-population bounds
    (:func:`~safealign.constraints.designated.population_bounds`) on its recorded responses."""
    section, record = awaiting.labelling, awaiting.safety_set
    target, decide = section["target"], section["decide"]
    bounds = population_bounds(
        awaiting.values, y, subset, target=target, confidence=awaiting.confidence,
        value_range=awaiting.value_range, weight=section["weight"],
        method=section["method"],
    )  # fmt: skip
    words = population_quantities(target, record)
    passed = bool(bounds[decide] <= awaiting.cost_threshold)
    decided_section = {
        **{k: v for k, v in section.items() if k != "status"},
        "status": status,
        "population": True,
        "labels": list(y),
        **({"unsafe": list(labels.unsafe)} if target == "expected_cost" else {}),
        "labels_sha256": labels.fingerprint,
        "decided_by": decide,
        "bounds": {name: {"upper_bound": bounds[name], "quantity": words[name]} for name in words},
        "judge": judge_agreement(awaiting.values, labels.unsafe, subset.indices, awaiting.metric),
    }
    return replace(
        awaiting,
        bound=LABELLED_BOUNDS[decide],
        mean=float(sum(y) / len(y)),
        std=None,
        upper_bound=bounds[decide],
        passed=passed,
        result=CERTIFIED if passed else NSF,
        quantity=words[decide],
        approximate=False,
        assumptions=population_assumptions(record, decide),
        labelling=decided_section,
    )
