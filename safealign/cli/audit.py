"""Handlers of the key, audit-report and ledger commands: ``keys generate``, ``audit verify`` and
``ledger show``.

These are the reviewer-facing commands: make the Ed25519 key pair that signs audit reports, check a
signed report and every artifact hash it lists, and print the privacy ledger's budgets and
releases. The signing and ledger modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safealign.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_NOT_AUTHENTICATED,
    EXIT_OK,
)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """``safealign keys generate --out DIR``: write DIR/private.pem and DIR/public.pem."""
    from safealign.audits import generate_keypair

    private, public = generate_keypair(args.out, overwrite=args.overwrite)
    print(f"wrote {private} (mode 0600: keep it secret) and {public} (give it to reviewers)")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """``safealign audit verify REPORT``: 0 valid and pinned, 1 invalid, 2 unreadable, 3 unpinned.

    Without ``--public-key`` the signature is checked with the key embedded in the report, which
    a forger chooses: that proves the report is intact, not who signed it, so it gets its own
    wording and exit code 3, which no script testing for 0 mistakes for success.
    """
    from safealign.audits import load_public_key, verify_report

    key = load_public_key(args.public_key) if args.public_key else None
    result = verify_report(args.report, public_key=key, strict=args.strict)
    if result.bad_input:
        print(f"error: {args.report}: cannot verify: not a readable report", file=sys.stderr)
        for problem in result.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not result.valid:
        print(f"{args.report}: INVALID ({len(result.problems)} problems)", file=sys.stderr)
        for problem in result.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    checked = f"{result.checked_artifacts} artifact and rendering hashes match"
    demo = " — a DEMO key, NOT a real identity" if result.demo_key else ""
    if result.key_pinned:
        print(f"{args.report}: VALID (signed by the pinned key {result.key_id}{demo}); {checked}")
        return EXIT_OK
    print(
        f"{args.report}: INTEGRITY OK — NOT AUTHENTICATED: intact and consistent, signed by the key "
        f"embedded in it ({result.key_id}{demo}), which anyone can choose; {checked}. Pass "
        "--public-key with the signer's public.pem to check who signed it (exit 3)"
    )
    return EXIT_NOT_AUTHENTICATED


def cmd_ledger_show(args: argparse.Namespace) -> int:
    """``safealign ledger show``: budgets, the datasets charged on each, spend and releases."""
    from safealign.privacy import PrivacyLedger, default_ledger_path
    from safealign.privacy.ledger_records import format_ledger

    path = Path(args.ledger) if args.ledger else default_ledger_path()
    if not path.exists():
        print(
            f"error: {path}: no ledger here (it is created by the first private training run; "
            "the default is the per-user ledger, --ledger PATH reads another)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print(f"ledger {path}")
    print(format_ledger(PrivacyLedger(path).summary()))
    return EXIT_OK
