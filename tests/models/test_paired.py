"""One row per pair (pattern B): the block-diagonal mask really isolates the two responses."""

from __future__ import annotations

import pytest
import torch

from safealign.config import load_config
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError
from safealign.models import paired
from safealign.models.pairs import encode_pairs
from safealign.models.scalar import build_scoring_model


@pytest.fixture(scope="module")
def world_pairs():
    cfg = load_config(None, ["data.synthetic.num_users=2", "data.synthetic.pairs_per_user=8"])
    return SyntheticWorld(cfg.data.synthetic, seed=0).pairs


def _scoring(backbone: str, lora: bool):
    overrides = [f"reward_model.backbone={backbone}", *([] if lora else ["reward_model.lora=null"])]
    scoring = build_scoring_model(load_config(None, overrides).reward_model, kind="reward", seed=0)
    scoring.model.eval()
    return scoring


def _trimmed(scoring, pairs):
    batch = encode_pairs(scoring, pairs)
    length = int(batch.attention_mask.sum(-1).max())
    return batch.input_ids[..., :length], batch.attention_mask[..., :length]


@pytest.mark.parametrize(
    ("backbone", "lora"),
    [
        ("tiny", True),
        ("tiny", False),
        ("tiny-gpt2", True),
        ("tiny-gpt2", False),
        ("features", False),
    ],
)
def test_one_row_per_pair_scores_equal_per_sequence_scores(world_pairs, backbone, lora):
    scoring = _scoring(backbone, lora)
    ids, mask = _trimmed(scoring, world_pairs)
    pairs, _, length = ids.shape
    if backbone != "features":
        # Padding on both sides of the boundary: chosen and rejected lengths differ in every pair.
        lengths = mask.sum(-1)
        assert (lengths[:, 0] != lengths[:, 1]).any() and (lengths < length).any()
    with torch.no_grad():
        alone = scoring.model(ids.reshape(2 * pairs, length), mask.reshape(2 * pairs, length))
        together = paired.paired_scores(scoring.model, ids, mask)
    assert together.shape == (pairs, 2)
    torch.testing.assert_close(together, alone.view(pairs, 2), atol=1e-5, rtol=1e-5)
    paired.check_pair_layout(scoring.model)  # the pre-training probe agrees


@pytest.mark.parametrize("backbone", ["tiny", "tiny-gpt2"])
def test_without_the_block_mask_the_halves_would_see_each_other(world_pairs, backbone, monkeypatch):
    """The property above can fail: a mask that only hides padding lets each response attend to
    the other one, and the scores change."""
    scoring = _scoring(backbone, lora=False)
    ids, mask = _trimmed(scoring, world_pairs)
    pairs, _, length = ids.shape
    block = paired.pair_attention_mask

    def padding_only(attention_mask, *, causal, dtype):
        full = block(attention_mask, causal=False, dtype=dtype)
        rows, _, width = attention_mask.shape
        allowed = attention_mask.reshape(rows, 1, 1, 2 * width).bool().expand_as(full)
        if causal:
            allowed = allowed & torch.ones(2 * width, 2 * width, dtype=torch.bool).tril()
        return torch.zeros_like(full).masked_fill(~allowed, torch.finfo(dtype).min)

    monkeypatch.setattr(paired, "pair_attention_mask", padding_only)
    with torch.no_grad():
        alone = scoring.model(ids.reshape(2 * pairs, length), mask.reshape(2 * pairs, length))
        mixed = paired.paired_scores(scoring.model, ids, mask)
    assert (mixed - alone.view(pairs, 2)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="does not apply a block-diagonal 4D attention mask"):
        paired.check_pair_layout(scoring.model)


def test_block_mask_blocks_the_other_half_padding_and_the_future():
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]]])  # chosen: 2 tokens, rejected: 1
    allowed = paired.pair_attention_mask(mask, causal=True, dtype=torch.float32)[0, 0] == 0
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],  # a padding query still sees its half's tokens: no empty row
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)
    bidirectional = paired.pair_attention_mask(mask, causal=False, dtype=torch.float32)[0, 0] == 0
    assert torch.equal(bidirectional[0], torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool))


def test_a_decoder_treated_as_an_encoder_is_refused(monkeypatch):
    """A backbone whose attention the mask gets wrong (here GPT-2 given a bidirectional block)
    is refused before training instead of silently mixing the halves."""
    scoring = _scoring("tiny-gpt2", lora=True)
    monkeypatch.setattr(paired, "is_causal", lambda backbone: False)
    with pytest.raises(ConfigError, match="use grad_sample_mode: hooks"):
        paired.check_pair_layout(scoring.model)
