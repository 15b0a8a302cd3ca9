"""The frozen-backbone embedding pass: length-sorted batches padded to their longest row give the
same rows, in input order, as one unsorted batch padded to ``max_length``."""

from __future__ import annotations

import random

import pytest
import torch

from safealign.config import load_config
from safealign.models.embeddings import embedding_cache
from safealign.models.scalar import build_scoring_model

WORDS = ("the", "a", "safe", "harm", "help", "refuse", "answer", "how", "why", "never")


def _texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    prompts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(n)]
    responses = [" ".join(rng.choices(WORDS, k=rng.randint(0, 60))) for _ in range(n)]
    return prompts, responses


def _scoring(backbone: str, pooling: str):
    config = load_config(None, [f"reward_model.backbone={backbone}", f"reward_model.pooling={pooling}",
                                "reward_model.lora=null", "reward_model.head={layers: linear}",
                                "reward_model.train.max_length=64"]).reward_model  # fmt: skip
    return build_scoring_model(config, kind="reward", seed=0)


def _reference(scoring, prompts, responses) -> torch.Tensor:
    """The unsorted pass: every text in one batch, padded to max_length."""
    scoring.model.eval()
    with torch.no_grad():
        return scoring.model.embed(**scoring.encode(prompts, responses))


@pytest.mark.parametrize(("backbone", "pooling"), [("tiny", "mean"), ("tiny-gpt2", "last")])
def test_sorted_batches_equal_the_unsorted_pass_in_input_order(backbone, pooling):
    scoring = _scoring(backbone, pooling)
    prompts, responses = _texts(23, seed=1)
    # One duplicate and a shuffled order, so input order is neither sorted nor unique.
    prompts.append(prompts[4])
    responses.append(responses[4])
    reference = _reference(scoring, prompts, responses)
    widths = []
    scoring.model.backbone.register_forward_hook(
        lambda module, args, kwargs, output: widths.append(kwargs["input_ids"].shape[1]),
        with_kwargs=True,
    )
    with embedding_cache(None):
        out = scoring.embed(prompts, responses, batch_size=5)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    # Batches went longest first, each padded to its own longest row, not to max_length.
    assert widths == sorted(widths, reverse=True) and len(widths) == 5
    assert widths[-1] < widths[0] <= 64
    # A normal tensor (not an inference tensor): the head's DP training can use it.
    assert not out.is_inference()


def test_cache_hits_and_misses_come_back_in_input_order():
    scoring = _scoring("tiny", "mean")
    prompts, responses = _texts(12, seed=2)
    reference = _reference(scoring, prompts, responses)
    with embedding_cache(None):
        scoring.embed(prompts[::3], responses[::3], batch_size=2)  # some entries cached first
        out = scoring.embed(prompts, responses, batch_size=4)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
