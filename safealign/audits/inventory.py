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
final ``**`` the whole subtree.

The command line prints fields of these files (receipts, the report), classified here, and
local notes on the data holder's own terminal, never written to the run directory: progress
bars whose training loss is measured on private batches, and the count of training, eval and
candidate prompts that are near-copies of safety prompts (:mod:`safealign.run.alignment`, step 1
of a run). ``data validate`` and ``ledger show`` are the data holder's own tools, run on the
private data and the ledger; their output is not a release.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any, Literal

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

Kind = Literal["dp", "post_processing", "public", "not_covered"]


@dataclass(frozen=True)
class Entry:
    """One classified field (or subtree) and why it may be released."""

    path: str
    kind: Kind
    reason: str


@dataclass(frozen=True)
class ReleasedFile:
    """A file of the run directory (``pattern``: an fnmatch pattern on its relative path)."""

    name: str
    pattern: str
    entries: tuple[Entry, ...]
    json: bool = True


# --- reasons, written once ---------------------------------------------------------------------
_CONFIG = "configuration chosen by the user before seeing the data"
_SCHEDULE = (
    "computed from the training schedule (sigma, q, T) and delta, which depend only on the "
    "configuration and the declared-public training-set size"
)
_SIZE_N = (
    "the training split's size n: declared public, as in Opacus' DP-SGD analysis (the published "
    "sampling rate q = B/n reveals it anyway); never a group's or a cluster's size"
)
_SPLIT_SIZES = "split sizes (pairs, prompts): declared public, like n and n_s"
_COMMITMENT = (
    "HMAC-SHA256 commitment keyed by the ledger's secret: without the key it reveals nothing, "
    "with it stages check they saw the same data"
)
_PUBLIC_SPLIT = (
    "plain SHA-256 of a split declared public (candidate and safety prompts are public inputs)"
)
_EVAL = (
    "measured on the eval split's held-out pairs, which the guarantee does not protect; the "
    "report lists that split as not protected"
)
_MODELS_ON_PUBLIC = "post-processing of the DP models on public prompts and reference samples"
_SAFETY = "the DP cost (and group) models scored on the public safety prompts' responses"
_VERSION = "software versions and platform of the machine that built the report"
_TEXT = "fixed text written by safealign"
_WHOLE_REPORT = "a rendering of report.json: the same fields, classified there"
_N_SAFETY = "n_s, the safety set's size: public by HC-RLHF's design (it sets the pessimism)"
_DIGEST = "SHA-256 of a released file: post-processing of that file's content"
_ATTEMPTS = (
    "when and how often the user tested this safety set (the certification log): the user's "
    "actions, not data"
)


_DRAW = (
    "positions of the responses drawn for labelling, from fresh secret randomness independent "
    "of every response and score"
)
_LABELS = (
    "computed from the trusted labels of the safety responses (safety.labels), which are not "
    "an output of any DP mechanism; the labelled verdict and bound depend on them too"
)


def _e(path: str, kind: Kind, reason: str) -> Entry:
    return Entry(path, kind, reason)


def _labelling(p: str) -> tuple[Entry, ...]:
    """A labelled certificate's ``labelling`` block (:mod:`safealign.run.labelling`)."""
    return (
        *(_e(f"{p}{k}", "public", _CONFIG) for k in ("size", "decide", "weight", "method", "prediction_share")),
        _e(f"{p}status", "public", _TEXT),
        _e(f"{p}target", "public", _CONFIG),
        _e(f"{p}method_version", "public", _TEXT),
        _e(f"{p}decided_by", "public", _CONFIG),
        _e(f"{p}n", "public", _N_SAFETY),
        _e(f"{p}indices[]", "public", _DRAW),
        _e(f"{p}labels[]", "not_covered", _LABELS),
        _e(f"{p}unsafe[]", "not_covered", _LABELS),
        _e(f"{p}labels_sha256", "not_covered", _LABELS),
        _e(f"{p}bounds.cost_model_only.**", "post_processing", _SAFETY),
        _e(f"{p}bounds.*.quantity", "public", _TEXT),
        _e(f"{p}bounds.**", "not_covered", _LABELS),
        _e(f"{p}judge.**", "not_covered", _LABELS),
    )


