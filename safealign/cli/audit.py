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

from safealign.cli.common import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """``safealign keys generate --out DIR``: write DIR/private.pem and DIR/public.pem."""
    from safealign.audits.signing import generate_keypair

    private, public = generate_keypair(args.out, overwrite=args.overwrite)
    print(f"wrote {private} (mode 0600: keep it secret) and {public} (give it to reviewers)")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """``safealign audit verify REPORT``: exit 1 unless the signature and hashes check out."""
    from safealign.audits.signing import load_public_key, verify_report

    key = load_public_key(args.public_key) if args.public_key else None
    result = verify_report(args.report, public_key=key)
    if result.valid:
        pinned = (
            "the given public key"
            if result.key_pinned
            else "its embedded key (NOT pinned: pass --public-key)"
        )
        print(
            f"{args.report}: VALID — signature by {pinned} (key id {result.key_id}); "
            f"{result.checked_artifacts} artifact hashes match"
        )
        return EXIT_OK
    print(f"{args.report}: INVALID", file=sys.stderr)
    for problem in result.problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_CHECK_FAILED


def cmd_ledger_show(args: argparse.Namespace) -> int:
    """``safealign ledger show``: budgets, the datasets charged on each, spend and releases."""
    from safealign.privacy.identity import default_ledger_path
    from safealign.privacy.ledger import PrivacyLedger
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
