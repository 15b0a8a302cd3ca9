"""Release-inventory entries of the DP models: receipts, the report's ``privacy`` section, the
groups file, the empirical privacy audit and the model files (:mod:`safealign.audits.inventory`).
"""

from __future__ import annotations

from safealign.audits._inventory_base import (
    _COMMITMENT,
    _CONFIG,
    _EVAL,
    _PUBLIC_SPLIT,
    _SCHEDULE,
    _SIZE_N,
    _TEXT,
    Entry,
    _e,
)


def receipt_entries(prefix: str, *, metrics: bool = True) -> tuple[Entry, ...]:
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
                _e(
                    f"{p}metrics.train/calibration_shift",
                    "dp",
                    "the cost model's level, fitted by DP-SGD steps counted in the receipt",
                ),
            )
            if metrics
            else (
                _e(
                    f"{p}metrics",
                    "public",
                    "always {}: a group's or an EM cluster's held-out "
                    "metrics depend on other users' assignments (release_receipts drops them)",
                ),
            )
        ),
    )


def privacy_entries() -> tuple[Entry, ...]:
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
        _e(
            f"{p}ledger.num_releases",
            "public",
            "releases charged: fixed by the configuration (EM runs em_max_iters iterations "
            "unless em_stop_early is opted in, then listed as outside the guarantee)",
        ),
        *(
            _e(mech + k, "public", _CONFIG)
            for k in (
                "kind",
                "private",
                "max_grad_norm",
                "privacy_unit",
                "backbone",
                "accountant",
                "receipt_target_delta",
            )
        ),
        *(
            _e(mech + k, "public", _SCHEDULE)
            for k in (
                "noise_multiplier",
                "sample_rate",
                "steps",
                "epsilon",
                "receipt_epsilon",
                "accountant_fallback",
            )
        ),
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


GROUPS_FILE = (
    _e("names[]", "public", "group names: the data's declared groups, or cluster-0..K-1 (config)"),
    _e("iterations", "public", "groups.em_max_iters (config), unless em_stop_early is opted in"),
    *receipt_entries("receipts[].", metrics=False),
)

MODEL_FILES = "architecture, tokenizer and adapter configuration: code or a public backbone"

_AUDIT = "the audited DP model's scores of the canaries (random words, nobody's data)"
PRIVACY_AUDIT = (
    _e("epsilon_lower", "post_processing", _AUDIT),
    _e("guesses", "post_processing", _AUDIT),
    _e("correct", "post_processing", _AUDIT),
    _e("num_canaries", "public", _CONFIG),
    _e("confidence", "public", _CONFIG),
    *(_e(k, "public", _SCHEDULE) for k in ("epsilon", "noise_multiplier", "steps", "sample_rate")),
)