def _certificate(prefix: str) -> tuple[Entry, ...]:
    """Certificate fields (certificate.json, and the report's ``safety`` section)."""
    p = prefix
    return (
        _e(f"{p}metric", "public", _CONFIG),
        _e(f"{p}cost_threshold", "public", _CONFIG),
        _e(f"{p}confidence", "public", _CONFIG),
        _e(f"{p}bound", "public", _CONFIG),
        _e(f"{p}value_range", "public", _CONFIG),
        _e(f"{p}source", "public", _TEXT),
        _e(f"{p}reason", "post_processing", _MODELS_ON_PUBLIC),
        _e(f"{p}n", "public", _N_SAFETY),
        _e(f"{p}mean", "post_processing", _SAFETY),
        _e(f"{p}std", "post_processing", _SAFETY),
        _e(f"{p}upper_bound", "post_processing", _SAFETY),
        _e(f"{p}passed", "post_processing", _SAFETY),
        _e(f"{p}result", "post_processing", _SAFETY),
        _e(f"{p}costs[]", "post_processing", _SAFETY),
        _e(f"{p}values[]", "post_processing", _SAFETY),
        _e(f"{p}quantity", "public", _TEXT),
        _e(f"{p}approximate", "public", _CONFIG),
        _e(f"{p}sampler_settings.**", "public", "the deployed policy's settings: configuration"),
        _e(f"{p}safety_fingerprint", "public", _PUBLIC_SPLIT),
        _e(f"{p}assumptions[]", "public", _TEXT),
        _e(f"{p}attempts.declared", "public", _CONFIG),
        _e(f"{p}attempts.confidence", "public", _CONFIG),
        _e(f"{p}attempts.per_attempt_confidence", "public", _CONFIG),
        _e(f"{p}attempts.number", "public", _ATTEMPTS),
        _e(f"{p}attempts.safety_set", "public", _COMMITMENT),
        _e(f"{p}attempts.log[].number", "public", _ATTEMPTS),
        _e(f"{p}attempts.log[].policy", "public", "SHA-256 of a tested policy's settings: configuration"),
        _e(f"{p}attempts.log[].bound", "public", _CONFIG),
        _e(f"{p}attempts.log[].confidence", "public", _CONFIG),
        _e(f"{p}attempts.log[].started_at", "public", _ATTEMPTS),
        _e(f"{p}attempts.log[].upper_bound", "post_processing", _SAFETY),
        _e(f"{p}attempts.log[].result", "post_processing", _SAFETY),
        *_labelling(f"{p}labelling."),
        _e(f"{p}groups.confidence", "public", _CONFIG),
        _e(f"{p}groups.per_bound_confidence", "public", _CONFIG),
        _e(f"{p}groups.metric", "public", _CONFIG),
        _e(f"{p}groups.cost_bound", "public", _CONFIG),
        _e(f"{p}groups.reward_bound", "public", _CONFIG),
        _e(f"{p}groups.reward_normalization", "public", _CONFIG),
        _e(f"{p}groups.simultaneous", "public", _TEXT),
        _e(f"{p}groups.note", "public", _TEXT),
        _e(f"{p}groups.groups.*.n", "public", "safety prompts counting for a group: n_s or a "
           "subset of the public safety split"),  # fmt: skip
        _e(f"{p}groups.groups.*.prompts", "public", _CONFIG),
        _e(f"{p}groups.groups.*.reason", "public", _TEXT),
        _e(f"{p}groups.groups.*.cost_mean", "post_processing", _SAFETY),
        _e(f"{p}groups.groups.*.cost_upper_bound", "post_processing", _SAFETY),
        _e(f"{p}groups.groups.*.reward_mean", "post_processing", _SAFETY),
        _e(f"{p}groups.groups.*.reward_lower_bound", "post_processing", _SAFETY),
    )


