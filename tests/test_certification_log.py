"""The certification log: one test per safety set, or the declared number at δ/N (issue 13, item 3).

Library-level attacks on the log itself; the command-line attack (re-align with changed settings,
certify again) is in tests/test_align_cli.py.
"""

from __future__ import annotations

import json

import pytest

from safealign.config import load_config
from safealign.constraints.attempts import (
    CertificationLog,
    log_path,
    logged_test,
    resumable_certificate,
    safety_set_identity,
)
from safealign.constraints.hc_rlhf import Certificate
from safealign.errors import IsolationError
from safealign.run.certification import archive_certificate
from safealign.run.paths import RunPaths

PROMPTS = [f"how would someone do dangerous thing number {i}?" for i in range(30)]


def _config(tmp_path, *extra):
    return load_config(None, [f"budget.ledger={tmp_path / 'ledger.sqlite'}", *extra])


def _test(settings):
    def run():
        return Certificate(
            metric="predicted_unsafe_probability",
            cost_threshold=0.2,
            confidence=0.95,
            bound="betting",
            n=len(PROMPTS),
            mean=0.25,
            std=0.1,
            upper_bound=0.3,
            passed=False,
            result="NSF",
            sampler_settings=settings,
            safety_fingerprint=None,
            assumptions=("a test stand-in",),
            values=(0.25,) * len(PROMPTS),
        )

    return run


def _attempt(config, tmp_path, settings=None):
    settings = settings or {"beta": 0.1, "lambda": 1.0}
    return logged_test(
        config.budget,
        config.safety,
        PROMPTS,
        settings,
        tmp_path / "certificate.json",
        _test(settings),
    )


def test_a_second_test_on_the_same_safety_set_is_refused(tmp_path):
    config = _config(tmp_path)
    first = _attempt(config, tmp_path)
    assert first.attempts["number"] == 1 and first.attempts["declared"] == 1
    with pytest.raises(IsolationError, match=r"already been tested 1 time\(s\), and 1 attempt"):
        _attempt(config, tmp_path, {"beta": 0.5, "lambda": 2.0})  # retest shopping
    # The same prompts re-ordered, re-cased and re-spaced are the same safety set.
    variant = [f"  {p.upper()} " for p in reversed(PROMPTS)]
    assert safety_set_identity(config.budget, variant) == safety_set_identity(
        config.budget, PROMPTS
    )
    with pytest.raises(IsolationError, match="already been tested"):
        logged_test(
            config.budget, config.safety, variant, {"x": 1}, tmp_path / "c.json", _test({"x": 1})
        )
    assert log_path(config.budget) == tmp_path / "certifications.sqlite"


def test_declared_attempts_split_delta_and_the_next_one_is_refused(tmp_path):
    config = _config(tmp_path, "safety.attempts=3", "safety.confidence=0.94")
    for k in (1, 2, 3):
        certificate = _attempt(config, tmp_path, {"beta": k})
        record = certificate.attempts
        assert record["number"] == k and record["declared"] == 3
        assert record["per_attempt_confidence"] == pytest.approx(1 - 0.06 / 3)
        assert [a["number"] for a in record["log"]] == list(range(1, k + 1))
        assert all(a["confidence"] == pytest.approx(0.98) for a in record["log"])
    with pytest.raises(
        IsolationError, match=r"tested 3 time\(s\), and 3 attempt\(s\) were declared"
    ):
        _attempt(config, tmp_path, {"beta": 4})


def test_the_declared_number_cannot_change_after_the_first_test(tmp_path):
    _attempt(_config(tmp_path), tmp_path)
    with pytest.raises(IsolationError, match="first test declared 1 attempt"):
        _attempt(_config(tmp_path, "safety.attempts=5"), tmp_path, {"beta": 2})


def test_a_test_that_raises_before_a_verdict_is_not_counted(tmp_path):
    config = _config(tmp_path)

    def broken():
        raise RuntimeError("sampler crashed")

    with pytest.raises(RuntimeError):
        logged_test(config.budget, config.safety, PROMPTS, {"b": 1}, tmp_path / "c.json", broken)
    set_id = safety_set_identity(config.budget, PROMPTS)
    assert CertificationLog(log_path(config.budget)).attempts(set_id) == []
    _attempt(config, tmp_path)  # the one real test


def test_only_the_logged_certificate_of_this_policy_is_resumed(tmp_path):
    config = _config(tmp_path)
    path = tmp_path / "certificate.json"
    certificate = _attempt(config, tmp_path, {"b": 1})
    assert resumable_certificate(config.budget, PROMPTS, {"b": 1}, path) == certificate
    assert resumable_certificate(config.budget, PROMPTS, {"b": 2}, path) is None  # other policy
    forged = {**certificate.to_dict(), "result": "certified", "passed": True}
    path.write_text(json.dumps(forged, indent=2, sort_keys=True) + "\n")
    assert resumable_certificate(config.budget, PROMPTS, {"b": 1}, path) is None  # not logged


def test_earlier_certificates_are_kept_not_deleted(tmp_path):
    config = _config(tmp_path)
    certificate = _attempt(config, tmp_path, {"b": 1})
    paths = RunPaths(tmp_path)
    assert archive_certificate(paths, {"b": 1}) is None  # same policy: it still applies
    moved = archive_certificate(paths, {"b": 2})
    assert moved == tmp_path / "certificates" / "attempt-1.json"
    assert json.loads(moved.read_text()) == certificate.to_dict()
    assert not (tmp_path / "certificate.json").exists()


def test_the_verifier_expects_the_split_confidence_of_declared_attempts():
    from safealign.audits.checks import _safety_config

    configured = {"cost_threshold": 0.0, "confidence": 0.95, "bound": "hoeffding", "attempts": 2}
    safety = {"cost_threshold": 0.0, "confidence": 1 - 0.05 / 2, "bound": "hoeffding"}
    assert _safety_config({"safety": safety, "config": {"safety": configured}}) == []
    unsplit = {**safety, "confidence": 0.95}  # a certificate claiming the undivided δ
    (problem,) = _safety_config({"safety": unsplit, "config": {"safety": configured}})
    assert "safety.confidence is 0.95 but the config's safety.confidence gives 0.975" in str(
        problem
    )
