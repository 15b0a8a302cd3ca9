"""The feature backbone (``backbone: features``): an MLP over the synthetic world's parsed features.

For benchmarks and tests of the algorithms (DP-SGD, HC-RLHF, MaxMin) when what a text encoder
learns is not the point: the synthetic world's texts are parsed back to their latent features
(:func:`synthetic_text.parse_prompt` / :func:`synthetic_text.parse_response`), so a small MLP over
those features can fit the true reward and cost, and trains in seconds. It goes
through the same code as every backbone: :class:`FeatureTokenizer` stands in for a tokenizer and
:class:`FeatureBackbone` for a Hugging Face base model inside ``ScalarModel``, so pairs, per-pair
DP clipping, scoring and save/load are unchanged.

Slots, in order; every slot has its own ids (offsets into one embedding table):

    topic     the 8 topics of synthetic_text.TASKS, or null (no known task in the prompt)
    severity  0 benign, 1-3 harmful, or null (no known task)
    refusal   false, true
    detail    0-4 steps
    style     -1 casual, 0 unknown or mixed, +1 formal

Shape conventions. The tokenizer returns ``input_ids`` / ``attention_mask`` ``[n, NUM_SLOTS]``;
every slot is always present (unrecognised text has values too), so the mask is all ones and
padding or truncation never applies. The backbone returns one state per row, as a sequence of
length one, ``last_hidden_state`` ``[R, 1, H]``, which ``ScalarModel`` reads with pooling
``first``; the scalar head on top is the MLP's output layer. A row holding a pair's two responses
(``[R, 2 · NUM_SLOTS]``, the one-row-per-pair layout of :mod:`.paired`) gives one state per
response, ``[R, 2, H]``.

Saved layout (the ``features/`` part of a scalar-model directory, see :mod:`.scalar`)::

    MODEL_DIR/features/features.json      {"format": "safealign-features/1", "slots": {name: values},
                                           "embedding_dim": E, "hidden_sizes": [H1, ...]}
    MODEL_DIR/features/model.safetensors  "embedding.weight" [V, E], "mlp.0.weight" [H1, 5E], ...

The weights open with any safetensors reader, but unlike the Hugging Face backbones, *scoring text
needs safealign*: the ids come from safealign's synthetic-world parser, and loading checks that
the saved slot values are those of the installed version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from safealign._atomic import atomic_write_bytes, atomic_write_text
from safealign.data import synthetic_text
from safealign.errors import DataError
from safealign.models._meta import read_format_json

FORMAT = "safealign-features/1"
MODEL_TYPE = "safealign-features"
# (slot name, its values in id order); None stands for "not recognised".
SLOTS: tuple[tuple[str, tuple], ...] = (
    ("topic", (*synthetic_text.TOPICS, None)),
    ("severity", (0, 1, 2, 3, None)),
    ("refusal", (False, True)),
    ("detail", tuple(range(synthetic_text.MAX_DETAIL + 1))),
    ("style", (-1, 0, 1)),
)
NUM_SLOTS = len(SLOTS)
VOCAB_SIZE = sum(len(values) for _, values in SLOTS)
_OFFSETS = tuple(sum(len(v) for _, v in SLOTS[:i]) for i in range(NUM_SLOTS))
_IDS = tuple(
    {value: offset + i for i, value in enumerate(values)}
    for offset, (_, values) in zip(_OFFSETS, SLOTS, strict=True)
)


def feature_ids(prompt: str, response: str) -> list[int]:
    """The ``NUM_SLOTS`` ids of one (prompt, response), in :data:`SLOTS` order."""
    asked = synthetic_text.parse_prompt(prompt)
    answer = synthetic_text.parse_response(response)
    values = (
        asked.topic if asked else None,
        asked.severity if asked else None,
        answer.refusal,
        answer.detail,
        answer.style,
    )
    return [ids[value] for ids, value in zip(_IDS, values, strict=True)]


class FeatureTokenizer:
    """Tokenizer stand-in: (prompt, response) texts → feature ids, shaped like a HF tokenizer's output."""

    def __len__(self) -> int:
        return VOCAB_SIZE

    def __call__(
        self,
        text: Sequence[str],
        text_pair: Sequence[str],
        *,
        truncation: bool | str = False,
        max_length: int | None = None,
        padding: bool | str = False,
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` ``[n, NUM_SLOTS]`` (int64) for prompts and responses.

        Takes the keyword arguments ``ScoringModel.encode`` passes to any tokenizer. A row always
        has ``NUM_SLOTS`` ids, so ``padding`` and ``truncation`` have nothing to do; a
        ``max_length`` below ``NUM_SLOTS`` is an error (a row cannot be cut).

        Raises:
            ValueError: ``return_tensors`` is not ``"pt"``, lengths differ, or ``max_length`` is too small.
        """
        del truncation, padding  # accepted for the tokenizer interface; nothing to pad or cut
        if return_tensors != "pt":
            raise ValueError(
                f"FeatureTokenizer returns torch tensors only (got return_tensors={return_tensors!r})"
            )
        if max_length is not None and max_length < NUM_SLOTS:
            raise ValueError(
                f"max_length {max_length} is below the {NUM_SLOTS} feature slots of a row"
            )
        if len(text) != len(text_pair):
            raise ValueError(f"{len(text)} prompts but {len(text_pair)} responses")
        rows = [feature_ids(p, r) for p, r in zip(text, text_pair, strict=True)]
        ids = torch.tensor(rows, dtype=torch.long).view(len(rows), NUM_SLOTS)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@dataclass(frozen=True)
class FeatureBackboneConfig:
    """Sizes of the feature MLP (saved with the weights).

    Attributes:
        embedding_dim: Width E of each slot's embedding; the MLP input is ``NUM_SLOTS · E``.
        hidden_sizes: Widths of the hidden layers (each Linear + ReLU); the last is ``hidden_size``.
    """

    embedding_dim: int = 8
    hidden_sizes: tuple[int, ...] = (64,)
    model_type: str = MODEL_TYPE

    @property
    def hidden_size(self) -> int:
        return self.hidden_sizes[-1]


@dataclass(frozen=True)
class FeatureOutput:
    """The backbone's output, named as Hugging Face's: ``last_hidden_state`` ``[R, k, H]``."""

    last_hidden_state: torch.Tensor


class FeatureBackbone(nn.Module):
    """Slot embeddings → concatenation → MLP (Linear + ReLU per hidden layer).

    Only ``nn.Embedding`` and ``nn.Linear`` hold weights, each called once per forward, so Opacus
    computes per-sample gradients with hooks or functorch, and per-sample norms with ghost
    clipping.

    Args:
        config: Layer sizes.
        seed: Seed of the initial weights (the global RNG is left as it was).
    """

    def __init__(self, config: FeatureBackboneConfig | None = None, *, seed: int) -> None:
        super().__init__()
        self.config = config or FeatureBackboneConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embedding = nn.Embedding(VOCAB_SIZE, self.config.embedding_dim)
            layers: list[nn.Module] = []
            width = NUM_SLOTS * self.config.embedding_dim
            for hidden in self.config.hidden_sizes:
                layers += [nn.Linear(width, hidden), nn.ReLU()]
                width = hidden
            self.mlp = nn.Sequential(*layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> FeatureOutput:
        """One state per response, ``[R, k, H]``, for feature ids ``[R, k · NUM_SLOTS]``.

        ``k = 1`` is one response per row (``[R, 1, H]``); ``k = 2`` is the one-row-per-pair
        layout of :mod:`.paired` (chosen then rejected), where each response's slots go through
        the MLP on their own, so the states are those of ``k = 1``.
        ``attention_mask`` and ``position_ids`` are what ``ScalarModel`` passes to any backbone;
        both are unused here (every slot is present; slots are told apart by their ids).
        """
        del attention_mask, position_ids
        if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[1] % NUM_SLOTS:
            raise ValueError(
                f"feature ids must be [rows, k * {NUM_SLOTS}], got {list(input_ids.shape)}"
            )
        rows, width = input_ids.shape
        slots = self.embedding(input_ids).view(rows, width // NUM_SLOTS, -1)  # [R, k, S·E]
        return FeatureOutput(self.mlp(slots))


def _spec(config: FeatureBackboneConfig) -> dict:
    return {
        "format": FORMAT,
        "slots": {name: list(values) for name, values in SLOTS},
        "embedding_dim": config.embedding_dim,
        "hidden_sizes": list(config.hidden_sizes),
    }


def save_feature_backbone(backbone: FeatureBackbone, path: str | Path) -> None:
    """Write ``features.json`` and ``model.safetensors`` into ``path`` (atomically, each)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write_bytes(path / "model.safetensors", save(weights))
    spec = json.dumps(_spec(backbone.config), indent=2, sort_keys=True) + "\n"
    atomic_write_text(path / "features.json", spec)


def load_feature_backbone(path: str | Path) -> tuple[FeatureBackbone, FeatureTokenizer]:
    """Read a directory written by :func:`save_feature_backbone`.

    Raises:
        DataError: files missing or unreadable, another format, or slot values that differ from
            this version's parser (the saved ids would then mean other features).
    """
    path = Path(path)
    spec_path = path / "features.json"
    spec = read_format_json(
        spec_path, fmt=FORMAT, missing="feature model spec features.json is missing"
    )
    expected = _spec(FeatureBackboneConfig())["slots"]
    if spec.get("slots") != expected:
        raise DataError(
            f"feature slots {spec.get('slots')} differ from this safealign's parser ({expected}); "
            "load the model with the safealign version that saved it",
            path=str(spec_path),
        )
    config = FeatureBackboneConfig(
        embedding_dim=int(spec["embedding_dim"]), hidden_sizes=tuple(spec["hidden_sizes"])
    )
    backbone = FeatureBackbone(config, seed=0)
    try:
        weights = load_file(str(path / "model.safetensors"))
    except FileNotFoundError:
        raise DataError(
            "feature model weights model.safetensors are missing", path=str(path)
        ) from None
    try:
        backbone.load_state_dict(weights)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        raise DataError(
            f"model.safetensors does not match features.json ({str(exc).splitlines()[0]})",
            path=str(path),
        ) from None
    return backbone, FeatureTokenizer()
