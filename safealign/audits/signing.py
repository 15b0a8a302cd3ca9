"""Report signing and verification (keys live in ``keys``, the manifest in ``canonical``, the
schema and cross-field rules in ``checks``).

What a verified report guarantees, and how:

* The signature covers ``canonical_json(report without "signature")``. The ``artifacts``
  manifest in that content pins every data file, weight file and config by SHA-256, and the
  ``renderings`` manifest pins ``report.html`` and ``report.md``, so the signature extends to
  everything a person reads.
* The report file on disk must *be* the canonical form: its bytes must equal
  ``canonical_json(parsed)``, plus at most one trailing newline. Checking the signature over a
  re-serialization alone would accept edits that parse to the same value (re-indentation,
  reordered keys, ``1.0`` written as ``1.00``, ``\\u00e9`` for ``é``, a duplicated key), and the
  report must fail on *any* changed byte. Write reports with :func:`write_report`.
* The ``signature`` object is not itself signed, so each of its fields is pinned another way:
  ``algorithm`` must be ``"ed25519"``, ``key_id`` must be derived from ``public_key``, and both
  base64 fields must be in their one canonical encoding (Python's decoder ignores the unused low
  bits of the last character, so ``"AB=="`` and ``"AA=="`` decode alike).
* A valid signature is not a true report: whoever holds a key can sign nonsense. The content must
  also match the schema and be consistent with itself (``checks``: the verdict follows from the
  bound, ε from the mechanisms, the summary from the fields, ...).
* Authenticity needs a *pinned* key: the embedded public key only shows that the report is
  internally consistent, since a forger can embed their own key. :class:`VerificationResult`
  says which case applies (``key_pinned``), and the signed ``signer`` section says whether a
  throw-away demo key signed it.

Checks, by the name each problem carries: ``read`` and ``json`` (the file; bad input),
``canonical``, ``signature``, ``pinned-key``, ``signer``, the content checks of
:mod:`~safealign.audits.checks` (``schema``, ``safety-verdict``, ``privacy-epsilon``, ...),
``artifact``, ``rendering``, ``manifest-path``, ``symlink``, ``special-file``; and two that only
warn unless ``strict``: ``demo-key`` and ``unlisted`` (files in the directory no manifest names).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from safealign.audits._problem import Problem
from safealign.audits.canonical import (
    atomic_write_bytes,
    build_manifest,
    canonical_json,
    check_manifest,
    read_canonical_report,
    unlisted_files,
)
from safealign.audits.checks import check_report
from safealign.audits.keys import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    raw_public_bytes,
)
from safealign.errors import DataError, SignatureError

__all__ = [
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "Problem",
    "VerificationResult",
    "build_manifest",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_report",
    "signer_section",
    "verify_report",
    "write_report",
]

SIGNATURE_KEY = "signature"
ALGORITHM = "ed25519"
_SIGNATURE_FIELDS = frozenset({"algorithm", "public_key", "key_id", "value"})
_WARNINGS = frozenset({"demo-key", "unlisted"})
_UNLISTED_SHOWN = 20


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of :func:`verify_report`. A failed verification is a result, not an exception.

    Attributes:
        valid: True when no check failed: canonical bytes, signature, schema, cross-field
            consistency, every artifact and rendering hash (and, with ``strict``, no warning).
        problems: Every failed check, each naming its check, field or path.
        checked_artifacts: How many artifact and rendering files were re-hashed (matching or not).
        key_pinned: True when the signature was checked against a key the caller supplied. When
            False, only the key embedded in the report was used: ``valid`` then shows integrity
            (nothing changed since someone signed it), not who signed it.
        key_id: The ``key_id`` of the key the report says signed it, when readable.
        warnings: Checks that do not fail without ``strict``: ``demo-key`` (a throw-away demo key
            signed it: no real identity) and ``unlisted`` (files no manifest covers).
        demo_key: True when the signed ``signer`` section says a demo key signed the report.
    """

    valid: bool
    problems: tuple[Problem, ...]
    checked_artifacts: int
    key_pinned: bool = False
    key_id: str | None = None
    warnings: tuple[Problem, ...] = ()
    demo_key: bool = False

    @property
    def bad_input(self) -> bool:
        """True when the file could not be processed as a report at all (``audit verify`` exit 2)."""
        return any(p.bad_input for p in self.problems)

    @property
    def failed_checks(self) -> frozenset[str]:
        """The names of the checks that failed."""
        return frozenset(p.check for p in self.problems)

    def raise_if_invalid(self) -> None:
        """Raise :class:`SignatureError` listing every problem if the report did not verify."""
        if not self.valid:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            raise SignatureError(
                f"the report does not verify ({len(self.problems)} problems):\n{listed}"
            )


