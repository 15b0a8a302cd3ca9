"""safealign's private models where other libraries expect them: TRL reward functions
(:mod:`~safealign.integrations.trl`). Above the run layer, which it reads (``policy.json``);
nothing here is imported by ``import safealign``. The Hugging Face export lives with the models
(:func:`safealign.models.export_sequence_classifier`)."""

from safealign._lazy import lazy_exports

_EXPORTS = {
    "safealign.integrations.trl": (
        "RewardFunction",
        "reward_function",
        "reward_function_from_run",
    ),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
