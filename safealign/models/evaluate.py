"""Held-out evaluation of reward and cost models: pair accuracy, safe/unsafe accuracy, AUROC."""

from __future__ import annotations

import torch

from safealign.data.records import PairDataset
from safealign.models.scalar import ScoringModel


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """Area under the ROC curve (Mann–Whitney U with mid-ranks for ties); None if one class is empty."""
    scores = scores.double()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    for value in scores[order].unique_consecutive():  # mid-ranks for ties
        tied = scores == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _pair_accuracy(higher: torch.Tensor, lower: torch.Tensor) -> float:
    """Share of pairs scored in the labelled order; an exact tie counts ½ (a coin flip), as in the
    synthetic world's Bayes accuracy. Ties matter for models with discrete inputs (``features``):
    counted as errors they would cost a perfect model the share of pairs with equal true scores."""
    return float(((higher > lower).double() + 0.5 * (higher == lower).double()).mean())


def evaluate_scoring_model(
    scoring: ScoringModel, pairs: PairDataset
) -> dict[str, float | int | None]:
    """Metrics on held-out ``pairs``, keys namespaced ``eval/...``.

    Reward models: ``eval/pair_accuracy`` (chosen scored above rejected; ties count ½). Cost models: pair accuracy
    on pairs with a ``safer`` annotation (the less safe response costs more), and, on responses with
    safety labels, ``eval/safety_accuracy`` (sign of the cost), ``eval/safety_auroc``,
    ``eval/unsafe_recall`` (unsafe-labelled responses with cost > 0), and the calibration pair
    ``eval/unsafe_rate`` (labels) against ``eval/predicted_unsafe_rate`` (mean σ(cost)).
    """
    if len(pairs) == 0:
        return {"eval/pairs": 0}
    prompts = [p.prompt for p in pairs]
    chosen = scoring.score(prompts, [p.chosen for p in pairs])
    rejected = scoring.score(prompts, [p.rejected for p in pairs])
    metrics: dict[str, float | int | None] = {"eval/pairs": len(pairs)}
    if scoring.kind == "reward":
        metrics["eval/pair_accuracy"] = _pair_accuracy(chosen, rejected)
        metrics["eval/mean_margin"] = float((chosen - rejected).mean())
        return metrics
    ordered = [(i, p.safer) for i, p in enumerate(pairs) if p.safer is not None]
    if ordered:
        idx = torch.tensor([i for i, _ in ordered])
        chosen_unsafer = torch.tensor([s == "rejected" for _, s in ordered])
        unsafer = torch.where(chosen_unsafer, chosen[idx], rejected[idx])
        safer = torch.where(chosen_unsafer, rejected[idx], chosen[idx])
        metrics["eval/pair_accuracy"] = _pair_accuracy(unsafer, safer)
        metrics["eval/ordered_pairs"] = len(ordered)
    labels, scores = [], []
    for i, p in enumerate(pairs):
        for safe, score in ((p.chosen_safe, chosen[i]), (p.rejected_safe, rejected[i])):
            if safe is not None:
                labels.append(not safe)
                scores.append(float(score))
    if labels:
        unsafe = torch.tensor(labels)
        values = torch.tensor(scores)
        metrics["eval/safety_accuracy"] = float(((values > 0) == unsafe).double().mean())
        metrics["eval/safety_auroc"] = auroc(values, unsafe)
        metrics["eval/labelled_responses"] = len(labels)
        # Calibration in the large: P(unsafe) = σ(c) averaged, against the labels' unsafe rate. A
        # DP cost model drifts toward the majority (safe) class when clipping binds (clipped
        # per-pair gradients vote by direction, not size): it then under-predicts both.
        metrics["eval/unsafe_rate"] = float(unsafe.double().mean())
        metrics["eval/predicted_unsafe_rate"] = float(torch.sigmoid(values.double()).mean())
        if unsafe.any():
            metrics["eval/unsafe_recall"] = float((values[unsafe] > 0).double().mean())
    return metrics
