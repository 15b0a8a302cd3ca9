"""DP-SGD training (the only importer of opacus), accountants, the privacy budget ledger."""

from safealign._lazy import lazy_exports

_EXPORTS = {
    "safealign.privacy.training": (
        "train_reward_model",
        "train_cost_model",
        "train_scoring_model",
        "save_training_output",
        "TrainResult",
        "PrivacyReceipt",
    ),
    "safealign.privacy.plan": ("TrainingPlan", "plan_training"),
    "safealign.privacy.accounting": (
        "Mechanism",
        "AccountingResult",
        "compute_epsilon",
        "calibrate_noise",
    ),
    "safealign.privacy.ledger": ("PrivacyLedger",),
    "safealign.privacy.release": (
        "ChargeTarget",
        "budget_target",
        "charge",
        "train_on_budget",
        "RecordedTraining",
    ),
    "safealign.privacy.audit": ("run_privacy_audit", "AuditResult"),
    "safealign.privacy.identity": ("default_ledger_path",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