def _receipt(prefix: str, *, metrics: bool = True) -> tuple[Entry, ...]:
    """Receipt fields (receipt.json; groups.json's receipts, ``metrics=False``: always empty)."""
    p = prefix
    public = ("kind", "private", "target_epsilon", "target_delta", "max_grad_norm",
              "privacy_unit", "seed", "backbone", "safealign_version", "grad_sample_mode",
              "accountant")  # fmt: skip
    schedule = ("noise_multiplier", "sample_rate", "steps", "planned_steps", "calibration_steps",
                "epsilon", "accountant_fallback")  # fmt: skip
    return (
        *(_e(f"{p}{k}", "public", _CONFIG) for k in public),
        *(_e(f"{p}{k}", "public", _SCHEDULE) for k in schedule),
        _e(f"{p}num_units", "public", _SIZE_N),
        _e(f"{p}num_pairs", "public", _SIZE_N),
        _e(f"{p}dataset_fingerprint", "public", _COMMITMENT),
        *(
            (
                _e(f"{p}metrics.eval/*", "not_covered", _EVAL),
                _e(f"{p}metrics.train/calibration_shift", "dp",
                   "the cost model's level, fitted by DP-SGD steps counted in the receipt"),
            )  # fmt: skip
            if metrics
            else (
                _e(f"{p}metrics", "public", "always {}: a group's or an EM cluster's held-out "
                   "metrics depend on other users' assignments (release_receipts drops them)"),
            )  # fmt: skip
        ),
    )


def _privacy() -> tuple[Entry, ...]:
    p = "privacy."
    mech = "privacy.mechanisms[]."
    return (
        _e(f"{p}private", "public", _CONFIG),
        _e(f"{p}epsilon", "public", _SCHEDULE),
        _e(f"{p}delta", "public", _CONFIG),
        _e(f"{p}accountant", "public", _CONFIG),
        _e(f"{p}accountant_fallback", "public", _SCHEDULE),
        _e(f"{p}naive_sum_epsilon", "public", _SCHEDULE),
        _e(f"{p}within_budget", "public", _SCHEDULE),
        _e(f"{p}non_private_models[]", "public", _CONFIG),
        _e(f"{p}warning", "public", _TEXT),
        _e(f"{p}budget.epsilon", "public", _CONFIG),
        _e(f"{p}budget.delta", "public", _CONFIG),
        _e(f"{p}budget.source", "public", _TEXT),
        _e(f"{p}ledger.fingerprint", "public", _COMMITMENT),
        _e(f"{p}ledger.name", "public", "the dataset's name: configuration"),
        _e(f"{p}ledger.epsilon", "public", _SCHEDULE + " (all releases on this dataset)"),
        _e(f"{p}ledger.committed_epsilon", "public", _SCHEDULE),
        _e(f"{p}ledger.naive_epsilon", "public", _SCHEDULE),
        _e(f"{p}ledger.accountant", "public", _CONFIG),
        _e(f"{p}ledger.fallback_reason", "public", _SCHEDULE),
        _e(f"{p}ledger.num_releases", "public",
           "releases charged: fixed by the configuration (EM runs em_max_iters iterations "
           "unless em_stop_early is opted in, then listed as outside the guarantee)"),  # fmt: skip
        *(_e(mech + k, "public", _CONFIG) for k in ("kind", "private", "max_grad_norm",
          "privacy_unit", "backbone", "accountant", "receipt_target_delta")),  # fmt: skip
        *(_e(mech + k, "public", _SCHEDULE) for k in ("noise_multiplier", "sample_rate", "steps",
          "epsilon", "receipt_epsilon", "accountant_fallback")),  # fmt: skip
        _e(mech + "num_units", "public", _SIZE_N),
        _e(mech + "num_pairs", "public", _SIZE_N),
        _e(mech + "dataset_fingerprint", "public", _COMMITMENT),
        _e(f"{p}scope.protected", "public", _TEXT),
        _e(f"{p}scope.privacy_unit", "public", _CONFIG),
        _e(f"{p}scope.dataset_fingerprints[]", "public", _COMMITMENT),
        _e(f"{p}scope.train_split_fingerprint", "public", _COMMITMENT),
        _e(f"{p}scope.public_inputs[]", "public", _TEXT),
        _e(f"{p}scope.not_protected_splits.eval", "public", _COMMITMENT),
        _e(f"{p}scope.not_protected_splits.*", "public", _PUBLIC_SPLIT),
        _e(f"{p}scope.post_processing", "public", _TEXT),
        _e(f"{p}scope.notes[]", "public", _TEXT),
        _e(f"{p}outside_guarantee[].file", "public", "this inventory: code"),
        _e(f"{p}outside_guarantee[].field", "public", "this inventory: code"),
        _e(f"{p}outside_guarantee[].reason", "public", "this inventory: code"),
    )


