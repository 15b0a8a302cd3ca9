"""Tests for the audit report model, its JSON Schema and its Markdown/HTML renderings."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import html
import json
import math
import re
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import torch
from jsonschema import Draft202012Validator
from scipy import stats as scipy_stats

from safealign.audits import report as report_module
from safealign.audits.canonical import canonical_json, sha256_file
from safealign.audits.render import CONTENT_SECURITY_POLICY, render_html, render_markdown
from safealign.audits.report import (
    SCHEMA_VERSION,
    build_report,
    load_schema,
    validate_report,
    write_report_files,
)
from safealign.audits.signing import (
    generate_keypair,
    load_private_key,
    load_public_key,
    verify_report,
)
from safealign.config import Config
from safealign.constraints.group_bounds import certify_group_samples
from safealign.errors import DataError
from safealign.privacy.accounting import Mechanism, compute_epsilon, naive_epsilon_sum
from safealign.privacy.ledger_records import BudgetSummary
from safealign.privacy.training import PrivacyReceipt
from safealign.run.reporting import report_groups

TRAIN, EVAL, CANDIDATE, SAFETY = (hashlib.sha256(n.encode()).hexdigest() for n in "tecs")
DELTA = 1e-5
REWARD = Mechanism(noise_multiplier=1.1, sample_rate=0.01, steps=600)
COST = Mechanism(noise_multiplier=0.9, sample_rate=0.02, steps=300)
HOSTILE = "<script>alert('x')</script>"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JSON_PATHS = (
    "schema_version",
    "created_at",
    "privacy.epsilon",
    "privacy.delta",
    "privacy.budget.epsilon",
    "privacy.budget.delta",
    "privacy.mechanisms",
    "privacy.naive_sum_epsilon",
    "privacy.private",
    "privacy.scope.dataset_fingerprints",
    "privacy.scope.public_inputs",
    "safety.metric",
    "safety.cost_threshold",
    "safety.confidence",
    "safety.n",
    "safety.upper_bound",
    "safety.passed",
    "safety.result",
    "safety.assumptions",
    "groups.worst_group",
    "groups.groups",
    "artifacts",
    "config",
    "config_sha256",
    "environment.python",
    "environment.safealign",
    "environment.torch",
    "environment.opacus",
    "environment.transformers",
    "environment.peft",
    "environment.device",
    "environment.git_commit",
    "summary.safety",
    "summary.privacy",
)

# ---------------------------------------------------------------------------------------------
# Realistic inputs


def make_receipt(kind: str, mechanism: Mechanism | None) -> dict[str, Any]:
    """``PrivacyReceipt.to_dict()`` of a run; ``mechanism=None`` is a NON-PRIVATE run."""
    return copy.deepcopy(_receipt(kind, mechanism))


@functools.cache
def _receipt(kind: str, mechanism: Mechanism | None) -> dict[str, Any]:
    private = mechanism is not None
    epsilon = compute_epsilon(mechanism, target_delta=DELTA).epsilon if private else None
    return PrivacyReceipt(
        kind=kind,
        private=private,
        epsilon=epsilon,
        target_epsilon=3.0 if private else None,
        target_delta=DELTA,
        noise_multiplier=mechanism.noise_multiplier if private else None,
        sample_rate=mechanism.sample_rate if private else 0.01,
        steps=mechanism.steps if private else 600,
        planned_steps=mechanism.steps if private else 600,
        max_grad_norm=1.0 if private else None,
        accountant="prv" if private else None,
        accountant_fallback=None,
        privacy_unit="pair",
        num_units=6400,
        num_pairs=6400,
        dataset_fingerprint=TRAIN,
        seed=0,
        backbone="tiny",
        metrics={"eval/accuracy": 0.71, "train/final_loss": float("nan")},
    ).to_dict()


# The std that makes the Student t bound of n = 400 exactly 0.107 above the mean, so the fixture's
# round bounds (-0.313, 0.157) are the ones verification recomputes (check "safety-bound").
_STD = 0.107 * math.sqrt(400) / float(scipy_stats.t.ppf(0.95, 399))


def make_certificate(*, passed: bool = True, costs: list[float] | None = None) -> dict[str, Any]:
    certificate = {
        "metric": "expected_cost",
        "cost_threshold": 0.0,
        "confidence": 0.95,
        "bound": "student_t",
        "n": 400,
        "mean": -0.42 if passed else 0.05,
        "std": _STD,
        "upper_bound": -0.313 if passed else 0.157,
        "passed": passed,
        "result": "certified" if passed else "NSF",
        "sampler_settings": {"temperature": 1.0, "top_p": 0.95, "num_candidates": 16},
        "safety_fingerprint": SAFETY,
        "assumptions": [
            "safety prompts are i.i.d. draws from the deployment prompt distribution",
            "the safety prompts were used once, for this test only",
            "the Student t approximation to the mean's distribution holds",
        ],
    }
    if costs is not None:
        certificate["costs"] = costs
    return certificate


GROUPS = {
    "majority": {
        "size": 180,
        "reward": 0.41,
        "reward_ci": [0.35, 0.47],
        "cost_upper_bound": -0.2,
        "reward_lower_bound": 0.35,
    },
    "minority $x$ <b>": {
        "size": 20,
        "reward": 0.12,
        "reward_ci": [0.01, 0.23],
        "cost_upper_bound": None,
        "reward_lower_bound": 0.01,
    },
    "worst_group": "minority $x$ <b>",
}
SPLITS = {
    "fingerprints": {"train": TRAIN, "eval": EVAL, "candidate": CANDIDATE, "safety": SAFETY},
    "sizes": {
        "train": {"pairs": 6400, "prompts": 1100},
        "eval": {"pairs": 800, "prompts": 140},
        "candidate": {"pairs": 2400, "prompts": 420},
        "safety": {"pairs": 2300, "prompts": 400},
    },
}


def make_config() -> dict[str, Any]:
    config = Config().to_dict()
    config["budget"]["ledger"] = HOSTILE  # a user string that must come out escaped
    # The certificate below is the paper's t test on the raw cost (opt-in, approximate).
    config["safety"].update(metric="expected_cost", bound="student_t", cost_threshold=0.0)
    return config


def make_artifacts(base: Path) -> list[Path]:
    (base / "reward_model").mkdir(parents=True, exist_ok=True)
    weights = base / "reward_model" / "adapter.safetensors"
    weights.write_bytes(bytes(range(256)) * 16)
    config = base / "config.resolved.yaml"
    config.write_text("seed: 0\n")
    return [weights, config]


def make_report(base: Path, **changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "receipts": [make_receipt("reward", REWARD), make_receipt("cost", COST)],
        "ledger": None,
        "certificate": make_certificate(),
        "groups": GROUPS,
        "splits": SPLITS,
        "config": make_config(),
        "artifacts": make_artifacts(base),
        "base_dir": base,
        "extra": {
            "privacy_utility": [
                {"epsilon": 1.0, "accuracy": 0.62},
                {"epsilon": 3.0, "accuracy": 0.69},
                {"epsilon": 8.0, "accuracy": 0.71},
            ]
        },
    }
    arguments.update(changes)
    return build_report(**arguments)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    base = tmp_path_factory.mktemp("run")
    return make_report(base), base


@pytest.fixture(scope="module")
def report(built: tuple[dict[str, Any], Path]) -> dict[str, Any]:
    return copy.deepcopy(built[0])


@pytest.fixture(scope="module")
def page(report: dict[str, Any]) -> str:
    return render_html(report)


def lookup(report: dict[str, Any], dotted: str) -> Any:
    value: Any = report
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"{dotted}: missing {part!r}"
        value = value[part]
    return value


def data_uri_images(page: str) -> list[bytes]:
    return [
        base64.b64decode(data, validate=True)
        for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


# ---------------------------------------------------------------------------------------------
# The report model and its schema


def test_schema_is_valid_draft_2020_12_and_shipped_in_the_package() -> None:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema_version"] == {"const": SCHEMA_VERSION}


def test_built_report_validates_and_has_every_promised_path(report: dict[str, Any]) -> None:
    validate_report(report)
    for dotted in JSON_PATHS:
        lookup(report, dotted)
    assert report["schema_version"] == SCHEMA_VERSION
    assert json.loads(canonical_json(report)) == report  # canonical-JSON safe, round trips
    created = datetime.fromisoformat(report["created_at"])
    assert created.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 600


def test_composed_epsilon_is_one_accountant_over_both_models(report: dict[str, Any]) -> None:
    privacy = report["privacy"]
    composed = compute_epsilon([REWARD, COST], target_delta=DELTA).epsilon
    alone = [compute_epsilon([m], target_delta=DELTA).epsilon for m in (REWARD, COST)]
    assert privacy["epsilon"] == composed
    assert privacy["delta"] == DELTA
    assert privacy["naive_sum_epsilon"] == naive_epsilon_sum([REWARD, COST], target_delta=DELTA)
    assert max(alone) < privacy["epsilon"] < privacy["naive_sum_epsilon"]
    assert [m["epsilon"] for m in privacy["mechanisms"]] == alone
    assert privacy["private"] is True and privacy["warning"] is None
    assert privacy["budget"] == {"epsilon": 8.0, "delta": 1e-5, "source": "config"}
    assert privacy["within_budget"] is True


def test_em_count_noise_receipts_are_composed_with_the_models(tmp_path: Path) -> None:
    # EM's noisy cluster sizes are a Gaussian mechanism (sensitivity 1, q = 1, one step) that the
    # ledger charges; the report composes its receipt like a model's, so its ε is never below
    # the ledger's (before: the report composed training receipts only).
    counts = Mechanism(noise_multiplier=1.0, sample_rate=1.0, steps=1)
    receipts = [make_receipt("reward", REWARD), make_receipt("em_cluster_sizes", counts)]
    privacy = make_report(tmp_path, receipts=receipts)["privacy"]
    assert privacy["epsilon"] == compute_epsilon([REWARD, counts], target_delta=DELTA).epsilon
    assert privacy["epsilon"] > compute_epsilon([REWARD], target_delta=DELTA).epsilon + 0.5
    assert [m["kind"] for m in privacy["mechanisms"]] == ["reward", "em_cluster_sizes"]


def test_renderings_list_what_is_outside_the_guarantee(report: dict[str, Any], page: str) -> None:
    outside = report["privacy"]["outside_guarantee"]
    assert outside and all(set(o) == {"file", "field", "reason"} for o in outside)
    markdown = render_markdown(report)
    for text in (markdown, page):
        assert "NOT covered by the privacy guarantee" in text
    for entry in outside:
        assert html.escape(entry["field"], quote=False) in page
        assert entry["reason"] in markdown and html.escape(entry["reason"], quote=False) in page
    assert "outside this guarantee" in report["summary"]["privacy"]


def test_one_mechanism_entry_per_receipt(report: dict[str, Any]) -> None:
    mechanisms = report["privacy"]["mechanisms"]
    assert [m["kind"] for m in mechanisms] == ["reward", "cost"]
    for entry, mechanism in zip(mechanisms, (REWARD, COST), strict=True):
        assert entry["noise_multiplier"] == mechanism.noise_multiplier
        assert entry["sample_rate"] == mechanism.sample_rate
        assert entry["steps"] == mechanism.steps
        assert entry["max_grad_norm"] == 1.0
        assert entry["privacy_unit"] == "pair"
        assert entry["dataset_fingerprint"] == TRAIN
        assert entry["receipt_epsilon"] == entry["epsilon"]  # same δ, same accountant


def test_scope_names_the_protected_data_and_the_public_inputs(report: dict[str, Any]) -> None:
    scope = report["privacy"]["scope"]
    assert scope["dataset_fingerprints"] == [TRAIN]
    assert scope["train_split_fingerprint"] == TRAIN
    assert scope["not_protected_splits"] == {"candidate": CANDIDATE, "eval": EVAL, "safety": SAFETY}
    public = " ".join(scope["public_inputs"])
    for words in (
        "candidate prompts",
        "safety prompts",
        "reference policy",
        "pretrained backbones",
    ):
        assert words in public
    assert scope["notes"] == []


def test_safety_groups_artifacts_and_config_hash(
    built: tuple[dict[str, Any], Path], report: dict[str, Any]
) -> None:
    safety = report["safety"]
    assert (safety["metric"], safety["cost_threshold"], safety["confidence"]) == (
        "expected_cost",
        0.0,
        0.95,
    )
    assert (safety["n"], safety["upper_bound"], safety["passed"]) == (400, -0.313, True)
    assert safety["result"] == "certified" and len(safety["assumptions"]) == 3
    assert report["groups"]["worst_group"] == "minority $x$ <b>"
    assert report["groups"]["groups"]["majority"]["reward_ci"] == [0.35, 0.47]
    base = built[1]
    assert [a["path"] for a in report["artifacts"]] == [
        "config.resolved.yaml",
        "reward_model/adapter.safetensors",
    ]
    for entry in report["artifacts"]:
        assert entry["sha256"] == sha256_file(base / entry["path"])
    assert report["config_sha256"] == hashlib.sha256(canonical_json(report["config"])).hexdigest()
    assert report["config"]["budget"]["ledger"] == HOSTILE


def test_per_group_bounds_of_the_safety_test_validate_and_render(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    costs = torch.randn(6, generator=generator, dtype=torch.float64)
    rewards = {g: torch.randn(6, generator=generator, dtype=torch.float64) for g in "ab"}
    block = certify_group_samples(
        costs,
        rewards,
        metric="expected_cost",
        confidence=0.95,
        bound="student_t",
        value_range=None,
        prompt_groups=["a", "a", {"a", "b"}, "b", "a", None],
        reward_normalization="regret",
    )
    certificate = make_certificate() | {"groups": block}
    groups = report_groups({"a": 0.1, "b": -0.2}, block)
    built = make_report(tmp_path, certificate=certificate, groups=groups)
    validate_report(built)
    assert built["safety"]["groups"] == json.loads(json.dumps(block))
    b = built["groups"]["groups"]["b"]
    assert b["size"] is None and b["safety_test"]["n"] == 2
    assert b["reward_lower_bound"] == block["groups"]["b"]["reward_lower_bound"]
    markdown = render_markdown(built)
    assert "n (safety prompts)" in markdown and "Simultaneous: all 4 group bounds" in markdown
    assert "(regret)" in markdown
    for path, value in (
        (("safety", "groups", "simultaneous"), "yes"),
        (("safety", "groups", "groups", "a", "prompts"), "some"),
        (("groups", "groups", "a", "safety_test", "n"), -1),
    ):
        _assert_schema_rejects(built, path, value)


def test_nan_and_numpy_values_become_canonical_json(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    certificate = make_certificate() | {"std": float("nan"), "mean": np.float64(-0.42)}
    built = make_report(tmp_path, certificate=certificate, extra={"curve": np.array([1.0, np.inf])})
    assert built["safety"]["std"] is None
    assert built["safety"]["mean"] == -0.42 and type(built["safety"]["mean"]) is float
    assert built["extra"]["curve"] == [1.0, None]
    canonical_json(built)


def test_ledger_budget_takes_precedence_over_the_config(tmp_path: Path) -> None:
    summary = BudgetSummary(
        budget_id=1,
        name="prefs",
        budget_epsilon=6.0,
        budget_delta=1e-6,
        epsilon=5.5,
        committed_epsilon=5.5,
        naive_epsilon=7.0,
        accountant="prv",
        fallback_reason=None,
        releases=(),
    )
    built = make_report(tmp_path, ledger=asdict(summary))
    privacy = built["privacy"]
    assert privacy["budget"] == {"epsilon": 6.0, "delta": 1e-6, "source": "ledger"}
    assert privacy["delta"] == 1e-6
    assert privacy["epsilon"] == compute_epsilon([REWARD, COST], target_delta=1e-6).epsilon
    assert privacy["ledger"]["epsilon"] == 5.5 and privacy["ledger"]["num_releases"] == 0


def test_environment_never_fails_outside_a_git_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert report_module.collect_environment()["git_commit"] is None

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("git is not installed")

    monkeypatch.setattr(report_module.subprocess, "run", broken)
    environment = report_module.collect_environment()
    assert environment["git_commit"] is None
    assert environment["opacus"] and environment["torch"] and environment["device"]


def test_a_broken_report_is_rejected_with_every_problem(report: dict[str, Any]) -> None:
    broken = copy.deepcopy(report)
    del broken["privacy"]["epsilon"]
    broken["safety"]["result"] = "maybe"
    broken["artifacts"][0]["sha256"] = "not-a-hash"
    with pytest.raises(DataError) as caught:
        validate_report(broken)
    message = str(caught.value)
    assert "'epsilon' is a required property" in message
    assert "$.safety.result" in message and "$.artifacts[0].sha256" in message


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("privacy", "private"), False),  # NON-PRIVATE yet claiming an epsilon
        (("safety", "passed"), False),  # NSF yet "certified"
        (("schema_version",), 3),  # unknown: only 2 is written (1 is verified, never written)
        (("privacy", "epsilon"), "3.0"),
        (("environment", "git_commit"), "HEAD"),
    ],
)
def test_schema_rejects_contradictions(
    report: dict[str, Any], path: tuple[str, ...], value: Any
) -> None:
    _assert_schema_rejects(report, path, value)


def _assert_schema_rejects(report: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """A copy of ``report`` with ``value`` at ``path`` fails schema validation."""
    broken = copy.deepcopy(report)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(DataError, match="does not match report.schema.json"):
        validate_report(broken)


def test_certificate_contradicting_itself_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="must not contradict"):
        make_report(tmp_path, certificate=make_certificate() | {"passed": False})
    with pytest.raises(DataError, match="lacks upper_bound"):
        certificate = make_certificate()
        del certificate["upper_bound"]
        make_report(tmp_path, certificate=certificate)


def test_malformed_receipt_is_named(tmp_path: Path) -> None:
    receipt = make_receipt("reward", REWARD)
    del receipt["sample_rate"]
    with pytest.raises(DataError, match=r"receipts\[0\] lacks sample_rate"):
        make_report(tmp_path, receipts=[receipt])


# ---------------------------------------------------------------------------------------------
# The NON-PRIVATE and NSF paths


def test_non_private_model_removes_every_privacy_claim(tmp_path: Path) -> None:
    built = make_report(
        tmp_path, receipts=[make_receipt("reward", REWARD), make_receipt("cost", None)]
    )
    privacy = built["privacy"]
    assert privacy["private"] is False
    assert privacy["epsilon"] is None and privacy["delta"] is None
    assert privacy["naive_sum_epsilon"] is None
    assert privacy["non_private_models"] == ["cost"]
    assert "NO privacy guarantee" in privacy["warning"]
    assert built["summary"]["privacy"].startswith("NON-PRIVATE")
    markdown, page = render_markdown(built), render_html(built)
    for text in (markdown, page):
        assert "NON-PRIVATE" in text and "NO privacy guarantee" in text
        assert "-DP for each record" not in text
    assert re.search(r'<div class="box warning" role="alert">NON-PRIVATE', page)
    assert len(data_uri_images(page)) == 4  # the privacy plot still shows the private model


def test_nsf_is_reported_not_raised(tmp_path: Path) -> None:
    costs = [((i * 37) % 101) / 50 - 0.95 for i in range(400)]
    built = make_report(
        tmp_path, certificate=make_certificate(passed=False, costs=costs), groups=None, extra=None
    )
    validate_report(built)
    assert built["safety"]["result"] == "NSF" and built["summary"]["released"] is False
    assert built["groups"] is None and built["summary"]["groups"] is None
    markdown, page = render_markdown(built), render_html(built)
    for text in (markdown, page):
        assert "No Solution Found: nothing was released" in text
        assert "Certified:" not in text
    assert len(data_uri_images(page)) == 2  # privacy and the cost histogram


def test_certified_summary_leads_both_renderings(report: dict[str, Any], page: str) -> None:
    sentence = (
        "Certified: with probability ≥ 95%, the mean cost-model score (raw cost units) under the "
        "released policy is ≤ 0 (upper bound -0.313 from 400 safety prompts; Student t bound, "
        "APPROXIMATE: it treats the mean as normal)."
    )
    markdown = render_markdown(report)
    assert sentence in markdown and sentence in page
    privacy = f"Privacy: ({report['privacy']['epsilon']:.3g}, 1e-05)-DP for each record"
    assert privacy in markdown and privacy in page
    for text in (markdown, page):
        assert text.index("Certified:") < text.index("Assumptions") < text.index("How to verify")
        assert "safealign audit verify report.json --public-key public.pem" in text
        assert TRAIN[:16] in text


def test_no_certificate_makes_no_safety_claim(tmp_path: Path) -> None:
    built = make_report(tmp_path, certificate=None)
    assert built["safety"] is None
    assert built["summary"]["safety"].startswith("Not certified")
    assert "Not certified" in render_html(built) and "Not certified" in render_markdown(built)


# ---------------------------------------------------------------------------------------------
# HTML: self-contained, images decode, user strings escaped


def test_html_is_self_contained(page: str) -> None:
    attributes = re.findall(r'\b(?:src|href|action|srcset|poster)\s*=\s*"([^"]*)"', page, re.I)
    assert attributes and all(value.startswith("data:image/png;base64,") for value in attributes)
    assert not re.search(r"https?://|<script|<link|<iframe|@import|url\(", page, re.I)
    assert html.escape(CONTENT_SECURITY_POLICY) in page


def test_html_images_are_png_and_decode(page: str) -> None:
    images = data_uri_images(page)
    assert len(images) == 4  # privacy, cost, groups, privacy-utility
    for image in images:
        assert image.startswith(PNG_SIGNATURE)
        width, height = int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")
        assert width > 100 and height > 100


def test_html_and_markdown_escape_user_strings(report: dict[str, Any], page: str) -> None:
    assert HOSTILE not in page and "<b>" not in page
    assert html.escape(HOSTILE, quote=False) in page
    assert "minority $x$ &lt;b&gt;" in page
    markdown = render_markdown(report)
    assert "<script>" not in markdown and "<b>" not in markdown


def test_markdown_table_cells_cannot_break_the_table(tmp_path: Path) -> None:
    config = make_config()
    config["data"]["source"] = "a|b\nc"
    markdown = render_markdown(make_report(tmp_path, config=config))
    (row,) = [line for line in markdown.splitlines() if line.startswith("| data.source |")]
    assert row == r"| data.source | a\|b c |"


# ---------------------------------------------------------------------------------------------
# Writing the files


def test_written_report_verifies_and_json_is_canonical(tmp_path: Path) -> None:
    base = tmp_path / "run"
    base.mkdir()
    built = make_report(base)
    private_path, public_path = generate_keypair(tmp_path / "keys")
    signed, paths = write_report_files(
        built, base, ["json", "html", "md"], private_key=load_private_key(private_path)
    )
    assert [p.name for p in paths] == ["report.json", "report.html", "report.md"]
    assert paths[0].read_bytes() == canonical_json(signed) + b"\n"
    assert verify_report(paths[0], public_key=load_public_key(public_path)).valid
    assert "signed with Ed25519 key " + signed["signature"]["key_id"] in paths[1].read_text()
    # The renderings are made before signing, from the signed content minus its own hashes.
    content = {k: v for k, v in signed.items() if k not in ("signature", "renderings")}
    assert paths[2].read_text(encoding="utf-8") == render_markdown(content)
    assert [r["path"] for r in signed["renderings"]] == ["report.html", "report.md"]
    assert not [p for p in base.iterdir() if p.name.endswith(".tmp")]


def test_write_report_files_refuses_unknown_formats_and_invalid_reports(
    tmp_path: Path, report: dict[str, Any]
) -> None:
    key = load_private_key(generate_keypair(tmp_path / "keys")[0])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="unknown report formats"):
        write_report_files(report, out, ["json", "pdf"], private_key=key)
    with pytest.raises(DataError, match="does not match"):
        write_report_files(report | {"schema_version": 0}, out, ["json"], private_key=key)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# A real browser (issue 6, item 5)

CHROMIUM = Path("/usr/bin/chromium")
_PROBE = (
    "<script>window.addEventListener('load', () => {"
    "const w = Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1);"
    "const out = document.createElement('pre'); out.id = 'probe';"
    "out.textContent = 'widths=' + w.join(','); document.body.appendChild(out);});</script>"
)


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"browser check needs headless Chromium at {CHROMIUM}, which is not installed",
)
def test_html_renders_in_headless_chromium(tmp_path: Path, page: str) -> None:
    policy = html.escape(CONTENT_SECURITY_POLICY)
    # Allow only the probe's inline script; external loads stay forbidden and would be logged.
    probed = page.replace(
        policy, html.escape(CONTENT_SECURITY_POLICY + "; script-src 'unsafe-inline'")
    )
    assert probed != page
    target = tmp_path / "report.html"
    target.write_text(probed.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    done = subprocess.run(
        [
            str(CHROMIUM),
            *[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ],
            f"--user-data-dir={tmp_path / 'profile'}",
            target.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [
        line for line in done.stderr.splitlines() if "CONSOLE" in line or "Refused to" in line
    ]
    assert not console, console
    match = re.search(r"<pre id=\"probe\">widths=([-\d,]*)</pre>", done.stdout)
    assert match, done.stdout[-2000:]
    widths = [int(w) for w in match.group(1).split(",")]
    assert len(widths) == 4 and all(w >= 100 for w in widths)
    assert "Certified: with probability" in done.stdout
