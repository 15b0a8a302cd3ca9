"""The release inventory: every field of every file a run writes for others, classified once.

A run directory is handed to reviewers, so each of its files is a release. The DP guarantee
covers a field only if it is a DP output (``dp``: a model's weights, DP-calibrated values) or a
function of DP outputs and public inputs alone (``post_processing``). Everything else must be
either declared public with a reason (``public``: configuration, public prompts, sizes that the
DP analysis treats as public such as n and n_s, versions) or listed, in the report itself, as
outside the guarantee (``not_covered``). An exact count, a plain hash of private records, a loss
on private batches or a data-dependent number of releases is none of the first three.

``tests/audits/test_inventory.py`` walks the report schema and a real run directory and fails on
any field this module does not classify, so a new field cannot be released unnoticed.

Paths are dotted: ``*`` is any one key (group names, split names), ``[]`` any list item, and a
final ``**`` the whole subtree. This module lists the files and the report's own fields; the
entries of each file family live beside it: certificates and labelling
(``_inventory_certificate``), receipts, the privacy section, groups and model files
(``_inventory_privacy``), the policy and an LM policy's files (``_inventory_policy``), with the
shared reasons in ``_inventory_base``.

The command line prints fields of these files (receipts, the report), classified here, and
local notes on the data holder's own terminal, never written to the run directory: progress
bars whose training loss is measured on private batches, and the count of training, eval and
candidate prompts that are near-copies of safety prompts (:mod:`safealign.run.alignment`, step 1
of a run). ``data validate`` and ``ledger show`` are the data holder's own tools, run on the
private data and the ledger; their output is not a release.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fnmatch import fnmatch
from typing import Any

from safealign.audits._inventory_base import (
    _COMMITMENT,
    _CONFIG,
    _DIGEST,
    _EVAL,
    _MODELS_ON_PUBLIC,
    _N_SAFETY,
    _PUBLIC_SPLIT,
    _SAFETY,
    _SCHEDULE,
    _SPLIT_SIZES,
    _TEXT,
    _VERSION,
    _WHOLE_REPORT,
    Entry,
    ReleasedFile,
    _e,
)
from safealign.audits._inventory_certificate import certificate_entries
from safealign.audits._inventory_policy import LM_FILES, POLICY
from safealign.audits._inventory_privacy import (
    GROUPS_FILE,
    MODEL_FILES,
    PRIVACY_AUDIT,
    privacy_entries,
    receipt_entries,
)

__all__ = [
    "NOT_RELEASED",
    "RELEASED_FILES",
    "Entry",
    "ReleasedFile",
    "classify",
    "outside_guarantee",
    "released_file",
    "unclassified_fields",
]


def _groups_section() -> tuple[Entry, ...]:
    g = "groups.groups.*."
    return (
        _e("groups.worst_group", "post_processing", _MODELS_ON_PUBLIC),
        _e(g + "size", "public", "always null: group sizes are not released"),
        _e(g + "reward", "post_processing", _MODELS_ON_PUBLIC),
        _e(g + "reward_ci[]", "post_processing", _MODELS_ON_PUBLIC),
        _e(g + "cost_upper_bound", "post_processing", _SAFETY),
        _e(g + "reward_lower_bound", "post_processing", _SAFETY),
        *(
            _e(g + "safety_test." + k, e.kind, e.reason)
            for k, e in (
                ("n", _e("", "public", _N_SAFETY)),
                ("prompts", _e("", "public", _CONFIG)),
                ("reason", _e("", "public", _TEXT)),
                ("cost_mean", _e("", "post_processing", _SAFETY)),
                ("reward_mean", _e("", "post_processing", _SAFETY)),
            )
        ),
    )


_REPORT = (
    _e("schema_version", "public", _TEXT),
    _e("tool", "public", _TEXT),
    _e("created_at", "public", "the time the report was built"),
    _e("summary.*", "public", "sentences built from the report's other fields (classified here)"),
    *privacy_entries(),
    *certificate_entries("safety."),
    *_groups_section(),
    _e("splits.fingerprints.train", "public", _COMMITMENT),
    _e("splits.fingerprints.eval", "public", _COMMITMENT),
    _e("splits.fingerprints.*", "public", _PUBLIC_SPLIT),
    _e("splits.sizes.**", "public", _SPLIT_SIZES),
    _e("artifacts[].path", "public", "names of the run directory's files: code"),
    _e("artifacts[].sha256", "post_processing", _DIGEST),
    _e("config.**", "public", _CONFIG),
    _e("config_sha256", "public", _CONFIG),
    _e("environment.**", "public", _VERSION),
    _e(
        "extra.true_outcomes.**",
        "post_processing",
        "the synthetic world's truth (code, nobody's data) applied to the released policy",
    ),
    _e("extra.privacy_utility[].epsilon", "public", _SCHEDULE),
    _e("extra.privacy_utility[].accuracy", "not_covered", _EVAL),
    _e("renderings[].path", "public", "names of the report's renderings: code"),
    _e("renderings[].sha256", "post_processing", _DIGEST),
    _e("signer.key_id", "public", "fingerprint of the signing public key"),
    _e("signer.demo_key", "public", "whether a throw-away demo key signed the report"),
    _e("signature.**", "public", "signature over the report's bytes and the signer's public key"),
)

#: Every file a run writes for others, in the run directory.
RELEASED_FILES: tuple[ReleasedFile, ...] = (
    ReleasedFile("report", "report.json", _REPORT),
    ReleasedFile("report rendering", "report.html", (_e("**", "public", _WHOLE_REPORT),), False),
    ReleasedFile("report rendering", "report.md", (_e("**", "public", _WHOLE_REPORT),), False),
    ReleasedFile("certificate", "certificate.json", certificate_entries("")),
    ReleasedFile("earlier certificate", "certificates/*.json", certificate_entries("")),
    ReleasedFile("receipt", "*receipt.json", receipt_entries("")),
    ReleasedFile("policy", "policy.json", POLICY),
    ReleasedFile("groups", "groups/groups.json", GROUPS_FILE),
    ReleasedFile("privacy audit", "*privacy_audit.json", PRIVACY_AUDIT),
    ReleasedFile("config", "config.resolved.yaml", (_e("**", "public", _CONFIG),), False),
    *LM_FILES,  # before "*.safetensors": an LM policy's weights are no DP-SGD output
    ReleasedFile("model weights", "*.safetensors", (_e("**", "dp", "DP-SGD output"),), False),
    ReleasedFile("model files", "*/model/*.json", (_e("**", "public", MODEL_FILES),)),
    ReleasedFile("model files", "groups/group-*/*.json", (_e("**", "public", MODEL_FILES),)),
    ReleasedFile("signing public key", "keys/public.pem", (_e("**", "public", "a key"),), False),
)
#: Files a run keeps in its directory that are not for others (skipped by the inventory test).
NOT_RELEASED = (
    "keys/private.pem",  # the demo signing key (the signing key's place is the verify stage's)
    "*reservation.json",  # the ledger's crash-recovery note, deleted when the release commits
    "*checkpoint.pt",  # resume state of an interrupted training, deleted when it completes
    "certifications.sqlite*",  # the certification log, when budget.ledger lies in the run
    "*.embedding-cache.safetensors",  # frozen-backbone embeddings of private text (models/embeddings)
    "safety_responses.jsonl",  # the safety test's response texts, kept for labelling (run/labelling)
)


def released_file(relative_path: str) -> ReleasedFile | None:
    """The inventory entry of a run-directory file (first matching pattern), or None."""
    for released in RELEASED_FILES:
        if fnmatch(relative_path, released.pattern):
            return released
    return None


def _matches(pattern: Sequence[str], path: Sequence[str]) -> bool:
    if pattern and pattern[-1] == "**":
        head = pattern[:-1]
        return len(path) >= len(head) and _matches(head, path[: len(head)])
    return len(pattern) == len(path) and all(
        p == "*" or p == s or fnmatch(s, p) for p, s in zip(pattern, path, strict=True)
    )


def _segments(path: str) -> list[str]:
    return [s for s in path.replace("[]", ".[]").split(".") if s] if path else []


def classify(entries: Sequence[Entry], path: Sequence[str]) -> Entry | None:
    """The first entry whose pattern matches ``path`` (segments; ``[]`` for list items)."""
    for entry in entries:
        if _matches(_segments(entry.path), path):
            return entry
    return None


def _is_container(entries: Sequence[Entry], path: Sequence[str]) -> bool:
    """``path`` is a known container: some entry lies below it (so it may be empty)."""
    return any(
        len(_segments(e.path)) > len(path) and _matches(_segments(e.path)[: len(path)], path)
        for e in entries
    )


def walk_fields(
    document: Any, entries: Sequence[Entry], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Entry | None]]:
    """Each field of ``document`` with its entry (None: unclassified), stopping at classified
    subtrees; an empty dict or list counts as classified when it is a known container."""
    entry = classify(entries, path) if path else None
    if entry is not None:
        yield path, entry
    elif isinstance(document, dict) and document:
        for key, value in document.items():
            yield from walk_fields(value, entries, (*path, str(key)))
    elif isinstance(document, list) and document:
        for value in document:
            yield from walk_fields(value, entries, (*path, "[]"))
    elif not (isinstance(document, (dict, list)) and _is_container(entries, path)):
        yield path, None


def unclassified_fields(document: Any, released: ReleasedFile) -> list[str]:
    """Dotted paths of ``document``'s fields that ``released`` does not classify."""
    found = {".".join(p) or "(root)" for p, e in walk_fields(document, released.entries) if not e}
    return sorted(found)


