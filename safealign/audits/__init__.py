"""Audit reports: canonical JSON, schema, rendering, Ed25519 signing and verification."""

from safealign._lazy import lazy_exports

_EXPORTS = {
    "safealign.audits.report": ("build_report", "write_report_files"),
    "safealign.audits.signing": (
        "sign_report",
        "verify_report",
        "write_report",
        "VerificationResult",
    ),
    "safealign.audits.keys": ("generate_keypair", "load_private_key", "load_public_key"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
