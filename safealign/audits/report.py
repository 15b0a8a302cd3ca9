"""The audit report: one canonical-JSON document with the privacy spent, the safety bound, the
per-group outcomes and the provenance of a run, checked against a shipped JSON Schema.

:func:`build_report` assembles the (unsigned) report; :func:`~safealign.audits.signing.sign_report`
signs it; :func:`write_report_files` writes ``report.json`` (the canonical bytes that are
verified) with its HTML and Markdown renderings. The JSON paths other tools rely on are listed
in ``report.schema.json``; ``schema_version`` changes whenever one of them does.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from safealign import __version__
from safealign.audits.canonical import atomic_write_text, build_manifest, canonical_json
from safealign.audits.render import render_html, render_markdown
from safealign.audits.sections import (
    groups_section,
    json_safe,
    privacy_section,
    safety_section,
    splits_section,
)
from safealign.audits.signing import write_report
from safealign.audits.summary import plain_summary
from safealign.errors import DataError

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "build_report",
    "collect_environment",
    "load_schema",
    "validate_report",
    "write_report_files",
]

SCHEMA_VERSION = 1
SCHEMA_NAME = "report.schema.json"
FORMATS = {"json": "report.json", "html": "report.html", "md": "report.md"}
_VERSIONED_PACKAGES = ("torch", "opacus", "transformers", "peft")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def build_report(
    *,
    receipts: Sequence[dict[str, Any]],
    ledger: dict[str, Any] | None,
    certificate: dict[str, Any] | None,
    groups: dict[str, Any] | None,
    splits: dict[str, Any],
    config: dict[str, Any],
    artifacts: Iterable[str | os.PathLike[str]],
    base_dir: str | os.PathLike[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the unsigned audit report of one run.

    Args:
        receipts: ``PrivacyReceipt.to_dict()`` of every mechanism charged on the private data:
            the reward and cost models, and each group release's publishable receipts
            (``GroupModels.release_receipts``: one per release, EM's noisy cluster sizes
            included). Their mechanisms are composed in one accountant, as the ledger does.
        ledger: The dataset's ledger ``BudgetSummary`` as a dict (``dataclasses.asdict``), or
            ``None``; its budget takes precedence over ``config["budget"]``.
        certificate: ``Certificate.to_dict()`` of the safety test (pass or NSF), or ``None``
            when no safety test was run.
        groups: MaxMin results ``{name: {"size", "reward", "reward_ci", "cost_upper_bound",
            "reward_lower_bound"}, "worst_group": name}``, or ``None``.
        splits: ``{"fingerprints": {split: id}, "sizes": Splits.sizes()}``, the ids as
            released: keyed commitments for private splits
            (``safealign.run_stages.released_fingerprints``), never their plain SHA-256.
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


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("safealign.audits").joinpath(SCHEMA_NAME).read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The report's JSON Schema (draft 2020-12), as shipped in the package."""
    return json.loads(_schema_text())


def validate_report(report: dict[str, Any]) -> None:
    """Check ``report`` (signed or not) against ``report.schema.json``.

    Raises:
        DataError: Listing every schema violation with its JSON path, e.g.
            ``$.privacy.epsilon: 'x' is not of type 'number', 'null'``.
    """
    validator = Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        listed = "\n".join(f"  - {error.json_path}: {error.message}" for error in errors)
        raise DataError(
            f"the report does not match {SCHEMA_NAME} (schema_version {SCHEMA_VERSION}); "
            f"{len(errors)} problems:\n{listed}"
        )


def write_report_files(
    report_signed: dict[str, Any],
    out_dir: str | os.PathLike[str],
    formats: Iterable[str] = ("json", "html", "md"),
) -> list[Path]:
    """Write the report as ``report.json`` (canonical bytes), ``report.html`` and ``report.md``.

    Each file is written atomically. Only ``report.json`` is verified by
    ``safealign audit verify``; the renderings are views of it.

    Args:
        report_signed: The report, normally signed by ``sign_report``.
        out_dir: The report directory (created if missing).
        formats: Any of ``json``, ``html``, ``md``.

    Returns:
        The written paths, in the order of ``formats``.

    Raises:
        DataError: On an unknown format or a report that does not match the schema.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise DataError(f"unknown report formats {unknown}; choose from {sorted(FORMATS)}")
    validate_report(report_signed)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in formats:
        path = directory / FORMATS[name]
        if name == "json":
            written.append(write_report(report_signed, path))
        elif name == "html":
            written.append(atomic_write_text(path, render_html(report_signed)))
        else:
            written.append(atomic_write_text(path, render_markdown(report_signed)))
    return written