def _groups_section() -> tuple[Entry, ...]:
    g = "groups.groups.*."
    return (
        _e("groups.worst_group", "post_processing", _MODELS_ON_PUBLIC),
        _e(g + "size", "public", "always null: group sizes are not released"),
        _e(g + "reward", "post_processing", _MODELS_ON_PUBLIC),
        _e(g + "reward_ci[]", "post_processing", _MODELS_ON_PUBLIC),
        _e(g + "cost_upper_bound", "post_processing", _SAFETY),
        _e(g + "reward_lower_bound", "post_processing", _SAFETY),
        *(_e(g + "safety_test." + k, e.kind, e.reason) for k, e in (
            ("n", _e("", "public", _N_SAFETY)), ("prompts", _e("", "public", _CONFIG)),
            ("reason", _e("", "public", _TEXT)), ("cost_mean", _e("", "post_processing", _SAFETY)),
            ("reward_mean", _e("", "post_processing", _SAFETY)))),  # fmt: skip
    )


_REPORT = (
    _e("schema_version", "public", _TEXT),
    _e("tool", "public", _TEXT),
    _e("created_at", "public", "the time the report was built"),
    _e("summary.*", "public", "sentences built from the report's other fields (classified here)"),
    *_privacy(),
    *_certificate("safety."),
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
    _e("extra.true_outcomes.**", "post_processing",
       "the synthetic world's truth (code, nobody's data) applied to the released policy"),
    _e("extra.privacy_utility[].epsilon", "public", _SCHEDULE),
    _e("extra.privacy_utility[].accuracy", "not_covered", _EVAL),
    _e("renderings[].path", "public", "names of the report's renderings: code"),
    _e("renderings[].sha256", "post_processing", _DIGEST),
    _e("signer.key_id", "public", "fingerprint of the signing public key"),
    _e("signer.demo_key", "public", "whether a throw-away demo key signed the report"),
    _e("signature.**", "public", "signature over the report's bytes and the signer's public key"),
)

_POLICY = (
    _e("kind", "public", _TEXT),
    _e("version", "public", _TEXT),
    _e("reason", "post_processing", _MODELS_ON_PUBLIC),
    _e("policy.lambda", "post_processing", _MODELS_ON_PUBLIC),
    _e("policy.**", "public", "the selected policy's settings: configuration"),
    _e("selection.n_safety", "public", _N_SAFETY),
    _e("selection.n_opt", "public", "the candidate split's prompt count: declared public"),
    _e("selection.cost_threshold", "public", _CONFIG),
    _e("selection.method", "public", _CONFIG),
    _e("selection.metric", "public", _CONFIG),
    _e("selection.*", "post_processing", _MODELS_ON_PUBLIC),
    _e("safety.**", "public", _CONFIG),
    _e("groups.weights.*", "post_processing", _MODELS_ON_PUBLIC),
    _e("groups.rewards.*", "post_processing", _MODELS_ON_PUBLIC),
    _e("models.**", "public", "model directory names: code"),
    _e("candidates.**", "public", "where the public candidates came from (sampler or file)"),
    _e("data.dataset", "public", "the dataset's name: configuration"),
    _e("data.dataset_fingerprint", "public", _COMMITMENT),
    _e("data.split_fingerprints.train", "public", _COMMITMENT),
    _e("data.split_fingerprints.eval", "public", _COMMITMENT),
    _e("data.split_fingerprints.*", "public", _PUBLIC_SPLIT),
    _e("data.n_safety", "public", _N_SAFETY),
)

