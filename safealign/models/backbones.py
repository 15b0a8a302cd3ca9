"""Backbones and tokenizers: tiny ones built in code, the synthetic world's feature MLP, or any
Hugging Face model from a path/id.

The tiny backbones exist for tests and the demo: no download, seconds to train. Their word-level
tokenizer's vocabulary is taken from the synthetic world's *templates* (code, hence public), never
from training data: a vocabulary learnt from private text would itself leak it. The ``features``
backbone (:mod:`.features`) parses the synthetic world's texts back to their latent features.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    PreTrainedTokenizerBase,
)

from safealign.config import FEATURE_BACKBONE
from safealign.data import synthetic_text
from safealign.errors import ConfigError
from safealign.models.features import MODEL_TYPE, FeatureBackbone, FeatureTokenizer

TINY_BACKBONES = ("tiny", "tiny-gpt2")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
# LoRA target modules by architecture (model_type): attention query/value projections, the
# choice of the LoRA paper (Hu et al. 2021, Sec. 7.1) and of peft's own defaults.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "gpt2": ("c_attn",),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
}
DECODER_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "opt")
_WORD = re.compile(r"\w+|[^\w\s]+")


def tiny_vocabulary() -> list[str]:
    """Sorted word list of every template in :mod:`synthetic_text`, plus digits."""
    texts = synthetic_text.template_texts()
    words = {w.lower() for t in texts for w in _WORD.findall(t.replace("{task}", " "))}
    words.update(str(d) for d in range(10))
    return sorted(words - set(SPECIAL_TOKENS))


def word_level_tokenizer(
    words: list[str], *, pre_tokenizer, normalizer=None, decoder=None, **special
) -> PreTrainedTokenizerBase:
    """A fast word-level tokenizer over ``SPECIAL_TOKENS + words`` with BERT's pair template
    (``[CLS] A [SEP] B [SEP]``); ``special`` adds tokenizer kwargs (bos/eos, decoding)."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    if normalizer is not None:
        core.normalizer = normalizer
    core.pre_tokenizer = pre_tokenizer
    if decoder is not None:
        core.decoder = decoder
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        **special,
    )


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A word-level fast tokenizer over :func:`tiny_vocabulary` (lower-cased, [UNK] fallback)."""
    from tokenizers import normalizers, pre_tokenizers

    return word_level_tokenizer(
        tiny_vocabulary(),
        pre_tokenizer=pre_tokenizers.Whitespace(),
        normalizer=normalizers.Lowercase(),
    )


def build_tiny_backbone(
    name: str, *, vocab_size: int, seed: int, max_positions: int = 512
) -> nn.Module:
    """A 2-layer, 32-wide BERT (``tiny``) or GPT-2 (``tiny-gpt2``), randomly initialised from ``seed``.

    Dropout is off: at this size it only adds noise, and tests compare gradients exactly.
    """
    torch.manual_seed(seed)
    if name == "tiny":
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=max_positions,
            pad_token_id=0,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return BertModel(config, add_pooling_layer=False)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=max_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=SPECIAL_TOKENS.index("[CLS]"),
        eos_token_id=SPECIAL_TOKENS.index("[SEP]"),
    )
    return GPT2Model(config)


def load_backbone(
    name: str, *, seed: int
) -> tuple[nn.Module, PreTrainedTokenizerBase | FeatureTokenizer]:
    """Backbone and tokenizer: tiny ones or the feature MLP built in code, or
    ``from_pretrained(name)`` (path or hub id).

    Raises:
        ConfigError: the path/id cannot be loaded (with the reason; no network is assumed).
    """
    if name == FEATURE_BACKBONE:
        return FeatureBackbone(seed=seed), FeatureTokenizer()
    if name in TINY_BACKBONES:
        tokenizer = build_tiny_tokenizer()
        return build_tiny_backbone(name, vocab_size=len(tokenizer), seed=seed), tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        torch.manual_seed(seed)
        backbone = AutoModel.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"backbone {name!r} could not be loaded ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "give a local directory with config.json and weights, or one of "
            f"{', '.join((*TINY_BACKBONES, FEATURE_BACKBONE))}"
        ) from None
    if tokenizer.pad_token is None:  # decoders (GPT-2, Llama) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # last-token pooling reads the last non-pad position
    return backbone, tokenizer


def model_type(backbone: nn.Module) -> str:
    return getattr(getattr(backbone, "config", None), "model_type", "unknown")


def default_pooling(backbone: nn.Module) -> str:
    """``last`` for decoders (only the last token has seen the whole sequence), ``first`` for the
    feature backbone (one state per row), else ``mean``."""
    kind = model_type(backbone)
    if kind == MODEL_TYPE:
        return "first"
    return "last" if kind in DECODER_TYPES else "mean"


def lora_targets(backbone: nn.Module, configured: tuple[str, ...] | None) -> list[str]:
    """LoRA target module names: the configured ones, or the architecture's default."""
    if configured:
        return list(configured)
    kind = model_type(backbone)
    if kind not in LORA_TARGETS:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ConfigError(
            f"no default LoRA targets for model type {kind!r}; set lora.target_modules "
            f"(linear layers in this model: {', '.join(linear[:12])})"
        )
    return list(LORA_TARGETS[kind])