def outside_guarantee(config: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """What a run releases that the DP guarantee does not cover, for the report to list.

    Args:
        config: The run's resolved config; adds EM's data-dependent stopping when
            ``groups.em_stop_early`` is opted in with ``groups.mode: em``.

    Returns:
        ``[{"file", "field", "reason"}]``: the inventory's ``not_covered`` entries, then any
        that the configuration adds.
    """
    listed = [
        {"file": f.pattern, "field": e.path, "reason": e.reason}
        for f in RELEASED_FILES
        for e in f.entries
        if e.kind == "not_covered"
    ]
    groups = (config or {}).get("groups") or {}
    if groups.get("mode") == "em":
        listed.append(
            {
                "file": "groups/group-*/",
                "field": "(model weights of a cluster left without users)",
                "reason": "an EM cluster that no user chose keeps its previous model instead of "
                "a noise-only DP-SGD run, so whether a cluster emptied can show in the final "
                "models",
            }
        )
    if groups.get("mode") == "em" and groups.get("em_stop_early"):
        listed.append(
            {
                "file": "groups/groups.json",
                "field": "iterations",
                "reason": "groups.em_stop_early: EM stopped when no user moved, so the number "
                "of releases (and of receipts and ledger entries) depends on the data",
            }
        )
    return listed
