"""Held-out metrics: pair accuracy counts exact ties as a coin flip."""

from __future__ import annotations

import pytest
import torch

from safealign.data.records import PairDataset, PreferencePair
from safealign.models.evaluate import evaluate_scoring_model


class _FixedScores:
    """A scoring model stand-in: each response text's score is looked up in a table."""

    def __init__(self, kind: str, table: dict[str, float]) -> None:
        self.kind, self.table = kind, table

    def score(self, prompts, responses):
        return torch.tensor([self.table[r] for r in responses])


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_pair_accuracy_counts_ties_as_half(kind):
    table = {"a": 2.0, "b": 1.0, "c": 1.0, "d": 3.0}
    # chosen above, tie, below: (1 + ½ + 0) / 3 for the reward model; for the cost model the
    # rejected response is the safer one, so "chosen" must cost more: the same three orders.
    pairs = PairDataset(
        tuple(
            PreferencePair("p", chosen, rejected, safer="rejected")
            for chosen, rejected in (("a", "b"), ("b", "c"), ("c", "d"))
        )
    )
    metrics = evaluate_scoring_model(_FixedScores(kind, table), pairs)
    assert metrics["eval/pair_accuracy"] == pytest.approx(0.5)
