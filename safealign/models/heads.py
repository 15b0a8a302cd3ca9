"""Scalar heads: the one linear layer every scalar model ends in, or a small MLP.

With a frozen backbone (``head`` set in a model config) the head is the only trained module, so
DP-SGD's per-sample gradients cost one small matrix per pair and the noise is spread over few
weights. The head maps pooled states ``[..., H]`` to scores ``[..., 1]``; ``bias`` is always the
output layer's bias, which the cost model's DP calibration shifts
(:func:`safealign.privacy.calibration.apply_shift`).

Saved heads (``head.safetensors``): a linear head as ``weight`` ``[1, H]`` and ``bias`` ``[1]``
(the layout of every older model directory); an MLP head as ``hidden.weight`` ``[K, H]``,
``hidden.bias`` ``[K]``, ``out.weight`` ``[1, K]``, ``out.bias`` ``[1]``.
"""

from __future__ import annotations

import torch
from torch import nn

from safealign.config import HeadConfig


class MLPHead(nn.Module):
    """``out(relu(hidden(x)))``: pooled states ``[..., H]`` to scores ``[..., 1]``."""

    def __init__(self, in_features: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden_size)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))

    @property
    def bias(self) -> nn.Parameter:
        """The output bias: adding to it shifts every score."""
        return self.out.bias


def build_head(in_features: int, config: HeadConfig | None) -> nn.Module:
    """The head for ``config`` (None: the plain linear head of a LoRA or full fine-tune)."""
    if config is None or config.layers == "linear":
        return nn.Linear(in_features, 1)
    return MLPHead(in_features, config.hidden_size)


def head_description(head: nn.Module) -> dict[str, object]:
    """What ``scalar_model.json`` records to rebuild ``head`` (:func:`head_from_description`)."""
    if isinstance(head, MLPHead):
        return {"head": "mlp", "head_hidden_size": head.hidden.out_features}
    return {"head": "linear"}


def head_from_description(in_features: int, meta: dict) -> nn.Module:
    """A fresh head of the shape ``meta`` (a ``scalar_model.json``) describes; older model
    directories have no ``head`` key and a linear head."""
    if meta.get("head", "linear") == "mlp":
        return MLPHead(in_features, int(meta["head_hidden_size"]))
    return nn.Linear(in_features, 1)
