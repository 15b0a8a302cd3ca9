"""safealign: align language models from private preference data, certifiably safe and fair.

Three guarantees, one signed report: reward and cost models trained with DP-SGD (privacy), a
high-confidence safety test before release (HC-RLHF), and the worst-off user group served
(MaxMin-RLHF). See the README for the commands and ``safealign --help``.

The Python API is the names below (``__all__``), imported on first use, so ``import safealign``
stays cheap (no torch until a name needs it)::

    import safealign

    config = safealign.load_config("examples/synthetic.yaml", ["seed=1"])
    result = safealign.run.run(config, "runs/run")      # the whole recipe, top to bottom
    safealign.verify_report(result.report_paths[0])     # bytes, signature, pinned files

- a config: :func:`load_config`, :class:`Config`, :func:`demo_config`;
- a run directory: :mod:`safealign.run` (``run.run`` is the whole recipe), a :class:`Workspace`
  opened once and its stages as verbs, :func:`train_models`, :func:`align`, :func:`certify`,
  :func:`report`, with :class:`RunResult`;
- one model: :func:`train_reward_model`, :func:`train_cost_model` (a :class:`TrainResult` with
  its :class:`PrivacyReceipt`), :func:`train_group_reward_models` (:class:`GroupModels`);
- the safety test on scores you computed: :func:`certify_samples` (a :class:`Certificate`);
- a report: :func:`verify_report` (a :class:`VerificationResult`);
- the errors, all under :class:`SafeAlignError`.

Each subpackage (``data``, ``models``, ``privacy``, ``groups``, ``constraints``, ``audits``,
``run``) declares its own ``__all__`` for the finer-grained pieces.
"""

from safealign._lazy import lazy_exports
from safealign._version import __version__

_EXPORTS = {
    "safealign.config": ("Config", "load_config"),
    "safealign.errors": (
        "SafeAlignError",
        "ConfigError",
        "DataError",
        "PrivacyError",
        "BudgetExceededError",
        "InfeasibleError",
        "IsolationError",
        "SignatureError",
    ),
    "safealign.run": (
        "run",
        "Workspace",
        "RunResult",
        "demo_config",
        "train_models",
        "align",
        "certify",
        "report",
    ),
    "safealign.privacy.training": (
        "train_reward_model",
        "train_cost_model",
        "TrainResult",
        "PrivacyReceipt",
    ),
    "safealign.groups.training": ("train_group_reward_models",),
    "safealign.groups.common": ("GroupModels",),
    "safealign.constraints.hc_rlhf": ("certify_samples",),
    "safealign.constraints.certificate": ("Certificate",),
    "safealign.audits.signing": ("verify_report", "VerificationResult"),
}

__getattr__, __dir__, _names = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *_names]
