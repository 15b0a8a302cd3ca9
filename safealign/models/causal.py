"""Causal language-model policies: a tiny one built in code, or any Hugging Face causal LM.

A policy ``pi_theta(y|x)`` is a causal LM and its tokenizer. A sequence is laid out as

    prompt tokens (with the tokenizer's own specials) | response tokens | eos

so ``log pi(y|x)`` is the sum of the response tokens' and the closing eos's log-probabilities.
Prompts are used verbatim: for a chat model, apply its chat template to them beforehand.

The tiny policy uses a word-level tokenizer over the synthetic world's *template* vocabulary (public
code, never training data), like :func:`backbones.build_tiny_tokenizer`, but case- and
space-preserving: that one lower-cases and decodes ``"Step 1:"`` as ``"step 1 :"``, which the world
parses back as a harmless non-answer, so the true cost of generated text could not be measured.
Its ``[CLS] prompt [SEP]`` layout puts ``[SEP]`` between prompt and response, and ``[SEP]`` is also
the eos that ends a response.

The sampler settings (temperature, top-p, length) change the distribution being certified, so every
sample is drawn through a :class:`SamplerSettings` that results record.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
)

from safealign.config import LoraConfig
from safealign.data import synthetic_text
from safealign.errors import ConfigError, DataError
from safealign.models.backbones import (
    SPECIAL_TOKENS,
    lora_targets,
    model_type,
    word_level_tokenizer,
)

TINY_CAUSAL = ("tiny-gpt2",)
# Scores (prompt, response) texts: a scoring model's ``score``, or the synthetic world's truth.
ScoreFn = Callable[[Sequence[str], Sequence[str]], "Tensor | np.ndarray | Sequence[float]"]
# A piece is a word or a run of punctuation, with the single space before it if there is one:
# decoding is then plain concatenation, and the text round-trips exactly.
_PIECE = r" ?\w+| ?[^\w\s]+"


@dataclass(frozen=True)
class SamplerSettings:
    """How responses are drawn; part of what a safety certificate is about.

    Attributes:
        max_new_tokens: Cap on generated tokens per response (eos included).
        temperature: Softmax temperature; 0 means greedy decoding.
        top_p: Nucleus sampling mass in (0, 1]; 1 keeps the full distribution.
    """

    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            problems.append(f"max_new_tokens must be an integer >= 1 (got {self.max_new_tokens!r})")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            problems.append(f"temperature must be >= 0, 0 for greedy (got {self.temperature!r})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if problems:
            raise ConfigError(problems)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def tiny_causal_vocabulary() -> list[str]:
    """Every piece of the world's templates, with and without a leading space, plus digits."""
    texts = [t.replace("{task}", " ") for t in synthetic_text.template_texts()]
    pieces = {p.strip() for t in texts for p in re.findall(_PIECE, t)}
    pieces.update(str(d) for d in range(10))
    pieces -= set(SPECIAL_TOKENS)
    return sorted(pieces | {" " + p for p in pieces})


