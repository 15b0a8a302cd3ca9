"""``reward_model:`` / ``cost_model:``: backbone, LoRA or frozen head, optimisation and DP-SGD,
with the constraints between them (:func:`model_config_problems`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from safealign._typed import doc
from safealign.config._rules import _at_least, _half_open_unit, _non_negative, _open_unit, _positive


@dataclass(frozen=True)
class LoraConfig:
    r: int = field(default=8, metadata=doc("LoRA rank.", _at_least(1)))
    alpha: float = field(default=16.0, metadata=doc("LoRA scaling alpha.", _positive))
    dropout: float = field(default=0.0, metadata=doc("LoRA dropout.", _half_open_unit))
    target_modules: tuple[str, ...] | None = field(
        default=None, metadata=doc("Module names to adapt; null picks them from the architecture.")
    )


@dataclass(frozen=True)
class HeadConfig:
    layers: Literal["linear", "mlp"] = field(
        default="linear",
        metadata=doc("The trained head: one linear layer, or linear → ReLU → linear."),
    )
    hidden_size: int = field(
        default=128, metadata=doc("Width of the MLP head's hidden layer.", _at_least(1))
    )
    embed_batch_size: int = field(
        default=32,
        metadata=doc(
            "Texts per forward pass when computing the frozen embeddings (32 was the fastest of "
            "16-128 on CPU, benchmarks/README.md embed_speed).",
            _at_least(1),
        ),
    )
    text: Literal["prompt_response", "response"] = field(
        default="prompt_response",
        metadata=doc(
            "What the frozen encoder reads: the (prompt, response) pair as one two-segment input, "
            "or the response alone (a score that ignores the prompt; on HH-RLHF harmless-base the "
            "more accurate one, benchmarks/README.md hh_heads)."
        ),
    )
    normalize: bool = field(
        default=False,
        metadata=doc(
            "L2-normalise each pooled embedding before the head (a fixed per-text map, as "
            "sentence-transformers' Normalize; no data statistic): the head reads unit vectors, "
            "so every pair's gradient has the same scale; validated higher for linear heads on "
            "HH-RLHF with MiniLM (benchmarks/README.md hh_heads). Not exportable to a Hugging "
            "Face sequence classifier."
        ),
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=2, metadata=doc("Passes over the training pairs.", _at_least(1)))
    batch_size: int = field(
        default=64, metadata=doc("Expected batch size (Poisson sampling under DP).", _at_least(1))
    )
    lr: float = field(default=1e-3, metadata=doc("Learning rate (AdamW).", _positive))
    weight_decay: float = field(default=0.0, metadata=doc("AdamW weight decay.", _non_negative))
    max_length: int = field(
        default=128, metadata=doc("Tokens per response, prompt included.", _at_least(8))
    )
    calibration_epochs: int = field(
        default=1,
        metadata=doc(
            "Private cost models with safety labels: epochs of DP calibration of the cost's level "
            "after training, inside the same ε (undoes DP-SGD's drift toward 'safe'); 0 skips it. "
            "Reward models have no level to calibrate and do not use it.",
            _non_negative,
        ),
    )


@dataclass(frozen=True)
class PrivacyConfig:
    target_epsilon: float | None = field(
        default=3.0,
        metadata=doc("ε to spend on this model; null trains WITHOUT privacy.", _positive),
    )
    target_delta: float = field(
        default=1e-5, metadata=doc("δ of the guarantee; keep it below 1/n.", _open_unit)
    )
    max_grad_norm: float = field(default=1.0, metadata=doc("Per-unit clipping norm.", _positive))
    accountant: Literal["prv", "rdp"] = field(
        default="prv", metadata=doc("Privacy accountant; PRV falls back to RDP if it fails.")
    )
    privacy_unit: Literal["pair", "user"] = field(
        default="pair",
        metadata=doc("What one DP record is: a preference pair, or all pairs of one user."),
    )
    grad_sample_mode: Literal["hooks", "functorch", "ghost"] = field(
        default="hooks",
        metadata=doc(
            "How Opacus clips per unit: per-sample gradients from layer hooks, or functorch for "
            "layers without a hook (both folded per pair or user); or 'ghost' clipping (per-pair "
            "norms without per-sample gradients, one row per pair, pair-level privacy only)."
        ),
    )


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = field(
        default="tiny",
        metadata=doc(
            "'tiny' / 'tiny-gpt2' (built in code), 'features' (an MLP over the synthetic world's "
            "parsed features; needs data.source: synthetic and lora: null), a path or a HF id."
        ),
    )
    pooling: Literal["auto", "mean", "last"] = field(
        default="auto",
        metadata=doc(
            "How token states become one vector: mean for encoders, last for decoders; "
            "'features' has one state per row and needs auto."
        ),
    )
    lora: LoraConfig | None = field(
        default_factory=LoraConfig,
        metadata=doc(
            "LoRA adapters; null trains all weights (or, with head set, none of the backbone's)."
        ),
    )
    head: HeadConfig | None = field(
        default=None,
        metadata=doc(
            "Frozen backbone: train only a small head on mean-pooled embeddings computed once and "
            "cached in the run directory (needs lora: null); null trains the backbone (LoRA or full)."
        ),
    )
    train: TrainConfig = field(default_factory=TrainConfig, metadata=doc("Optimisation."))
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig, metadata=doc("DP-SGD."))


FEATURE_BACKBONE = "features"


def model_config_problems(model: ModelConfig, *, key: str) -> list[str]:
    """Constraints within one model config (``key`` names it in messages, e.g. ``reward_model``).

    Checked at load time, and again when a model is built from a config made in code.
    """
    problems = []
    if model.privacy.grad_sample_mode == "ghost" and model.privacy.privacy_unit != "pair":
        problems.append(
            f"{key}.privacy.grad_sample_mode: 'ghost' clips each row, one pair per row, so it "
            f"cannot clip a {model.privacy.privacy_unit!r} unit spanning several pairs; use "
            "grad_sample_mode: hooks with privacy_unit 'user', or privacy_unit: pair with ghost"
        )
    if model.head is not None and model.lora is not None:
        problems.append(
            f"{key}.head: a frozen backbone trains no LoRA adapters; set {key}.lora: null to "
            f"train the head only, or {key}.head: null to train LoRA"
        )
    if model.backbone != FEATURE_BACKBONE:
        return problems
    if model.head is not None:
        problems.append(
            f"{key}.head: the 'features' backbone is itself the small trained model; set "
            f"{key}.head: null"
        )
    if model.lora is not None:
        problems.append(
            f"{key}.lora: LoRA adapts transformer layers and the 'features' backbone has none; "
            f"set {key}.lora: null"
        )
    if model.pooling != "auto":
        problems.append(
            f"{key}.pooling: the 'features' backbone gives one state per row, there is nothing to "
            f"pool (got {model.pooling!r}); set {key}.pooling: auto"
        )
    return problems