_GROUPS_FILE = (
    _e("names[]", "public", "group names: the data's declared groups, or cluster-0..K-1 (config)"),
    _e("iterations", "public", "groups.em_max_iters (config), unless em_stop_early is opted in"),
    *_receipt("receipts[].", metrics=False),
)

_MODEL_FILES = "architecture, tokenizer and adapter configuration: code or a public backbone"
_LM_BASE = "the policy LM's base: built in code, SFT on public synthetic text, or a public model"
_LM_TILT = "the policy LM distilled from DP-model scores of its own samples on public prompts"

_AUDIT = "the audited DP model's scores of the canaries (random words, nobody's data)"
_PRIVACY_AUDIT = (
    _e("epsilon_lower", "post_processing", _AUDIT),
    _e("guesses", "post_processing", _AUDIT),
    _e("correct", "post_processing", _AUDIT),
    _e("num_canaries", "public", _CONFIG),
    _e("confidence", "public", _CONFIG),
    *(_e(k, "public", _SCHEDULE) for k in ("epsilon", "noise_multiplier", "steps", "sample_rate")),
)

#: Every file a run writes for others, in the run directory.
RELEASED_FILES: tuple[ReleasedFile, ...] = (
    ReleasedFile("report", "report.json", _REPORT),
    ReleasedFile("report rendering", "report.html", (_e("**", "public", _WHOLE_REPORT),), False),
    ReleasedFile("report rendering", "report.md", (_e("**", "public", _WHOLE_REPORT),), False),
    ReleasedFile("certificate", "certificate.json", _certificate("")),
    ReleasedFile("earlier certificate", "certificates/*.json", _certificate("")),
    ReleasedFile("receipt", "*receipt.json", _receipt("")),
    ReleasedFile("policy", "policy.json", _POLICY),
    ReleasedFile("groups", "groups/groups.json", _GROUPS_FILE),
    ReleasedFile("privacy audit", "*privacy_audit.json", _PRIVACY_AUDIT),
    ReleasedFile("config", "config.resolved.yaml", (_e("**", "public", _CONFIG),), False),
    # An LM policy (policy.method: distill). Listed before "*.safetensors": its weights are no
    # DP-SGD output. The base is public (built in code, SFT on public synthetic text, or the
    # user's pretrained model); the adapter and the cached candidates are the LM tilted by the
    # DP models' scores of public prompts and of the LM's own samples: post-processing.
    ReleasedFile("policy LM base", "base/*", (_e("**", "public", _LM_BASE),), False),
    ReleasedFile("policy LM base", "sft/*", (_e("**", "public", _LM_BASE),), False),
    ReleasedFile("policy LM adapter", "policy/*", (_e("**", "post_processing", _LM_TILT),), False),
    ReleasedFile("policy LM rounds", "lm/*", (_e("**", "post_processing", _LM_TILT),), False),
    ReleasedFile("model weights", "*.safetensors", (_e("**", "dp", "DP-SGD output"),), False),
    ReleasedFile("model files", "*/model/*.json", (_e("**", "public", _MODEL_FILES),)),
    ReleasedFile("model files", "groups/group-*/*.json", (_e("**", "public", _MODEL_FILES),)),
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
