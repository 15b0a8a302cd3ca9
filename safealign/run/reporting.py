"""The report stage: the signed audit report of a run directory (``report.{json,html,md}``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safealign.audits.report import build_report, write_report_files
from safealign.constraints.attempts import log_path
from safealign.constraints.hc_rlhf import Certificate
from safealign.models.embeddings import CACHE_SUFFIX
from safealign.privacy.identity import default_ledger_path
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.training import PrivacyReceipt, commit_fingerprint
from safealign.run.keys import signing_key
from safealign.run.paths import REPORT_FILES
from safealign.run.workspace import Workspace


@dataclass(frozen=True)
class SignedReport:
    """The signed report, the files written (in ``audit.formats`` order) and the signing note."""

    report: dict
    paths: list[Path]
    key_note: str | None


def report(
    ws: Workspace,
    *,
    receipts: Sequence[PrivacyReceipt],
    certificate: Certificate,
    group_rewards: dict[str, float] | None,
    truth: dict | None = None,
) -> SignedReport:
    """Build, sign and write the run's audit report.

    Args:
        ws: The run's workspace.
        receipts: One receipt per mechanism charged on the private data.
        certificate: The safety test's certificate (pass or NSF).
        group_rewards: Per group, the expected normalised model reward under the policy.
        truth: The released policy's true outcomes (synthetic world only), or None.
    """
    config, out = ws.config, ws.out
    ledger = ledger_summary(ws)
    groups = group_rewards and report_groups(group_rewards, certificate.groups)
    key = signing_key(config, out)
    built = build_report(
        receipts=list(receipts),
        ledger=ledger,
        certificate=certificate,
        groups=groups,
        # Commitments, not SHA-256, for the private splits (Workspace.released_fingerprints).
        splits={
            "fingerprints": ws.released_fingerprints()["splits"],
            "sizes": ws.splits.sizes(),
        },
        config=config.to_dict(),
        artifacts=_artifacts(ws),
        base_dir=out,
        extra={"true_outcomes": truth} if truth else None,
    )
    signed, paths = write_report_files(
        built, out, formats=config.audit.formats, private_key=key.private_key, demo_key=key.demo
    )
    return SignedReport(signed, paths, key.note)


def _artifacts(ws: Workspace) -> list[Path]:
    """Every file of the run except the report and its renderings (hashed in the signed
    renderings manifest), a configured private key placed inside the run, and the ledger and
    certification log: live databases whose bytes change as they are read (the ledger's state
    is in privacy.ledger). Nor the frozen-backbone embedding cache: private data, whose hashes
    would let anyone holding a guessed text test it."""
    config = ws.config
    ledger = Path(config.budget.ledger or default_ledger_path()).resolve()
    log = str(log_path(config.budget).resolve())
    secret = Path(config.audit.signing_key).resolve() if config.audit.signing_key else None
    return [
        p
        for p in sorted(ws.out.rglob("*"))
        if p.is_file()
        and not p.is_symlink()
        and p.name not in REPORT_FILES
        and not p.name.endswith(CACHE_SUFFIX)
        and p.resolve() != secret
        and not p.resolve().name.startswith(ledger.name)
        and not str(p.resolve()).startswith(log)
    ]


def report_groups(group_rewards: dict[str, float], bounds: dict | None) -> dict:
    """The report's per-group entries: the model reward on the candidate prompts, with the bounds
    the safety test's sample gives (``cost_upper_bound``, ``reward_lower_bound``, ``safety_test``;
    ``bounds`` is the certificate's ``groups`` block, None without one).

    ``size`` stays None: the exact number of users or pairs per group in the training data
    (``GroupModels.assignment_counts``) is not covered by the DP guarantee, which the report
    states for everything it releases about the training data.
    """
    bounds = (bounds or {}).get("groups") or {}
    entries = {}
    for name, reward in group_rewards.items():
        entry = {"size": None, "reward": reward}
        if name in bounds:
            b = bounds[name]
            entry["cost_upper_bound"] = b["cost_upper_bound"]
            entry["reward_lower_bound"] = b["reward_lower_bound"]
            keys = ("n", "prompts", "cost_mean", "reward_mean", "reason")
            entry["safety_test"] = {key: b[key] for key in keys}
        entries[name] = entry
    return entries


def ledger_summary(ws: Workspace) -> dict | None:
    """The most-spent budget the source dataset is charged on (None when nothing private ran), as
    the report shows it: the dataset's fingerprint replaced by its commitment."""
    path = Path(ws.config.budget.ledger or default_ledger_path())
    if not path.exists():
        return None
    fingerprint = ws.pairs.fingerprint
    spend = PrivacyLedger(path).dataset_spend(fingerprint)
    if spend is None:
        return None
    summary = dataclasses.asdict(spend)
    summary["fingerprint"] = commit_fingerprint(ws.commitment_key, fingerprint)
    return summary
