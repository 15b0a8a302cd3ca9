"""The audit report: one canonical-JSON document with the privacy spent, the safety bound, the
per-group outcomes and the provenance of a run, checked against a shipped JSON Schema.

:func:`build_report` assembles the (unsigned) report; :func:`write_report_files` signs it and writes
``report.json`` (the canonical bytes that are verified) with its HTML and Markdown renderings,
whose hashes the signature covers. The JSON paths other tools rely on are listed
in ``report.schema.json``; ``schema_version`` changes whenever one of them does.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from safealign._version import __version__
from safealign.audits.canonical import atomic_write_text, build_manifest, canonical_json
from safealign.audits.checks import SCHEMA_VERSION, load_schema, validate_report
from safealign.audits.render import render_html, render_markdown
from safealign.audits.sections import (
    groups_section,
    json_safe,
    privacy_section,
    safety_section,
    splits_section,
)
from safealign.audits.signing import sign_report, signer_section, write_report
from safealign.audits.summary import plain_summary
from safealign.constraints.hc_rlhf import Certificate
from safealign.errors import DataError
from safealign.privacy.training import PrivacyReceipt

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "build_report",
    "collect_environment",
    "load_schema",
    "validate_report",
    "write_report_files",
]

FORMATS = {"json": "report.json", "html": "report.html", "md": "report.md"}
_VERSIONED_PACKAGES = ("torch", "opacus", "transformers", "peft")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def build_report(
    *,
    receipts: Sequence[PrivacyReceipt | dict[str, Any]],
    ledger: dict[str, Any] | None,
    certificate: Certificate | dict[str, Any] | None,
    groups: dict[str, Any] | None,
    splits: dict[str, Any],
    config: dict[str, Any],
    artifacts: Iterable[str | os.PathLike[str]],
    base_dir: str | os.PathLike[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the unsigned audit report of one run.

    Args:
        receipts: The :class:`PrivacyReceipt` (or ``to_dict()``) of every mechanism charged on the private data:
            the reward and cost models, and each group release's publishable receipts
            (``GroupModels.release_receipts``: one per release, EM's noisy cluster sizes
            included). Their mechanisms are composed in one accountant, as the ledger does.
        ledger: The dataset's ledger ``BudgetSummary`` as a dict (``dataclasses.asdict``), or
            ``None``; its budget takes precedence over ``config["budget"]``.
        certificate: The safety test's :class:`Certificate` (pass or NSF; or its ``to_dict()``),
            or ``None`` when there is none.
        groups: MaxMin results ``{name: {"size", "reward", "reward_ci", "cost_upper_bound",
            "reward_lower_bound"}, "worst_group": name}``, or ``None``.
        splits: ``{"fingerprints": {split: id}, "sizes": Splits.sizes()}``, the ids as
            released: keyed commitments for private splits
            (``safealign.run.Workspace.released_fingerprints``), never their plain SHA-256.
        config: The resolved config, ``Config.to_dict()``.
        artifacts: Files to pin by SHA-256 (data, weights, config); each must lie under
            ``base_dir``.
        base_dir: The directory the report will be written to.
        extra: Further JSON data, e.g. ``{"privacy_utility": [{"epsilon", "accuracy"}, ...]}``.

    Returns:
        The report dict, canonical-JSON safe (NaN and infinities become ``None``) and valid
        against ``report.schema.json``. Sign it with ``sign_report``.

    Raises:
        DataError: If an input is malformed or an artifact is missing or outside ``base_dir``.
    """
    config_plain = json_safe(config, "$.config")
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": "safealign",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "privacy": privacy_section(receipts, ledger=ledger, splits=splits, config=config_plain),
        "safety": safety_section(certificate),
        "groups": groups_section(groups),
        "splits": splits_section(splits),
        "artifacts": build_manifest(artifacts, base_dir=base_dir),
        "config": config_plain,
        "config_sha256": hashlib.sha256(canonical_json(config_plain)).hexdigest(),
        "environment": collect_environment(),
        "extra": json_safe(extra or {}, "$.extra"),
    }
    report["summary"] = plain_summary(report).to_dict()
    validate_report(report)
    return report


def collect_environment() -> dict[str, Any]:
    """Versions, device and git commit of the process building the report; never fails.

    A missing package or git checkout gives ``None``, not an error: the report must still be
    written from an installed wheel outside any repository.
    """
    environment: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "safealign": __version__,
    }
    for name in _VERSIONED_PACKAGES:
        try:
            environment[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            environment[name] = None
    environment["device"] = _device()
    environment["git_commit"] = _git_commit()
    return environment


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda ({torch.cuda.get_device_name(0)})"
    except Exception:  # a broken CUDA install must not stop the report
        return "unknown"
    return "cpu"


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.getcwd(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and _COMMIT.match(commit) else None


def write_report_files(
    report: dict[str, Any],
    out_dir: str | os.PathLike[str],
    formats: Iterable[str] = ("json", "html", "md"),
    *,
    private_key: Ed25519PrivateKey,
    demo_key: bool = False,
) -> tuple[dict[str, Any], list[Path]]:
    """Sign the report and write ``report.json`` (canonical bytes), ``report.html``, ``report.md``.

    What a person reads must be covered by the signature too (DESIGN.md, threat model of
    reports): the renderings are written first, from the report with its ``signer`` section,
    and their SHA-256 go into the signed ``renderings`` manifest, so editing ``report.html``
    fails ``safealign audit verify`` as editing ``report.json`` does. Each file is written
    atomically.

    Args:
        report: The unsigned report from :func:`build_report` (an old ``signature`` or
            ``renderings`` is replaced).
        out_dir: The report directory (created if missing); artifact paths are relative to it.
        formats: Any of ``json``, ``html``, ``md``.
        private_key: The signing key.
        demo_key: True when ``private_key`` is a throw-away demo key, not a real identity: the
            signed ``signer`` section says so, the renderings show it and verification warns.

    Returns:
        ``(signed, paths)``: the signed report, and the written paths in the order of ``formats``.

    Raises:
        DataError: On an unknown format or a report that does not match the schema.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise DataError(f"unknown report formats {unknown}; choose from {sorted(FORMATS)}")
    content = {k: v for k, v in report.items() if k not in ("signature", "renderings")}
    content["signer"] = signer_section(private_key.public_key(), demo_key=demo_key)
    validate_report(content)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    renderers = {"html": render_html, "md": render_markdown}
    written = {
        name: atomic_write_text(directory / FORMATS[name], renderers[name](content))
        for name in formats
        if name in renderers
    }
    content["renderings"] = build_manifest(written.values(), base_dir=directory)
    signed = sign_report(content, private_key, base_dir=directory)
    validate_report(signed)
    if "json" in formats:
        written["json"] = write_report(signed, directory / FORMATS["json"])
    return signed, [written[name] for name in formats]
