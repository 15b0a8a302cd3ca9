"""Scalar-head reward and cost models over Hugging Face backbones (LoRA via peft), tiny builders."""

from safealign._lazy import lazy_exports

_EXPORTS = {
    "safealign.models.scalar": (
        "ScoringModel",
        "build_scoring_model",
        "save_scoring_model",
        "load_scoring_model",
    ),
    "safealign.models.evaluate": ("evaluate_scoring_model",),
    "safealign.models.backbones": ("load_backbone",),
    "safealign.models.hf_export": ("export_sequence_classifier",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