def signer_section(public_key: Ed25519PublicKey, *, demo_key: bool) -> dict[str, Any]:
    """The signed ``signer`` section: which key signs, and whether it is a throw-away demo key.

    The signature object itself is not signed, so the demo flag must live in the content: a
    report signed by a demo key says so in bytes the signature covers, not only on a console.
    """
    return {"key_id": key_id(public_key), "demo_key": bool(demo_key)}


def sign_report(
    report: dict[str, Any], private_key: Ed25519PrivateKey, *, base_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Return a copy of ``report`` with an Ed25519 ``signature`` over its canonical bytes.

    The signature covers ``canonical_json`` of the report without any ``signature`` key, so
    re-signing replaces an old signature. Before signing, every entry of ``report["artifacts"]``
    and ``report["renderings"]`` is re-hashed under ``base_dir``: a stale manifest is refused
    rather than signed. Pipelines sign through ``safealign.audits.report.write_report_files``,
    which also hashes the renderings.

    Args:
        report: The report; must be canonical-JSON serializable. It is not modified.
        private_key: The signing key, e.g. from :func:`load_private_key`.
        base_dir: The directory the report will be written to (artifact paths are relative to it).

    Returns:
        The signed report. Write it with :func:`write_report`, which writes the canonical bytes
        that :func:`verify_report` requires.

    Raises:
        DataError: If the report is not canonical-JSON serializable, its manifest is malformed
            or does not match the files (every mismatch is listed), or its ``signer`` section
            names another key.
        TypeError: If ``private_key`` is not an Ed25519 private key.
    """
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError(
            f"private_key must be an Ed25519PrivateKey (see load_private_key); "
            f"got {type(private_key).__name__}"
        )
    if not isinstance(report, dict):
        raise DataError(f"a report must be a JSON object (dict); got {type(report).__name__}")
    content = {k: v for k, v in report.items() if k != SIGNATURE_KEY}
    payload = canonical_json(content)
    problems = []
    for kind, field in (("artifact", "artifacts"), ("rendering", "renderings")):
        problems += check_manifest(content.get(field, []), base_dir=base_dir, kind=kind)[0]
    if problems:
        listed = "\n".join(f"  - {p.message}" for p in problems)
        raise DataError(
            f"refusing to sign a report whose manifest does not match the files:\n{listed}"
        )
    public_key = private_key.public_key()
    signer = content.get("signer")
    if isinstance(signer, dict) and signer.get("key_id") != key_id(public_key):
        raise DataError(
            f"the report's signer section names key {signer.get('key_id')!r}, but it is being "
            f"signed with key {key_id(public_key)}; rebuild the signer section for this key"
        )
    signed = dict(content)
    signed[SIGNATURE_KEY] = {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(raw_public_bytes(public_key)).decode("ascii"),
        "key_id": key_id(public_key),
        "value": base64.b64encode(private_key.sign(payload)).decode("ascii"),
    }
    return signed


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a (signed) report atomically in the canonical form that :func:`verify_report` requires.

    The bytes are ``canonical_json(report)`` plus one trailing newline.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_bytes(path, canonical_json(report) + b"\n")


def verify_report(
    report_path: str | os.PathLike[str],
    *,
    public_key: Ed25519PublicKey | None = None,
    strict: bool = False,
) -> VerificationResult:
    """Check a report file's bytes, signature, content and every file it pins; list every problem.

    Checks, all run so that every problem is listed at once (names as in the module docstring):

    1. The file is UTF-8 JSON without duplicate keys or NaN/Infinity, nested shallowly enough to
       parse (else nothing more is checked: bad input).
    2. The bytes are exactly ``canonical_json(parsed)``, optionally followed by one newline.
    3. The ``signature`` object is well formed and verifies over the canonical bytes of the rest
       of the report, with ``public_key`` if given (a report signed by another key fails), else
       with the embedded key (``key_pinned=False``); the ``signer`` section names that key.
    4. The content matches the schema and its cross-field rules (:func:`checks.check_report`).
    5. Every artifact and rendering exists under the report's directory, reached without
       symlinks, and has the recorded SHA-256.
    6. Warnings: a demo key signed it; files in the directory that no manifest names.

    Args:
        report_path: The report file.
        public_key: The trusted signer key. Leave out only to check integrity, not origin.
        strict: Treat the warnings of step 6 as failures.

    Returns:
        A :class:`VerificationResult`; malformed input gives ``valid=False`` with ``bad_input``,
        never an exception.
    """
    path = Path(report_path)
    pinned = public_key is not None
    report, problems = read_canonical_report(path)
    if report is None:
        return VerificationResult(False, tuple(problems), 0, pinned)
    signer_id, signature_problems = _check_signature(report, public_key)
    problems += signature_problems
    try:
        problems += check_report(report)
    except RecursionError:
        problems.append(Problem("json", f"{path}: nested too deeply to check", bad_input=True))
    demo, signer_problems = _check_signer(report, signer_id)
    problems += signer_problems
    checked = 0
    for kind, field in (("artifact", "artifacts"), ("rendering", "renderings")):
        found, count = check_manifest(report.get(field, []), base_dir=path.parent, kind=kind)
        problems += found
        checked += count
    warnings = _warnings(report, path, demo)
    if strict:
        problems, warnings = problems + warnings, []
    return VerificationResult(
        not problems, tuple(problems), checked, pinned, signer_id, tuple(warnings), demo
    )


def _check_signer(report: dict[str, Any], signer_id: str | None) -> tuple[bool, list[Problem]]:
    """Whether the signed ``signer`` section says demo key, and its problems."""
    signer = report.get("signer")
    if not isinstance(signer, dict):
        return False, []  # absent or malformed: the schema check names it
    problems = []
    if signer_id is not None and signer.get("key_id") != signer_id:
        problems.append(
            Problem(
                "signer",
                f"the signer section names key {signer.get('key_id')!r}, but key {signer_id} "
                "signed the report",
            )
        )
    return signer.get("demo_key") is True, problems


def _warnings(report: dict[str, Any], path: Path, demo: bool) -> list[Problem]:
    warnings = []
    if demo:
        warnings.append(
            Problem(
                "demo-key",
                "signed with a throw-away demo key, NOT a real identity: it shows the report is "
                "intact, not who made it (configure audit.signing_key for real reports)",
            )
        )
    listed = {path.name}
    for field in ("artifacts", "renderings"):
        entries = report.get(field)
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                listed.add(entry["path"])
    unlisted = unlisted_files(path.parent, listed)
    if unlisted:
        shown = ", ".join(unlisted[:_UNLISTED_SHOWN])
        more = (
            f" and {len(unlisted) - _UNLISTED_SHOWN} more"
            if len(unlisted) > _UNLISTED_SHOWN
            else ""
        )
        warnings.append(
            Problem(
                "unlisted",
                f"{len(unlisted)} file{'s' if len(unlisted) != 1 else ''} in {path.parent} "
                f"{'are' if len(unlisted) != 1 else 'is'} not covered by the signature: "
                f"{shown}{more}",
            )
        )
    return warnings


def _check_signature(
    report: dict[str, Any], pinned_key: Ed25519PublicKey | None
) -> tuple[str | None, list[Problem]]:
    """Check the ``signature`` object; return the signer's key id (if readable) and problems."""
    signature = report.get(SIGNATURE_KEY)
    if not isinstance(signature, dict):
        return None, [
            Problem("signature", f"the report is not signed (no '{SIGNATURE_KEY}' object)")
        ]
    problems: list[str] = []
    if set(signature) != _SIGNATURE_FIELDS:
        problems.append(
            f"signature fields are {sorted(signature)}, expected exactly {sorted(_SIGNATURE_FIELDS)}"
        )
    if signature.get("algorithm") != ALGORITHM:
        problems.append(
            f"signature algorithm is {signature.get('algorithm')!r}, expected {ALGORITHM!r}"
        )
    raw_key = _strict_b64(signature.get("public_key"), 32, "public_key", problems)
    value = _strict_b64(signature.get("value"), 64, "value", problems)
    embedded = None
    if raw_key is not None:
        try:
            embedded = Ed25519PublicKey.from_public_bytes(raw_key)
        except ValueError:
            problems.append("signature public_key is not a valid Ed25519 public key")
            raw_key = None
    signer_id = key_id(embedded) if embedded is not None else None
    if embedded is not None and signature.get("key_id") != signer_id:
        problems.append(
            f"signature key_id {signature.get('key_id')!r} does not match its public key "
            f"(whose key_id is {signer_id!r})"
        )
    found = [Problem("signature", p) for p in problems]
    if pinned_key is not None and raw_key is not None and raw_key != raw_public_bytes(pinned_key):
        found.append(
            Problem(
                "pinned-key",
                f"the report was signed by key {signer_id}, not by the expected key "
                f"{key_id(pinned_key)}",
            )
        )
    verifier = pinned_key if pinned_key is not None else embedded
    if verifier is not None and value is not None:
        payload = canonical_json({k: v for k, v in report.items() if k != SIGNATURE_KEY})
        try:
            verifier.verify(value, payload)
        except InvalidSignature:
            found.append(
                Problem(
                    "signature",
                    f"the signature does not verify with key {key_id(verifier)}: the report "
                    "content was changed after signing, or another key signed it",
                )
            )
    return signer_id, found


def _strict_b64(text: Any, size: int, name: str, problems: list[str]) -> bytes | None:
    """Decode canonical base64 of exactly ``size`` bytes, else append a problem and return None."""
    decoded = None
    if isinstance(text, str):
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            decoded = None
    # Re-encoding rejects the unused-bit variants the decoder tolerates ("AB==" vs "AA==").
    if decoded is None or len(decoded) != size or base64.b64encode(decoded).decode() != text:
        problems.append(f"signature {name} is not canonical base64 of {size} bytes: {text!r}")
        return None
    return decoded
