"""Attacks on ``audit verify`` by someone who holds the run directory (DESIGN.md, threat model of
reports): forged claims re-signed with the run's key, edited renderings, symlinks, unsafe
manifest paths, a demo key, an attacker's own key, and inputs built to crash the verifier.

Each forgery takes a real signed report, changes what a reader would rely on, re-signs it with
the same key (so the signature is valid) and must come out INVALID with the named check. On the
code before issue 18 every forgery below verified VALID.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safealign.audits.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    verify_report,
)
from safealign.audits.summary import plain_summary
from safealign.cli import main
from tests.audits._real_report import load, resign, write_real_report

Forgery = Callable[[dict[str, Any]], None]


def _set(dotted: str, value: Any) -> Forgery:
    def forge(report: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        target = report
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[last] = value

    return forge


def _more_steps(report: dict[str, Any]) -> None:
    report["privacy"]["mechanisms"][0]["steps"] *= 10  # training the stated ε does not cover


def _resummarised(forge: Forgery) -> Forgery:
    """The forgery done thoroughly: the plain-words summary rewritten to match the new numbers."""

    def thorough(report: dict[str, Any]) -> None:
        forge(report)
        report["summary"] = plain_summary(report).to_dict()

    return thorough


def _claim_nsf(report: dict[str, Any]) -> None:
    report["safety"]["passed"], report["safety"]["result"] = False, "NSF"


def _hide_non_private(report: dict[str, Any]) -> None:
    mechanism = report["privacy"]["mechanisms"][0]
    mechanism["private"], mechanism["epsilon"] = False, None


def _second_limit(report: dict[str, Any]) -> None:
    report["safety"]["threshold"] = report["safety"]["cost_threshold"]  # schema 1's alias, in v2


def _as_schema_1(*, threshold: float | None = None, both: bool = True) -> Forgery:
    """The report as an earlier release wrote it: schema 1, the limit also under ``threshold``."""

    def downgrade(report: dict[str, Any]) -> None:
        safety = report["safety"]
        report["schema_version"] = 1
        safety["threshold"] = safety["cost_threshold"] if threshold is None else threshold
        if not both:
            del safety["cost_threshold"]

    return downgrade


# (name, forgery, the check that must name it)
FORGERIES: list[tuple[str, Forgery, str]] = [
    ("certified-with-bound-above-threshold", _set("safety.upper_bound", 5.0), "safety-verdict"),
    ("nsf-although-bound-below-threshold", _claim_nsf, "safety-verdict"),
    ("bound-lowered", _resummarised(_set("safety.upper_bound", -5.0)), "safety-bound"),
    ("threshold-loosened", _set("safety.cost_threshold", 10.0), "safety-config"),
    # Schema 2 has one name for the limit: a second one, whatever its value, is refused.
    ("second-limit-added", _set("safety.threshold", 10.0), "schema"),
    ("second-limit-added-equal", _second_limit, "schema"),
    # Schema 1's two names must agree; its threshold is read as cost_threshold and checked.
    ("schema-1-limits-disagree", _as_schema_1(threshold=10.0), "schema"),
    ("schema-1-threshold-loosened", _as_schema_1(threshold=10.0, both=False), "safety-config"),
    ("confidence-raised", _set("safety.confidence", 0.999), "safety-config"),
    ("bound-renamed", _set("safety.bound", "a-bound-nobody-can-recompute"), "safety-config"),
    ("epsilon-50-within-budget-8", _set("privacy.epsilon", 50.0), "privacy-budget"),
    ("epsilon-lowered", _resummarised(_set("privacy.epsilon", 0.01)), "privacy-epsilon"),
    ("steps-not-accounted", _more_steps, "privacy-epsilon"),
    ("over-budget-flag-cleared", _set("privacy.within_budget", False), "privacy-budget"),
    ("budget-raised", _set("privacy.budget.epsilon", 100.0), "privacy-budget"),
    ("non-private-model-hidden", _hide_non_private, "privacy-private"),
    ("worst-group-swapped", _set("groups.worst_group", "majority"), "groups-worst"),
    ("safety-sentence-rewritten", _set("summary.safety", "Certified: all good."), "summary"),
    ("released-flag-set", _set("summary.released", False), "summary"),
    ("sample-size-inflated", _set("safety.n", 40000), "summary"),
    ("config-edited", _set("config.seed", 12345), "config-hash"),
    ("config-hash-replaced", _set("config_sha256", "0" * 64), "config-hash"),
    ("schema-version-99", _set("schema_version", 99), "schema"),
    ("privacy-nothing", _set("privacy", "nothing"), "schema"),
    ("signer-renamed", _set("signer.key_id", "0123456789abcdef"), "signer"),
    ("renderings-dropped", lambda r: r.pop("renderings"), "schema"),
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Path:
    return write_real_report(tmp_path_factory.mktemp("pristine") / "run", load_private_key(keys[0]))


@pytest.fixture
def run_dir(tmp_path: Path, pristine: Path) -> Path:
    """A fresh copy of the real signed run directory; its report verifies with every check."""
    return Path(shutil.copytree(pristine.parent, tmp_path / "run"))


def _verify(report: Path, keys: tuple[Path, Path], **kwargs: Any):
    return verify_report(report, public_key=load_public_key(keys[1]), **kwargs)


def test_the_untouched_report_passes_every_check(run_dir: Path, keys: tuple[Path, Path]) -> None:
    result = _verify(run_dir / "report.json", keys, strict=True)
    assert result.valid, [str(p) for p in result.problems]
    assert result.checked_artifacts == 4 and not result.warnings


@pytest.mark.parametrize(("name", "forge", "check"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_a_re_signed_forgery_is_invalid_by_name(
    run_dir: Path, keys: tuple[Path, Path], name: str, forge: Forgery, check: str
) -> None:
    path = run_dir / "report.json"
    report = copy.deepcopy(load(path))
    forge(report)
    resign(path, report, load_private_key(keys[0]))
    for public_key in (load_public_key(keys[1]), None):
        result = verify_report(path, public_key=public_key)
        assert not result.valid, name
        assert check in result.failed_checks, [str(p) for p in result.problems]
        # The signature itself is good: only the content gives the forgery away.
        assert not {"signature", "pinned-key"} & result.failed_checks


@pytest.mark.parametrize(
    "both", [True, False], ids=["threshold-and-cost_threshold", "threshold-only"]
)
def test_a_schema_1_report_still_verifies(
    run_dir: Path, keys: tuple[Path, Path], both: bool
) -> None:
    # Reports of earlier releases (schema 1) carry the limit as threshold; they stay verifiable.
    path = run_dir / "report.json"
    report = copy.deepcopy(load(path))
    _as_schema_1(both=both)(report)
    resign(path, report, load_private_key(keys[0]))
    result = _verify(path, keys, strict=True)
    assert result.valid, [str(p) for p in result.problems]


@pytest.mark.parametrize("rendering", ["report.html", "report.md"])
def test_an_edited_rendering_is_invalid(
    run_dir: Path, keys: tuple[Path, Path], rendering: str
) -> None:
    page = run_dir / rendering
    page.write_text(page.read_text(encoding="utf-8").replace("Certified", "Certifed"), "utf-8")
    result = _verify(run_dir / "report.json", keys)
    assert not result.valid
    assert result.failed_checks == {"rendering"}
    assert rendering in result.problems[0].message


def test_an_artefact_replaced_by_a_symlink_is_refused(
    run_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    # The symlink's target has the very bytes that were signed: only refusing the link catches it.
    artefact = run_dir / "config.resolved.yaml"
    outside = tmp_path / "elsewhere.yaml"
    outside.write_bytes(artefact.read_bytes())
    artefact.unlink()
    artefact.symlink_to(outside)
    result = _verify(run_dir / "report.json", keys)
    assert not result.valid
    assert "symlink" in result.failed_checks
    assert result.checked_artifacts == 3  # the target was never read


def test_a_symlinked_directory_is_refused(
    run_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    shutil.move(run_dir / "reward_model", tmp_path / "moved")
    (run_dir / "reward_model").symlink_to(tmp_path / "moved", target_is_directory=True)
    result = _verify(run_dir / "report.json", keys)
    assert "symlink" in result.failed_checks and not result.valid


def test_an_artefact_replaced_by_a_fifo_is_refused_without_hanging(
    run_dir: Path, keys: tuple[Path, Path]
) -> None:
    artefact = run_dir / "config.resolved.yaml"
    artefact.unlink()
    os.mkfifo(artefact)
    assert "special-file" in _verify(run_dir / "report.json", keys).failed_checks


@pytest.mark.parametrize("bad_path", ["../outside.txt", "/etc/hostname", "a/../../b"])
def test_a_signed_manifest_path_leaving_the_directory_is_refused(
    run_dir: Path, keys: tuple[Path, Path], bad_path: str
) -> None:
    path = run_dir / "report.json"
    report = load(path)
    report["artifacts"].append({"path": bad_path, "sha256": "0" * 64})
    resign(path, report, load_private_key(keys[0]))
    result = _verify(path, keys)
    assert not result.valid and not result.bad_input
    assert "manifest-path" in result.failed_checks


def test_a_nul_byte_in_a_manifest_path_is_bad_input_exit_2(
    run_dir: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_dir / "report.json"
    report = load(path)
    report["artifacts"].append({"path": "model\x00.bin", "sha256": "0" * 64})
    resign(path, report, load_private_key(keys[0]))
    result = _verify(path, keys)
    assert result.bad_input and "manifest-path" in result.failed_checks
    capsys.readouterr()
    assert main(["audit", "verify", str(path), "--public-key", str(keys[1])]) == 2
    err = capsys.readouterr().err
    assert "NUL byte" in err and "Traceback" not in err


@pytest.mark.parametrize("depth", [100_000, 5_000])
def test_a_deeply_nested_report_is_bad_input_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], depth: int
) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(b'{"a":' * depth + b"1" + b"}" * depth)
    result = verify_report(path)
    assert result.bad_input and result.failed_checks == {"json"}
    assert main(["audit", "verify", str(path)]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err


def test_unlisted_files_warn_and_fail_under_strict(run_dir: Path, keys: tuple[Path, Path]) -> None:
    (run_dir / "notes").mkdir()
    (run_dir / "notes" / "extra.txt").write_text("not signed")
    result = _verify(run_dir / "report.json", keys)
    assert result.valid
    (warning,) = result.warnings
    assert warning.check == "unlisted" and "notes/extra.txt" in warning.message
    strict = _verify(run_dir / "report.json", keys, strict=True)
    assert not strict.valid and strict.failed_checks == {"unlisted"}


def test_a_demo_key_is_recorded_warned_and_refused_under_strict(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_real_report(tmp_path / "run", load_private_key(keys[0]), demo_key=True)
    assert load(path)["signer"]["demo_key"] is True
    assert "DEMO key" in (path.parent / "report.html").read_text(encoding="utf-8")
    result = _verify(path, keys)
    assert result.valid and result.demo_key
    assert [w.check for w in result.warnings] == ["demo-key"]
    assert not _verify(path, keys, strict=True).valid
    capsys.readouterr()
    assert main(["audit", "verify", str(path), "--public-key", str(keys[1])]) == 0
    out, err = capsys.readouterr()
    assert "DEMO key, NOT a real identity" in out and "demo key" in err
    assert main(["audit", "verify", str(path), "--public-key", str(keys[1]), "--strict"]) == 1


def test_unpinned_verification_never_reads_as_valid(
    run_dir: Path, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_dir / "report.json"
    assert main(["audit", "verify", str(path), "--public-key", str(keys[1])]) == 0
    out = capsys.readouterr().out
    assert f"VALID (signed by the pinned key {key_id(load_public_key(keys[1]))}" in out
    # An attacker re-signs a changed report with their own key (and a matching signer section).
    attacker_private, attacker_public = generate_keypair(tmp_path / "attacker")
    report = load(path)
    report["signer"]["key_id"] = key_id(load_public_key(attacker_public))
    report["extra"]["note"] = "forged"
    resign(path, report, load_private_key(attacker_private))
    assert main(["audit", "verify", str(path)]) == 3
    out = capsys.readouterr().out
    assert "INTEGRITY OK — NOT AUTHENTICATED" in out and "VALID" not in out
    assert "--public-key" in out
    # Pinned to the real signer's key, the same forgery is INVALID.
    assert main(["audit", "verify", str(path), "--public-key", str(keys[1])]) == 1
    assert "pinned-key" in capsys.readouterr().err


def test_the_demo_private_key_never_enters_the_run_directory(tmp_path: Path) -> None:
    from safealign.config import Config
    from safealign.privacy.identity import default_data_dir
    from safealign.run.keys import signing_key

    home = default_data_dir()
    assert str(home) == os.environ["SAFEALIGN_HOME"]  # tests never touch the real home
    out = tmp_path / "run"
    (out / "keys").mkdir(parents=True)
    (out / "keys" / "private.pem").write_text("a demo key an older version left here")
    first = signing_key(Config(), out)
    assert first.demo and "NOT a real identity" in first.note and str(home) in first.note
    assert (home / "demo-keys" / "private.pem").is_file()
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] == [
        "keys/public.pem"
    ]
    assert load_public_key(out / "keys" / "public.pem") == first.private_key.public_key()
    again = signing_key(Config(), tmp_path / "other")  # one demo key per user, reused
    assert again.private_key.public_key() == first.private_key.public_key()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("5000-digit-integer", b'{"a":' + b"9" * 5000 + b"}"),
        ("lone-surrogate", b'{"a":"\\ud800"}'),
        ("not-json", b"report"),
        ("a-list", b"[1,2]"),
    ],
)
def test_unprocessable_reports_exit_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes
) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(content)
    assert main(["audit", "verify", str(path)]) == 2, name
    err = capsys.readouterr().err
    assert "cannot verify" in err and str(path) in err and "Traceback" not in err


def test_a_directory_given_as_the_report_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["audit", "verify", str(tmp_path)]) == 2
    assert "cannot read the report" in capsys.readouterr().err


def test_an_odd_but_schema_valid_field_fails_closed_by_name(
    run_dir: Path, keys: tuple[Path, Path]
) -> None:
    path = run_dir / "report.json"
    report = load(path)
    report["safety"]["value_range"] = "wide"  # safety allows extra properties of any type
    report["safety"]["bound"] = "hoeffding"
    resign(path, report, load_private_key(keys[0]))
    result = _verify(path, keys)
    assert not result.valid and not result.bad_input
    assert {"safety-bound", "safety-config"} <= result.failed_checks
    assert "value_range" in str(result.problems)