def build_tiny_causal_tokenizer() -> PreTrainedTokenizerBase:
    """Case- and space-preserving word-level tokenizer; ``tok(prompt)`` is ``[CLS] prompt [SEP]``."""
    from tokenizers import Regex, decoders, pre_tokenizers

    return word_level_tokenizer(
        tiny_causal_vocabulary(),
        pre_tokenizer=pre_tokenizers.Split(Regex(_PIECE), behavior="isolated"),
        decoder=decoders.Fuse(),
        bos_token="[CLS]",
        eos_token="[SEP]",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_causal_lm(
    seed: int, *, n_embd: int = 32, n_layer: int = 2, n_head: int = 2, max_positions: int = 256
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase]:
    """A tiny GPT-2 LM (the ``tiny-gpt2`` config style, dropout off), randomly initialised from ``seed``."""
    tokenizer = build_tiny_causal_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_positions=max_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    _set_generation_ids(model, tokenizer)
    return model, tokenizer


def load_causal_lm(name: str, *, seed: int) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer: ``tiny-gpt2`` built in code, else ``from_pretrained(name)``.

    Raises:
        ConfigError: The path/id cannot be loaded, or its tokenizer has no eos token.
    """
    if name in TINY_CAUSAL:
        return build_tiny_causal_lm(seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"causal LM {name!r} could not be loaded ({exc.__class__.__name__}: {str(exc)[:200]}); "
            f"give a local directory with config.json and weights, or one of {', '.join(TINY_CAUSAL)}"
        ) from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"causal LM {name!r}: its tokenizer has no eos token to end responses")
    if tokenizer.pad_token is None:  # decoders (GPT-2, Llama) ship without one; pads are masked
        tokenizer.pad_token = tokenizer.eos_token
    _set_generation_ids(model, tokenizer)
    return model, tokenizer


def policy_device() -> torch.device:
    """Where policies train and sample: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    """bf16 autocast on a GPU that supports it (weights stay float32), else nothing."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def add_lora(model: nn.Module, lora: LoraConfig, *, seed: int) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters; only the adapters stay trainable.

    Targets default per architecture (gpt2 ``c_attn``, llama/qwen ``q_proj``/``v_proj``). GPT-2's
    ``Conv1D`` stores weights as ``[in, out]``, hence ``fan_in_fan_out`` for it.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(model, lora.target_modules),
        fan_in_fan_out=model_type(model) == "gpt2",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # peft calls an API transformers deprecates for v6
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, peft_config)


def sequence_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
) -> Tensor:
    """``log pi(response | prompt)`` ``[n]``: summed response-token log-probs, eos included.

    Differentiable (call under ``torch.no_grad()`` when no gradient is needed). Prompt tokens and
    padding are masked out of the sum.

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer (prompts get its specials, responses are followed by eos).
        prompts: ``[n]`` prompt texts.
        responses: ``[n]`` response texts.
    """
    if len(prompts) != len(responses):
        raise DataError(f"got {len(prompts)} prompts but {len(responses)} responses; pair them 1:1")
    if not prompts:
        return torch.zeros(0)
    ids, attention, is_response = _encode_pairs(tokenizer, prompts, responses)
    device = next(model.parameters()).device
    ids, attention, is_response = ids.to(device), attention.to(device), is_response.to(device)
    with _autocast(device):
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    # Token t is predicted from the logits at position t - 1.
    token_logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (token_logp * is_response[:, 1:]).sum(-1)


def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    num_samples: int,
    max_new_tokens: int = 96,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int,
    batch_size: int = 64,
) -> list[list[str]]:
    """``num_samples`` decoded responses per prompt, ``[N][num_samples]``, reproducible in ``seed``.

    Only temperature and top-p shape the distribution (HF's default ``top_k=50`` is switched off),
    so the sampler certified is exactly the one described by :class:`SamplerSettings`. A response
    is cut at the first eos and stripped of surrounding whitespace; one that reaches
    ``max_new_tokens`` is returned as generated.

    Args:
        model: Causal LM (put in eval mode while sampling, then restored).
        tokenizer: Its tokenizer.
        prompts: ``[N]`` prompt texts.
        num_samples: Responses per prompt.
        max_new_tokens: Cap on generated tokens per response.
        temperature: Softmax temperature; 0 means greedy.
        top_p: Nucleus mass in (0, 1].
        seed: Seed of the sampling (the caller's global RNG state is left untouched).
        batch_size: Prompts per ``model.generate`` call.
    """
    settings = SamplerSettings(max_new_tokens, float(temperature), float(top_p))
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ConfigError(f"num_samples must be an integer >= 1 (got {num_samples!r})")
    out: list[list[str]] = []
    was_training = model.training
    model.eval()
    # fork_rng: sampling draws from torch's global generators; the caller's streams stay untouched.
    device = next(model.parameters()).device
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad(), _autocast(device):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            out.extend(_generate_chunk(model, tokenizer, chunk, num_samples, settings))
    model.train(was_training)
    return out


def sample_responses(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    sampler: SamplerSettings,
    num_samples: int,
    seed: int,
) -> list[list[str]]:
    """:func:`generate` with the settings of ``sampler``."""
    return generate(
        model, tokenizer, prompts, num_samples=num_samples, seed=seed, **sampler.to_dict()
    )


def score_samples(
    score_fn: ScoreFn, prompts: Sequence[str], samples: Sequence[Sequence[str]]
) -> Tensor:
    """Scores ``[N, K]`` (float64) of ``samples[n][k]`` given ``prompts[n]``, in one call of ``score_fn``.

    Raises:
        DataError: ``score_fn`` did not return one finite score per (prompt, response).
    """
    width = len(samples[0]) if samples else 0
    if len(samples) != len(prompts) or any(len(row) != width for row in samples):
        raise DataError(f"samples must be [N][K] with N = {len(prompts)} prompts and equal K")
    flat_prompts = [p for p in prompts for _ in range(width)]
    values = torch.as_tensor(
        np.asarray(score_fn(flat_prompts, [y for row in samples for y in row]), dtype=float)
    )
    if values.shape != (len(flat_prompts),) or not bool(torch.isfinite(values).all()):
        raise DataError(
            f"{getattr(score_fn, '__name__', 'score_fn')} must return {len(flat_prompts)} finite "
            f"scores, one per (prompt, response); got shape {tuple(values.shape)}"
        )
    return values.view(len(prompts), width)


# --- internals ------------------------------------------------------------------------------


def _set_generation_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id


def _encode_pairs(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str]
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``[n, L]`` ids, attention mask and response mask (response tokens + eos)."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    rows = [p + r + [tokenizer.eos_token_id] for p, r in zip(prompt_ids, response_ids, strict=True)]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros(len(rows), length, dtype=torch.long)
    is_response = torch.zeros(len(rows), length)
    for i, (row, p) in enumerate(zip(rows, prompt_ids, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        is_response[i, len(p) : len(row)] = 1.0
    return ids, attention, is_response


def _generate_chunk(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    num_samples: int,
    settings: SamplerSettings,
) -> list[list[str]]:
    # Decoder-only batches are left-padded so every row's continuation starts at the same column.
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(prompts, add_special_tokens=True, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    greedy = settings.temperature == 0
    # Explicit neutral values: a checkpoint's generation_config.json (Qwen ships top_k=20,
    # repetition_penalty=1.05, ...) would otherwise silently reshape the distribution certified.
    sampling = (
        {}
        if greedy
        else {
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "top_k": 0,
            "typical_p": 1.0,
            "min_p": None,
        }
    )
    sequences = model.generate(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        do_sample=not greedy,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_return_sequences=num_samples,
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    new = sequences[:, batch["input_ids"].shape[1] :].cpu()
    texts = [
        tokenizer.decode(_until_eos(row, tokenizer.eos_token_id), skip_special_tokens=True)
        for row in new.tolist()
    ]
    texts = [t.strip() for t in texts]
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids
