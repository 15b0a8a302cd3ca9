"""The certificate is one frozen type from the safety test to the report: tested or not, it is a
dict only when written, and what is written reads back as the same certificate."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from safealign.config import SafetyConfig
from safealign.constraints.hc_rlhf import (
    Certificate,
    certify_samples,
    untested_certificate,
    write_certificate,
)
from safealign.errors import DataError

#: The keys of the hand-built "no test" certificate that the typed one replaced (byte-compatible).
UNTESTED_KEYS = {
    "metric", "cost_threshold", "confidence", "bound", "n", "mean", "std", "upper_bound",
    "passed", "result", "sampler_settings", "safety_fingerprint", "source", "assumptions",
    "value_range", "reason",
}  # fmt: skip


def test_the_certificate_of_no_test_keeps_its_fields_and_reads_back(tmp_path):
    safety = SafetyConfig(cost_threshold=0.2, confidence=0.9)
    certificate = untested_certificate(safety, reason="tau < min c", safety_fingerprint="f")
    data = certificate.to_dict()
    assert set(data) == UNTESTED_KEYS
    assert (data["n"], data["upper_bound"], data["mean"], data["result"]) == (0, None, None, "NSF")
    assert data["bound"] == safety.resolved_bound and data["source"] == "selection"
    assert not certificate.tested
    path = write_certificate(certificate, tmp_path / "certificate.json")
    assert Certificate.from_dict(json.loads(path.read_text())) == certificate


def test_a_tested_certificate_with_its_log_record_reads_back_equal(tmp_path):
    safety = SafetyConfig(cost_threshold=0.5, confidence=0.9)
    tested = certify_samples(
        [-3.0, -2.0, -1.5, -4.0, -2.5],
        safety=safety,
        sampler_settings={"t": 1},
        safety_fingerprint="f",
    )
    logged = replace(tested, attempts={"number": 1, "declared": 1, "log": []})
    data = logged.to_dict()
    assert "reason" not in data and "groups" not in data and data["attempts"]["number"] == 1
    assert tested.tested and "attempts" not in tested.to_dict()
    path = write_certificate(logged, tmp_path / "certificate.json")
    assert Certificate.from_dict(json.loads(path.read_text())) == logged
    with pytest.raises(DataError, match="unknown fields costs"):
        Certificate.from_dict({**data, "costs": [1.0]})
