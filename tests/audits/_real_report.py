"""A real signed report on disk (the fastest one the report tests build), and re-signing it.

The verification tests need a report that passes every check, so that a forgery shows up as
exactly the check it breaks.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from safealign.audits.canonical import canonical_json
from safealign.audits.keys import raw_public_bytes
from safealign.audits.report import write_report_files
from safealign.audits.signing import key_id, write_report
from tests.audits.test_report import make_report


def write_real_report(
    base: Path, private_key: Ed25519PrivateKey, *, demo_key: bool = False
) -> Path:
    """Build, sign and write report.json/.html/.md with two artifacts under ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    _, paths = write_report_files(
        make_report(base), base, private_key=private_key, demo_key=demo_key
    )
    return paths[0]


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_bytes())


def resign(path: Path, report: dict[str, Any], private_key: Ed25519PrivateKey) -> None:
    """Sign ``report`` as a forger would (no check of what it says) and write it to ``path``.

    ``sign_report`` refuses some forgeries (a stale manifest, an unsafe path, a wrong signer
    section); a forger signs the canonical bytes directly, so this does too.
    """
    content = {k: v for k, v in report.items() if k != "signature"}
    public = private_key.public_key()
    signed = dict(content)
    signed["signature"] = {
        "algorithm": "ed25519",
        "public_key": base64.b64encode(raw_public_bytes(public)).decode("ascii"),
        "key_id": key_id(public),
        "value": base64.b64encode(private_key.sign(canonical_json(content))).decode("ascii"),
    }
    write_report(signed, path)
