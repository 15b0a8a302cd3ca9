"""Release-inventory entries of certification: a certificate and its labelling block.

Used by certificate.json, certificates/*.json and the report's ``safety`` section
(:mod:`safealign.audits.inventory`).
"""

from __future__ import annotations

from safealign.audits._inventory_base import (
    _ATTEMPTS,
    _COMMITMENT,
    _CONFIG,
    _MODELS_ON_PUBLIC,
    _N_SAFETY,
    _PUBLIC_SPLIT,
    _SAFETY,
    _TEXT,
    Entry,
    _e,
)

_DRAW = (
    "positions of the responses drawn for labelling, from fresh secret randomness independent "
    "of every response and score"
)
_LABELS = (
    "computed from the trusted labels of the safety responses (safety.labels), which are not "
    "an output of any DP mechanism; the labelled verdict and bound depend on them too"
)


def _labelling(p: str) -> tuple[Entry, ...]:
    """A labelled certificate's ``labelling`` block (:mod:`safealign.run.labelling`)."""
    return (
        *(
            _e(f"{p}{k}", "public", _CONFIG)
            for k in ("size", "decide", "weight", "method", "prediction_share")
        ),
        _e(f"{p}status", "public", _TEXT),
        _e(f"{p}population", "public", _CONFIG),  # a designated set's finite-population bounds
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


def certificate_entries(prefix: str) -> tuple[Entry, ...]:
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
        _e(
            f"{p}safety_set.**",
            "public",
            "the designated safety set's file (safety.prompts): "
            "name, format, size and hashes of a public input the user chose",
        ),
        _e(f"{p}assumptions[]", "public", _TEXT),
        _e(f"{p}attempts.declared", "public", _CONFIG),
        _e(f"{p}attempts.confidence", "public", _CONFIG),
        _e(f"{p}attempts.per_attempt_confidence", "public", _CONFIG),
        _e(f"{p}attempts.number", "public", _ATTEMPTS),
        _e(f"{p}attempts.safety_set", "public", _COMMITMENT),
        _e(f"{p}attempts.log[].number", "public", _ATTEMPTS),
        _e(
            f"{p}attempts.log[].policy",
            "public",
            "SHA-256 of a tested policy's settings: configuration",
        ),
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
        _e(
            f"{p}groups.groups.*.n",
            "public",
            "safety prompts counting for a group: n_s or a subset of the public safety split",
        ),
        _e(f"{p}groups.groups.*.prompts", "public", _CONFIG),
        _e(f"{p}groups.groups.*.reason", "public", _TEXT),
        _e(f"{p}groups.groups.*.cost_mean", "post_processing", _SAFETY),
        _e(f"{p}groups.groups.*.cost_upper_bound", "post_processing", _SAFETY),
        _e(f"{p}groups.groups.*.reward_mean", "post_processing", _SAFETY),
        _e(f"{p}groups.groups.*.reward_lower_bound", "post_processing", _SAFETY),
    )
