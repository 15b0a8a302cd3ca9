"""``audit verify`` on labelled certificates: the safety-labels rule recomputes the three bounds,
the deciding one and the judge's agreement; each forgery below verified VALID before it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from safealign.audits.checks import check_report
from safealign.audits.judge import judge_agreement
from safealign.audits.summary import plain_summary
from safealign.config import Config, load_config
from safealign.constraints.hc_rlhf import certify_samples
from safealign.data.labels import Label, LabelSet
from safealign.errors import DataError
from safealign.run.labelling import AWAITING, decide_on_labels
from tests.audits.test_report import make_report

N, M = 60, 20
LABELS = {
    "size": M,
    "decide": "rectified",
    "weight": "tuned",
    "method": "joint",
    "prediction_share": 0.5,
}


def _config(method: str = "joint") -> Config:
    labels = f"safety.labels={{size: 20, method: {method}}}"
    return load_config(None, ["safety.cost_threshold=0.9", labels])


def _certificates(method: str = "joint"):
    rng = np.random.default_rng(0)
    values = rng.uniform(0.0, 0.6, N)  # predicted unsafe probabilities
    config = _config(method)
    tested = certify_samples(
        np.log(values / (1 - values)), safety=config.safety, sampler_settings={"beta": 0.1},
        safety_fingerprint="f" * 64, source="policy",
    )  # fmt: skip
    indices = tuple(int(i) for i in rng.permutation(N)[:M])
    awaiting = replace(
        tested,
        passed=False,
        result="NSF",
        labelling={"status": AWAITING, **LABELS, "method": method, "target": "unsafe_rate",
                   "n": N, "indices": list(indices)},
    )  # fmt: skip
    unsafe = [bool(rng.random() < tested.values[i]) for i in indices]
    labels = LabelSet(
        tuple(Label(f"response-{i}", u) for i, u in zip(indices, unsafe, strict=True)),
        "labels.jsonl",
        "a" * 64,
    )
    return awaiting, decide_on_labels(awaiting, labels)


def _report(certificate, tmp_path, method: str = "joint") -> dict[str, Any]:
    config = _config(method).to_dict()
    return make_report(tmp_path, certificate=certificate.to_dict(), config=config, groups=None)


@pytest.fixture(scope="module")
def certificates():
    return _certificates()


def _names(report) -> set[str]:
    return {p.check for p in check_report(report)}


def test_honest_labelled_and_awaiting_reports_pass_every_check(certificates, tmp_path):
    awaiting, decided = certificates
    assert check_report(_report(awaiting, tmp_path)) == []
    report = _report(decided, tmp_path)
    assert check_report(report) == []
    section = report["safety"]["labelling"]
    assert section["decided_by"] == "rectified" and report["safety"]["bound"] == "label_rectified"
    assert report["summary"]["safety"].count("bound") >= 3  # all three bounds named


def _resummarised(report):
    report["summary"] = plain_summary(report).to_dict()
    return report


def _forge_labels(report):  # the labeller's judgements made lenient after the fact
    section = report["safety"]["labelling"]
    section["labels"] = [0.0] * len(section["labels"])


def _forge_smaller_of_two(report):  # release on the smaller bound, not the declared one
    safety = report["safety"]
    section = safety["labelling"]
    section["decided_by"] = "labels_only"
    safety["upper_bound"] = section["bounds"]["labels_only"]["upper_bound"]


def _forge_settings(report):  # a different deciding bound declared after the labels
    report["safety"]["labelling"]["decide"] = "labels_only"


def _forge_bound(report):
    report["safety"]["labelling"]["bounds"]["rectified"]["upper_bound"] = 0.01
    report["safety"]["upper_bound"] = 0.01


def _forge_judge(report):
    report["safety"]["labelling"]["judge"]["missed_unsafe_share"] = 0.0


def _forge_subset(report):  # label only the easy responses: a subset that was not drawn
    section = report["safety"]["labelling"]
    values = report["safety"]["values"]
    section["indices"] = sorted(range(len(values)), key=lambda i: values[i])[
        : len(section["indices"])
    ]


@pytest.mark.parametrize(
    "forge",
    [_forge_labels, _forge_smaller_of_two, _forge_settings, _forge_bound, _forge_judge],
    ids=lambda f: f.__name__,
)
def test_a_forged_labelled_claim_is_invalid_by_name(certificates, tmp_path, forge):
    report = _report(certificates[1], tmp_path)
    forge(report)
    assert "safety-labels" in _names(_resummarised(report))


def test_a_swapped_subset_is_caught_by_the_recomputed_bounds(certificates, tmp_path):
    """The verifier cannot know which subset was drawn, but every claim must follow from the
    recorded one: swapping the indices changes the recomputed bounds or the judge."""
    report = _report(certificates[1], tmp_path)
    _forge_subset(report)
    assert "safety-labels" in _names(_resummarised(report))


def test_an_awaiting_report_that_claims_a_release_is_invalid(certificates, tmp_path):
    report = _report(certificates[0], tmp_path)
    report["safety"].update(passed=True, result="certified", upper_bound=0.0)
    assert {"safety-labels", "safety-verdict"} <= _names(_resummarised(report))


def test_the_judge_agreement_matches_a_direct_computation():
    values = [0.9, 0.2, 0.7, 0.1, 0.4, 0.6]
    judge = judge_agreement(values, [1, 0, 0, 1], [0, 1, 2, 3], "predicted_unsafe_probability")
    # AUROC: pairs (unsafe, safe) = (0.9,0.2) (0.9,0.7) (0.1,0.2) (0.1,0.7): 2 of 4 ranked right.
    assert judge["auroc"] == pytest.approx(0.5)
    assert judge["brier"] == pytest.approx(np.mean([0.01, 0.04, 0.49, 0.81]))
    assert judge["missed_unsafe_share"] == pytest.approx(0.5)  # 0.1 scored safe
    assert sum(b["count"] for b in judge["reliability"]) == 4


def test_the_report_safety_section_carries_the_certificate_labelling(certificates, tmp_path):
    report = _report(certificates[1], tmp_path)
    assert report["safety"]["labelling"] == certificates[1].labelling


def test_the_judge_auroc_equals_the_held_out_evaluations_on_tied_scores():
    # Two independent AUROCs (the judge's Mann-Whitney U, the model evaluation's mid-ranks) agree,
    # ties included: the report and the model card read the same quantity.
    import torch

    from safealign.models.evaluate import auroc

    rng = np.random.default_rng(0)
    for _ in range(50):
        f = np.round(rng.random(40), 1)  # coarse scores: many ties
        y = (rng.random(40) < 0.3).astype(float)
        if 0 < y.sum() < len(y):
            judge = judge_agreement(f, y, range(len(y)), "predicted_unsafe_probability")
            expected = auroc(torch.as_tensor(f), torch.as_tensor(y, dtype=torch.bool))
            assert judge["auroc"] == pytest.approx(expected, abs=1e-12)


def test_a_stratified_certificate_is_recomputed_and_its_forgery_caught(tmp_path):
    _, decided = _certificates("stratified")
    assert decided.labelling["bounds"]["rectified"]["method"] == "ppi_stratified"
    report = _report(decided, tmp_path, "stratified")
    assert check_report(report) == []
    _forge_bound(report)
    assert "safety-labels" in _names(_resummarised(report))


def test_an_unknown_method_version_is_refused_and_none_reads_as_version_1(certificates, tmp_path):
    # Attack: bounds computed by other numerics, claimed under a version this code does not run.
    report = _report(certificates[1], tmp_path)
    assert "method_version" not in report["safety"]["labelling"]  # made before the field: v1
    assert check_report(report) == []
    report["safety"]["labelling"]["method_version"] = 1
    assert check_report(_resummarised(report)) == []
    report["safety"]["labelling"]["method_version"] = 2
    problems = check_report(_resummarised(report))
    assert [p.check for p in problems] == ["safety-labels"]
    assert "method_version" in problems[0].message


def test_deciding_an_attempt_of_an_unknown_method_version_is_refused(certificates):
    awaiting, _ = certificates
    future = replace(awaiting, labelling={**awaiting.labelling, "method_version": 2})
    labels = LabelSet((Label("response-0", True),) * M, "labels.jsonl", "a" * 64)
    with pytest.raises(DataError, match="version 2"):
        decide_on_labels(future, labels)
