"""Tilt-and-distil for a causal LM (HC-RLHF step 1, Chittepu et al. 2025): rounds of sample →
pessimistic tilt (:func:`solvers.solve_pessimistic`) → weighted SFT of the tilted weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from safealign.constraints.bounds import mean_plus_k_std
from safealign.constraints.lm_policy._sampling import (
    _check,
    _derive,
    _sample_and_score,
    _trainable,
)
from safealign.constraints.solvers import solve_pessimistic
from safealign.errors import DataError, InfeasibleError
from safealign.models.causal import SamplerSettings, ScoreFn, sequence_logprobs


@dataclass(frozen=True)
class DistillStats:
    """Outcome of one weighted-SFT distillation.

    Attributes:
        steps: Optimiser steps taken.
        num_pairs: (prompt, response) pairs trained on (weights below ``min_weight`` dropped).
        epoch_losses: Per epoch, the mean estimate of ``-(1/N) sum_{n,k} q_nk log pi(y_nk|x_n)``.
    """

    steps: int
    num_pairs: int
    epoch_losses: tuple[float, ...]


@dataclass(frozen=True)
class TiltRound:
    """One round of :func:`iterate_tilt_distill`; sample statistics are of the pre-round policy.

    Attributes:
        round: 0-based round index.
        mean_reward: Mean reward of the round's samples.
        mean_cost: Mean cost of the round's samples.
        upper_bound: ``mean + k std`` of the per-prompt mean sample costs.
        lagrange_multiplier: The tilt's lambda (``inf`` when the bound was infeasible).
        feasible: Whether some lambda met the bound over these candidates.
        tilted_reward: ``E_q[r]`` of the tilted distribution distilled.
        tilted_cost: ``E_q[c]`` of the tilted distribution distilled.
        distill: The distillation's statistics.
    """

    round: int
    mean_reward: float
    mean_cost: float
    upper_bound: float
    lagrange_multiplier: float
    feasible: bool
    tilted_reward: float
    tilted_cost: float
    distill: DistillStats


@dataclass(frozen=True)
class TiltDistillResult:
    """History of :func:`iterate_tilt_distill`.

    Attributes:
        rounds: One entry per round.
        final_reward: Mean reward of fresh samples from the final policy (None if not evaluated).
        final_cost: Mean cost of those samples (None if not evaluated).
        sampler: The sampler every sample was drawn with.
    """

    rounds: tuple[TiltRound, ...]
    final_reward: float | None
    final_cost: float | None
    sampler: SamplerSettings


def distill(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    weights: Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    min_weight: float = 1e-6,
) -> DistillStats:
    """Weighted SFT of ``policy`` towards ``q``: minimise ``-(1/N) sum_{n,k} q_nk log pi(y_nk|x_n)``.

    Only parameters with ``requires_grad`` train, so under LoRA only the adapters move. Each row of
    ``weights`` is normalised to sum to one; pairs with a weight below ``min_weight`` are skipped
    (they change the loss by at most ``min_weight * |log pi|`` each).

    Args:
        policy: Causal LM.
        tokenizer: Its tokenizer.
        prompts: ``[N]`` prompts.
        candidates: ``[N][K]`` responses.
        weights: ``[N, K]`` non-negative weights ``q``.
        lr: AdamW learning rate.
        epochs: Passes over the weighted pairs.
        batch_size: Pairs per step.
        seed: Seed of the shuffling.
        min_weight: Weights below this are dropped.
    """
    q = _check_weights(prompts, candidates, weights)
    _check(positive={"lr": lr, "epochs": epochs, "batch_size": batch_size})
    rows, cols = (i.tolist() for i in torch.nonzero(q >= min_weight, as_tuple=True))
    pairs = [(prompts[i], candidates[i][j]) for i, j in zip(rows, cols, strict=True)]
    pair_weights = q[rows, cols].float()
    optimizer = torch.optim.AdamW(_trainable(policy), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    # Scaling the batch mean by M / N makes every batch loss an unbiased estimate of the full
    # objective -(1/N) sum q log pi, whatever the batch size.
    scale = len(pairs) / len(prompts)
    was_training, losses, steps = policy.training, [], 0
    policy.train()
    total = epochs * math.ceil(len(pairs) / batch_size)
    with tqdm(total=total, desc="distill", leave=False, disable=None) as bar:
        for _ in range(epochs):
            epoch_loss = []
            for batch in torch.randperm(len(pairs), generator=generator).split(batch_size):
                chosen = [pairs[i] for i in batch.tolist()]
                logp = sequence_logprobs(
                    policy, tokenizer, [x for x, _ in chosen], [y for _, y in chosen]
                )
                loss = -scale * (pair_weights[batch].to(logp) * logp).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_loss.append(float(loss.detach()))
                steps += 1
                bar.update()
            losses.append(float(np.mean(epoch_loss)))
    policy.train(was_training)
    return DistillStats(steps=steps, num_pairs=len(pairs), epoch_losses=tuple(losses))


def iterate_tilt_distill(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    reward_fn: ScoreFn,
    cost_fn: ScoreFn,
    beta: float,
    cost_threshold: float,
    k_pessimism: float,
    rounds: int,
    num_candidates: int,
    sampler: SamplerSettings,
    lr: float = 1e-3,
    epochs: int = 1,
    batch_size: int = 64,
    seed: int,
    evaluate_final: bool = True,
) -> TiltDistillResult:
    """Rounds of sample → pessimistic tilt → distil (HC-RLHF tilting, deployed as the LM itself).

    Each round draws ``num_candidates`` responses per prompt from the *current* policy, finds the
    smallest lambda whose tilt ``q ∝ exp((r - lambda c)/beta)`` meets ``mean + k std <= tau`` over
    the per-prompt expected costs, and distils ``q`` into the policy. When no lambda meets the bound
    over these candidates, the round distils the ``lambda -> inf`` limit (each prompt's cheapest
    candidates, reward-tilted): the safest step available, recorded as ``feasible=False``.

    Args:
        policy: Causal LM, trained in place.
        tokenizer: Its tokenizer.
        prompts: ``[N]`` optimisation prompts (N >= 2).
        reward_fn: Rewards of (prompt, response) texts.
        cost_fn: Costs of (prompt, response) texts.
        beta: KL coefficient of each round's tilt (against the policy of that round).
        cost_threshold: ``tau``.
        k_pessimism: ``k`` of the bound (see :func:`bounds.pessimism_k`).
        rounds: Sample-tilt-distil rounds.
        num_candidates: K, samples per prompt per round.
        sampler: Sampler settings (those of deployment: they shape what is certified).
        lr: Distillation learning rate.
        epochs: Distillation epochs per round.
        batch_size: Distillation pairs per step.
        seed: Seed of sampling and shuffling.
        evaluate_final: Draw one more sample set to measure the final policy.
    """
    _check(positive={"rounds": rounds, "num_candidates": num_candidates, "beta": beta})
    bound_fn = partial(mean_plus_k_std, k=k_pessimism)
    draw = partial(_sample_and_score, policy, tokenizer, reward_fn, cost_fn, sampler, prompts)
    train = partial(
        distill, policy, tokenizer, prompts, lr=lr, epochs=epochs, batch_size=batch_size
    )
    history = []
    for index in tqdm(range(rounds), desc="tilt-distill", leave=False, disable=None):
        samples, r, c = draw(num_samples=num_candidates, seed=_derive(seed, 1, index))
        q, lam, feasible = _pessimistic_tilt(r, c, beta=beta, tau=cost_threshold, bound_fn=bound_fn)
        stats = train(samples, q, seed=_derive(seed, 2, index))
        history.append(
            TiltRound(
                round=index,
                mean_reward=float(r.mean()),
                mean_cost=float(c.mean()),
                upper_bound=float(bound_fn(c.mean(-1))),
                lagrange_multiplier=lam,
                feasible=feasible,
                tilted_reward=float((q * r).sum(-1).mean()),
                tilted_cost=float((q * c).sum(-1).mean()),
                distill=stats,
            )
        )
    final_reward = final_cost = None
    if evaluate_final:
        _, r, c = draw(num_samples=num_candidates, seed=_derive(seed, 1, rounds))
        final_reward, final_cost = float(r.mean()), float(c.mean())
    return TiltDistillResult(tuple(history), final_reward, final_cost, sampler)


def _pessimistic_tilt(
    r: Tensor, c: Tensor, *, beta: float, tau: float, bound_fn: Callable[[Tensor], float]
) -> tuple[Tensor, float, bool]:
    """``(q [N, K], lambda, feasible)``; the ``lambda -> inf`` limit when the bound is unreachable."""
    try:
        result = solve_pessimistic(r, c, beta=beta, cost_threshold=tau, bound_fn=bound_fn)
    except InfeasibleError:
        cheapest = c <= c.min(-1, keepdim=True).values
        q = torch.softmax(torch.where(cheapest, r / beta, -math.inf), dim=-1)
        return q, math.inf, False
    return result.q, float(result.lambdas.flatten()[0]), True


def _check_weights(
    prompts: Sequence[str], candidates: Sequence[Sequence[str]], weights: Tensor
) -> Tensor:
    q = torch.as_tensor(weights, dtype=torch.float64)
    shape = (len(prompts), len(candidates[0]) if candidates else 0)
    if len(candidates) != len(prompts) or any(len(row) != shape[1] for row in candidates):
        raise DataError(f"candidates must be [N][K] with N = {len(prompts)} prompts and equal K")
    if tuple(q.shape) != shape or shape[0] == 0 or shape[1] == 0:
        raise DataError(f"weights must have shape [N, K] = {shape} (got {tuple(q.shape)})")
    if not bool(torch.isfinite(q).all()) or bool((q < 0).any()):
        raise DataError("weights must be finite and >= 0")
    sums = q.sum(-1, keepdim=True)
    if bool((sums <= 0).any()):
        raise DataError(
            f"every prompt needs a positive weight; row {int((sums <= 0).nonzero()[0, 0])} sums to 0"
        )
    return q / sums
