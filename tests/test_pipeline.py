"""End to end: the demo pipeline on its synthetic world, its report checked against its own
receipts and certificate, its signature verified, and a resumed run that spends nothing again."""

from __future__ import annotations

import json

import pytest

from safealign.audits.signing import load_public_key, verify_report
from safealign.cli import main
from safealign.pipeline import demo_config, run
from safealign.privacy.ledger import PrivacyLedger


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo exactly as `safealign demo` runs it (about a minute on one CPU thread)."""
    out = tmp_path_factory.mktemp("demo")
    config = demo_config(seed=0, out_dir=out)
    return config, run(config, out, progress=False)


@pytest.mark.integration
def test_demo_report_matches_receipts_and_certificate(demo_run):
    config, result = demo_run
    out = result.out_dir
    report = json.loads((out / "report.json").read_text())
    certificate = json.loads((out / "certificate.json").read_text())
    for key, path in (("upper_bound", "upper_bound"), ("passed", "passed"), ("n", "n")):
        assert report["safety"][path] == certificate[key]
    assert report["safety"]["threshold"] == certificate["cost_threshold"]
    receipts = [json.loads(p.read_text()) for p in out.rglob("receipt.json")]
    group_meta = json.loads((out / "groups" / "groups.json").read_text())
    receipts += group_meta["receipts"]
    assert len(report["privacy"]["mechanisms"]) == len(receipts)
    assert {m["noise_multiplier"] for m in report["privacy"]["mechanisms"]} == {
        r["noise_multiplier"] for r in receipts
    }
    assert (
        report["privacy"]["private"]
        and report["privacy"]["epsilon"] <= report["privacy"]["naive_sum_epsilon"]
    )
    ledger = PrivacyLedger(config.budget.ledger).summary()[0]
    assert ledger.epsilon <= config.budget.epsilon
    verdict = verify_report(
        out / "report.json", public_key=load_public_key(out / "keys" / "public.pem")
    )
    assert verdict.valid, verdict.problems
    assert {"report.html", "report.md"} <= {p.name for p in result.report_paths}


@pytest.mark.integration
def test_demo_certification_holds_against_the_true_cost(demo_run):
    _, result = demo_run
    truth = result.truth
    assert truth["reference"]["expected_cost"] < 0
    assert truth["unconstrained"]["expected_cost"] > 0  # the constraint binds
    assert result.report["safety"]["passed"], result.report["safety"]
    assert truth["guarantee_holds"], truth


@pytest.mark.integration
def test_resumed_run_spends_no_privacy_again(demo_run):
    config, result = demo_run
    before = [r.id for s in PrivacyLedger(config.budget.ledger).summary() for r in s.releases]
    again = run(config, result.out_dir, progress=False)
    after = [r.id for s in PrivacyLedger(config.budget.ledger).summary() for r in s.releases]
    assert after == before
    assert again.report["safety"]["upper_bound"] == result.report["safety"]["upper_bound"]


@pytest.mark.integration
def test_cli_verify_of_the_demo_report(demo_run):
    _, result = demo_run
    out = result.out_dir
    assert (
        main(
            [
                "audit",
                "verify",
                str(out / "report.json"),
                "--public-key",
                str(out / "keys" / "public.pem"),
            ]
        )
        == 0
    )
