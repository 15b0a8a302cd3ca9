"""Preference pairs as tensors, and the reward and cost losses (per pair, unreduced).

Row layout: pair ``i`` is rows ``2i`` (chosen) and ``2i+1`` (rejected) once flattened to
``[2P, L]``; DP training folds per-row gradients back to per-pair (or per-user) gradients. Ghost
clipping uses one row per pair instead (:mod:`.paired`) and :class:`PairLoss` as its criterion.
A frozen backbone's pairs are their cached embeddings instead of tokens (:class:`EmbeddedPairs`):
the DP loop then trains the head alone on rows ``[2P, H]``, with the same fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from safealign.data.records import PairDataset
from safealign.models.scalar import Kind, ScoringModel


@dataclass(frozen=True)
class EncodedPairs:
    """Tokenised pairs.

    Attributes:
        input_ids: ``[P, 2, L]`` (chosen, rejected).
        attention_mask: ``[P, 2, L]``.
        unsafe: ``[P, 2]`` +1 unsafe, -1 safe, 0 unknown (Safe RLHF's sign convention).
        unsafer: ``[P]`` index (0/1) of the less safe response, -1 when not annotated.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    unsafe: torch.Tensor
    unsafer: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> EncodedPairs:
        return EncodedPairs(
            self.input_ids[index],
            self.attention_mask[index],
            self.unsafe[index],
            self.unsafer[index],
        )


@dataclass(frozen=True)
class EmbeddedPairs:
    """Pairs as the frozen backbone's pooled states (head mode; :mod:`.embeddings`).

    Attributes:
        embeddings: ``[P, 2, H]`` (chosen, rejected).
        unsafe: ``[P, 2]`` as in :class:`EncodedPairs`.
        unsafer: ``[P]`` as in :class:`EncodedPairs`.
    """

    embeddings: torch.Tensor
    unsafe: torch.Tensor
    unsafer: torch.Tensor

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def select(self, index: torch.Tensor) -> EmbeddedPairs:
        return EmbeddedPairs(self.embeddings[index], self.unsafe[index], self.unsafer[index])

    def to(self, device: torch.device | str) -> EmbeddedPairs:
        return EmbeddedPairs(
            self.embeddings.to(device), self.unsafe.to(device), self.unsafer.to(device)
        )


def _labels(pairs: PairDataset) -> tuple[torch.Tensor, torch.Tensor]:
    unsafer = [-1 if p.safer is None else (1 if p.safer == "chosen" else 0) for p in pairs]
    return (
        torch.tensor([[_sign(p.chosen_safe), _sign(p.rejected_safe)] for p in pairs]),
        torch.tensor(unsafer, dtype=torch.long),
    )


def embed_pairs(
    scoring: ScoringModel, pairs: PairDataset, *, batch_size: int = 64
) -> EmbeddedPairs:
    """Each pair's two pooled states, from the embedding cache or computed once (head mode)."""
    prompts = [p.prompt for p in pairs for _ in (0, 1)]
    responses = [r for p in pairs for r in (p.chosen, p.rejected)]
    states = scoring.embed(prompts, responses, batch_size=batch_size)
    unsafe, unsafer = _labels(pairs)
    return EmbeddedPairs(states.view(len(pairs), 2, -1), unsafe, unsafer)


def _sign(safe: bool | None) -> float:
    return 0.0 if safe is None else (-1.0 if safe else 1.0)


def encode_pairs(scoring: ScoringModel, pairs: PairDataset) -> EncodedPairs:
    """Tokenise every pair once (training then only indexes tensors)."""
    prompts = [p.prompt for p in pairs for _ in (0, 1)]
    responses = [r for p in pairs for r in (p.chosen, p.rejected)]
    enc = scoring.encode(prompts, responses)
    length = enc["input_ids"].shape[-1]
    unsafe, unsafer = _labels(pairs)
    return EncodedPairs(
        input_ids=enc["input_ids"].view(len(pairs), 2, length),
        attention_mask=enc["attention_mask"].view(len(pairs), 2, length),
        unsafe=unsafe,
        unsafer=unsafer,
    )


def reward_loss(scores: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss per pair, ``-log σ(r(x, y_w) - r(x, y_l))``; ``scores`` is ``[P, 2]``."""
    return -F.logsigmoid(scores[:, 0] - scores[:, 1])


def cost_loss(scores: torch.Tensor, unsafe: torch.Tensor, unsafer: torch.Tensor) -> torch.Tensor:
    """Safe RLHF cost loss per pair (Dai et al. 2024, Eq. 6).

    ``-log σ(c(y_unsafer) - c(y_safer)) - Σ_y log σ(s_y·c(y))`` with ``s = +1`` unsafe, ``-1`` safe.
    The classification term anchors 0 as the safe/unsafe boundary, so ``c > 0`` means unsafe;
    each term is used only where its labels exist.
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    has_order = unsafer >= 0
    order = unsafer.clamp_min(0)
    margin = scores[rows, order] - scores[rows, 1 - order]
    pairwise = torch.where(has_order, -F.logsigmoid(margin), torch.zeros_like(margin))
    classification = -(F.logsigmoid(unsafe * scores) * (unsafe != 0)).sum(dim=1)
    return pairwise + classification


def pair_loss(
    scores: torch.Tensor, unsafe: torch.Tensor, unsafer: torch.Tensor, *, kind: Kind
) -> torch.Tensor:
    """Per-pair loss ``[P]`` of ``kind`` for scores ``[P, 2]``."""
    return reward_loss(scores) if kind == "reward" else cost_loss(scores, unsafe, unsafer)


class PairLoss(nn.Module):
    """:func:`pair_loss` as a criterion with a ``reduction`` (``mean``, ``sum`` or ``none``), the
    interface Opacus' ghost clipping wraps (it switches ``reduction`` to ``none`` to get the
    per-row losses it clips)."""

    def __init__(self, kind: Kind, *, reduction: str = "mean") -> None:
        super().__init__()
        self.kind, self.reduction = kind, reduction

    def forward(
        self, scores: torch.Tensor, unsafe: torch.Tensor, unsafer: torch.Tensor
    ) -> torch.Tensor:
        losses = pair_loss(scores, unsafe, unsafer, kind=self.kind)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()
