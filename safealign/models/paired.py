"""One row per preference pair (DESIGN.md, pattern B), for Opacus' ghost clipping.

Ghost clipping clips the gradient of each *row* of a batch without ever building per-row
gradients, so the fold of :mod:`safealign.privacy.dp_sgd` (pattern A: ``[2P, L]`` rows, per-row
gradients summed per pair) has nothing to fold. Here a pair *is* a row: chosen and rejected
``[P, 2, L]`` become one sequence ``[P, 2L]``, and

- a block-diagonal 4D attention mask ``[P, 1, 2L, 2L]`` lets each token attend only to the
  non-padding tokens of its own half (and, in a decoder, only to earlier ones), so each half sees
  exactly what it sees when encoded alone;
- ``position_ids = arange(2L) % L``: the second half's positions restart at 0;
- each half is pooled as its own sequence and the head is called once on ``[P, 2, H]``.

The backbone and the head each run once per step: ghost clipping rejects a layer called twice
before backward ("Parameter tying is not supported"). The scores equal the per-sequence scores up
to float rounding, *if* the backbone applies a 4D float mask as given. Hugging Face models built on
``transformers.masking_utils`` do (BERT, GPT-2, Llama-family, measured with transformers 5.x,
eager and SDPA attention); a family that rewrites or ignores the mask, or an attention kernel that
takes none (flash attention), would silently let the halves see each other, so
:func:`check_pair_layout` compares the two layouts on random (public) ids before training.

The feature backbone has no attention: a row of ``2 · NUM_SLOTS`` ids gives one state per response.
"""

from __future__ import annotations

import torch

from safealign.errors import ConfigError
from safealign.models.backbones import DECODER_TYPES, model_type
from safealign.models.features import FeatureBackbone
from safealign.models.scalar import ScalarModel, pool


def is_causal(backbone: torch.nn.Module) -> bool:
    """Whether the backbone's attention is causal (a decoder), as its own mask would be."""
    config = getattr(backbone, "config", None)
    return model_type(backbone) in DECODER_TYPES or bool(getattr(config, "is_decoder", False))


def pair_attention_mask(
    attention_mask: torch.Tensor, *, causal: bool, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask ``[P, 1, 2L, 2L]`` (0 allowed, dtype's min blocked) for pairs' masks ``[P, 2, L]``.

    Query i may attend key j iff both lie in the same half, key j is not padding, and (causal)
    ``j <= i``. Every query keeps at least its half's first token, so no softmax row is empty.
    A float mask, not a boolean one: eager attention adds the mask to the scores.
    """
    pairs, _, length = attention_mask.shape
    device = attention_mask.device
    half = torch.arange(2 * length, device=device) // length
    allowed = (half[:, None] == half[None, :]).unsqueeze(0)  # [1, 2L, 2L]
    allowed = allowed & attention_mask.reshape(pairs, 1, 2 * length).bool()  # keys: no padding
    if causal:
        allowed = allowed & torch.ones_like(allowed[0]).tril()
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def paired_scores(
    model: ScalarModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Scores ``[P, 2]`` (chosen, rejected) of pairs ``input_ids``/``attention_mask`` ``[P, 2, L]``,
    with one backbone row per pair (see module doc)."""
    pairs, _, length = input_ids.shape
    backbone = model.backbone
    mask = attention_mask.reshape(2 * pairs, length)  # one row per half, for pooling
    if isinstance(backbone, FeatureBackbone):
        hidden = backbone(input_ids.reshape(pairs, 2 * length)).last_hidden_state  # [P, 2, H]
    else:
        dtype = next(p.dtype for p in backbone.parameters() if p.is_floating_point())
        positions = torch.arange(2 * length, device=input_ids.device) % length
        hidden = backbone(
            input_ids=input_ids.reshape(pairs, 2 * length),
            attention_mask=pair_attention_mask(
                attention_mask, causal=is_causal(backbone), dtype=dtype
            ),
            position_ids=positions.repeat(pairs, 1),  # contiguous: Opacus' embedding norms view it
        ).last_hidden_state  # [P, 2L, H]
    states = hidden.reshape(2 * pairs, -1, hidden.shape[-1])  # [2P, L, H] (L = 1: features)
    pooled = pool(states, mask, model.pooling).view(pairs, 2, -1)
    return model.head(pooled).squeeze(-1)  # the head once, on [P, 2, H]


@torch.no_grad()
def check_pair_layout(model: ScalarModel, *, seed: int = 0) -> None:
    """Raise unless :func:`paired_scores` equals per-sequence scoring for this backbone.

    Probes with random token ids (never training data, so the check releases nothing about it)
    and uneven padding, in eval mode.

    Raises:
        ConfigError: the backbone does not apply the block-diagonal 4D mask as given (or fails on
            it), so one row per pair would let the two responses see each other.
    """
    backbone = model.backbone
    if isinstance(backbone, FeatureBackbone):
        return  # no attention: nothing to isolate
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    vocab = backbone.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (3, 2, 8), generator=generator)
    lengths = torch.tensor([[8, 3], [5, 8], [2, 6]])
    mask = (torch.arange(8) < lengths.unsqueeze(-1)).long()
    ids, mask = ids.to(device), mask.to(device)
    was_training = model.training
    model.eval()
    name = f"{model_type(backbone)!r}"
    try:
        reference = model(ids.view(6, 8), mask.view(6, 8)).view(3, 2).float()
        paired = paired_scores(model, ids, mask).float()
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"grad_sample_mode 'ghost' needs one row per pair with a 4D attention mask, and backbone "
            f"type {name} failed on it ({exc.__class__.__name__}: {str(exc)[:200]}); use "
            "grad_sample_mode: hooks"
        ) from None
    finally:
        model.train(was_training)
    dtype = next(p.dtype for p in backbone.parameters() if p.is_floating_point())
    tolerance = (1e-4 if dtype == torch.float32 else 2e-2) * max(1.0, float(reference.abs().max()))
    gap = float((paired - reference).abs().max())
    if not gap <= tolerance:
        raise ConfigError(
            f"grad_sample_mode 'ghost': backbone type {name} does not apply a block-diagonal 4D "
            f"attention mask as given (one-row-per-pair scores differ from per-sequence scores "
            f"by {gap:.3g} > {tolerance:.3g}), so a pair's two responses would see each other; "
            "use grad_sample_mode: hooks (per-pair clipping by folding per-sequence gradients)"
        )
