"""Scalar-head models r(x, y) / c(x, y) over any Hugging Face backbone, with save and load.

A saved model is a directory any Hugging Face user can open without safealign:

    MODEL_DIR/
      backbone/             config.json, model.safetensors, tokenizer files (LoRA merged in)
      head.safetensors      "weight" [1, H], "bias" [1] (an MLP head: see :mod:`.heads`)
      scalar_model.json     {"format": "safealign-scalar/1", "kind", "pooling", "max_length",
                             "head", "frozen_backbone", ...}

    score = head(pool(AutoModel(backbone)(**AutoTokenizer(backbone)(prompt, response))))

A decoder model with last-token pooling and a linear head also exports as a one-label
``AutoModelForSequenceClassification`` whose logits are these scores (``safealign export-hf``,
:mod:`.hf_export`).

A frozen-backbone model (``head`` set in its config) has the same layout: only the head was
trained, and scoring reads each text's pooled state from the active embedding cache
(:mod:`.embeddings`) or computes it, which gives the same score. Its ``scalar_model.json`` also
says what the encoder read (``"embed_text"``: ``AutoTokenizer(backbone)(response)`` alone when
``"response"``) and whether the pooled state is L2-normalised before the head (``"normalize"``).

A ``features`` model (:mod:`.features`, the synthetic world only) has ``features/`` in place of
``backbone/`` and ``"backbone": "features"`` in ``scalar_model.json``; scoring it needs safealign's
synthetic-world parser, so unlike the layout above it cannot be used without safealign.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from safealign._atomic import atomic_write_bytes, atomic_write_text
from safealign.config import FEATURE_BACKBONE, ModelConfig, model_config_problems
from safealign.errors import ConfigError
from safealign.models._meta import read_format_json
from safealign.models.backbones import default_pooling, load_backbone, lora_targets
from safealign.models.embeddings import backbone_identity, cached_embeddings, text_key
from safealign.models.features import (
    FeatureBackbone,
    FeatureTokenizer,
    load_feature_backbone,
    save_feature_backbone,
)
from safealign.models.heads import build_head, head_description, head_from_description

FORMAT = "safealign-scalar/1"
Kind = Literal["reward", "cost"]


class ScalarModel(nn.Module):
    """Backbone → pooled hidden state → linear head → one score per sequence.

    Args:
        backbone: A Hugging Face base model (or :class:`FeatureBackbone`) returning
            ``last_hidden_state`` ``[R, L, H]``.
        pooling: ``mean`` (masked mean over tokens), ``last`` (last non-pad token) or ``first``
            (position 0: the feature backbone's one state per row, ``L = 1``).
        hidden_size: Width of the backbone's hidden states.
        head: The head on pooled states (default: one linear layer, :mod:`.heads`).
        frozen_backbone: Train the head only: the backbone's weights never require gradients.
        normalize: L2-normalise the pooled state before the head (``head.normalize``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        pooling: str,
        hidden_size: int,
        head: nn.Module | None = None,
        frozen_backbone: bool = False,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = normalize
        self.head = head if head is not None else nn.Linear(hidden_size, 1)
        self.frozen_backbone = frozen_backbone
        if frozen_backbone:
            backbone.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores ``[R]`` for token rows ``input_ids``/``attention_mask`` ``[R, L]``."""
        states = self.embed(input_ids, attention_mask)
        if self.normalize:
            states = F.normalize(states, dim=-1)
        return self.head(states).squeeze(-1)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled states ``[R, H]`` for token rows ``[R, L]`` (what the head reads, before any
        normalisation)."""
        rows, length = input_ids.shape
        # Explicit position ids: Opacus' per-sample gradients of position embeddings are wrong
        # when the model builds them from a buffer with an implicit batch dimension of 1.
        position_ids = (
            torch.arange(length, device=input_ids.device).unsqueeze(0).expand(rows, length)
        )
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector ``[R, H]`` per row of token states ``hidden`` ``[R, L, H]`` (see ScalarModel)."""
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    last = attention_mask.sum(1).clamp_min(1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@dataclass
class ScoringModel:
    """A scalar model with its tokenizer and the settings needed to score text."""

    model: ScalarModel
    tokenizer: PreTrainedTokenizerBase | FeatureTokenizer
    kind: Kind
    max_length: int
    embed_text: str = "prompt_response"  # head mode: what the frozen encoder reads (head.text)

    def encode(
        self, prompts: Sequence[str], responses: Sequence[str], *, padding: str = "max_length"
    ) -> dict[str, torch.Tensor]:
        """Tokenise (prompt, response) pairs to ``[n, L]`` tensors: ``L = max_length`` for text
        tokenizers (longer side cut first; with ``padding="longest"``, the longest row's length),
        the number of feature slots for ``features``. With ``embed_text="response"`` the
        response alone is tokenised (the prompt is ignored)."""
        texts = (
            (list(responses),)
            if self.embed_text == "response"
            else (list(prompts), list(responses))
        )
        batch = self.tokenizer(
            *texts,
            truncation="longest_first",
            max_length=self.max_length,
            padding=padding,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def embed(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 32
    ) -> torch.Tensor:
        """Pooled backbone states ``[n, H]`` (float32, CPU) of (prompt, response) texts, in input
        order, in eval mode and inference mode; read from (and added to) the active embedding
        cache (:mod:`.embeddings`). Missing texts are embedded longest first, each batch padded
        to its longest row only; L2-normalised after the cache when ``normalize``. Only for a
        frozen backbone, whose states never change."""
        if not self.model.frozen_backbone:
            raise ValueError("embeddings are cached only for a frozen backbone (head mode)")
        identity = backbone_identity(
            self.model.backbone, self.tokenizer, pooling=self.model.pooling,
            max_length=self.max_length, text=self.embed_text,
        )  # fmt: skip
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        if self.embed_text == "response":  # one entry per distinct response, whatever the prompt
            prompts = [""] * len(responses)
        keys = [text_key(p, r) for p, r in zip(prompts, responses, strict=True)]
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()

        def tokens(index: list[int]) -> dict[str, torch.Tensor]:
            return self.encode(
                [prompts[i] for i in index], [responses[i] for i in index], padding="longest"
            )

        def lengths(index: list[int]) -> list[int]:
            return tokens(index)["attention_mask"].sum(1).tolist()

        def compute(index: list[int]) -> torch.Tensor:
            return self.model.embed(**{k: v.to(device) for k, v in tokens(index).items()})

        try:
            rows = cached_embeddings(
                identity, keys, compute, batch_size=batch_size, lengths=lengths
            )
        finally:
            self.model.train(was_training)
        return F.normalize(rows, dim=-1) if self.model.normalize and len(rows) else rows

    @torch.no_grad()
    def score(
        self, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 256
    ) -> torch.Tensor:
        """Scores ``[n]`` (float32, CPU) of (prompt, response) texts, in eval mode."""
        if self.model.frozen_backbone:
            head = self.model.head
            states = self.embed(prompts, responses)
            if len(states) == 0:
                return torch.zeros(0)
            device = next(head.parameters()).device
            return head(states.to(device)).squeeze(-1).float().cpu()
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(prompts), batch_size):
            enc = self.encode(
                prompts[start : start + batch_size], responses[start : start + batch_size]
            )
            out.append(self.model(**{k: v.to(device) for k, v in enc.items()}).float().cpu())
        self.model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)


def build_scoring_model(config: ModelConfig, *, kind: Kind, seed: int) -> ScoringModel:
    """A fresh scalar model for ``config``: backbone, pooling, head, LoRA adapters if configured.

    Raises:
        ConfigError: settings the backbone cannot use (for configs built in code; files are
            checked at load time).
    """
    problems = model_config_problems(config, key=f"{kind}_model")
    if problems:
        raise ConfigError(problems)
    backbone, tokenizer = load_backbone(config.backbone, seed=seed)
    pooling = default_pooling(backbone) if config.pooling == "auto" else config.pooling
    if config.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=lora_targets(backbone, config.lora.target_modules),
            fan_in_fan_out=getattr(backbone.config, "model_type", "") == "gpt2",
        )
        with warnings.catch_warnings():  # peft calls an API transformers deprecates for v6
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
            )
            backbone = get_peft_model(backbone, lora)
    hidden = backbone.config.hidden_size
    torch.manual_seed(seed + 1)
    model = ScalarModel(
        backbone, pooling=pooling, hidden_size=hidden, head=build_head(hidden, config.head),
        frozen_backbone=config.head is not None,
        normalize=config.head is not None and config.head.normalize,
    )  # fmt: skip
    head = config.head
    return ScoringModel(
        model=model, tokenizer=tokenizer, kind=kind, max_length=config.train.max_length,
        embed_text=head.text if head is not None else "prompt_response",
    )  # fmt: skip


def save_scoring_model(scoring: ScoringModel, path: str | Path) -> None:
    """Write the model directory (LoRA merged into the backbone weights)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(scoring.model).cpu()
    backbone = model.backbone
    features = isinstance(backbone, FeatureBackbone)
    if features:
        save_feature_backbone(backbone, path / FEATURE_BACKBONE)
    else:
        (path / "backbone").mkdir(exist_ok=True)
        if hasattr(backbone, "merge_and_unload"):
            backbone = backbone.merge_and_unload()
        with _quiet_transformers():
            backbone.save_pretrained(str(path / "backbone"))
        scoring.tokenizer.save_pretrained(str(path / "backbone"))
    head = {k: v.detach().contiguous() for k, v in model.head.state_dict().items()}
    atomic_write_bytes(path / "head.safetensors", save(head))
    meta = {
        "format": FORMAT,
        "kind": scoring.kind,
        "pooling": model.pooling,
        "max_length": scoring.max_length,
        "hidden_size": int(model.backbone.config.hidden_size),
        "backbone": FEATURE_BACKBONE if features else "huggingface",
        "frozen_backbone": model.frozen_backbone,
        **head_description(model.head),
    }
    if model.frozen_backbone:
        meta.update(embed_text=scoring.embed_text, normalize=model.normalize)
    atomic_write_text(path / "scalar_model.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report (e.g. BERT's unused pooler) for our own directories."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()


def load_scoring_model(path: str | Path) -> ScoringModel:
    """Load a directory written by :func:`save_scoring_model`.

    Raises:
        DataError: the directory is not a safealign scalar model (naming the missing file).
    """
    path = Path(path)
    meta = read_format_json(
        path / "scalar_model.json",
        fmt=FORMAT,
        missing="not a safealign model directory (scalar_model.json is missing)",
    )
    if meta.get("backbone", "huggingface") == FEATURE_BACKBONE:
        backbone, tokenizer = load_feature_backbone(path / FEATURE_BACKBONE)
    else:
        with _quiet_transformers():
            backbone = AutoModel.from_pretrained(str(path / "backbone"))
        tokenizer = AutoTokenizer.from_pretrained(str(path / "backbone"))
    hidden = meta["hidden_size"]
    model = ScalarModel(
        backbone, pooling=meta["pooling"], hidden_size=hidden,
        head=head_from_description(hidden, meta),
        frozen_backbone=bool(meta.get("frozen_backbone", False)),
        normalize=bool(meta.get("normalize", False)),
    )  # fmt: skip
    model.head.load_state_dict(load_file(str(path / "head.safetensors")))
    model.eval()
    return ScoringModel(
        model=model, tokenizer=tokenizer, kind=meta["kind"], max_length=meta["max_length"],
        embed_text=meta.get("embed_text", "prompt_response"),
    )  # fmt: skip
