"""REINFORCE-Lagrangian for a causal LM, as in the HC-RLHF reference code (Chittepu et al. 2025):
on-policy, two samples per prompt, a leave-one-out baseline, a surrogate cost whose policy gradient
is that of mean + k std, and a multiplicative update of the multiplier."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from safealign.constraints.lm_policy._sampling import (
    _check,
    _derive,
    _sample_and_score,
    _trainable,
)
from safealign.errors import ConfigError
from safealign.models.causal import SamplerSettings, ScoreFn, sequence_logprobs

# log(lambda) is clipped: the multiplicative update grows lambda geometrically under a violated
# bound, and an overflowing lambda would turn every return into inf.
_LOG_LAMBDA_RANGE = (-20.0, 10.0)


@dataclass(frozen=True)
class LagrangianStep:
    """One step of :func:`reinforce_lagrangian`.

    Attributes:
        step: 0-based step index.
        mean_reward: Mean reward of the step's samples.
        mean_cost: Mean cost of the step's samples.
        upper_bound: ``mu + k sigma`` over the cost buffer.
        lagrange_multiplier: lambda used for this step's return (before its update).
        kl: Mean per-sample ``log pi_theta - log pi_ref`` (an unbiased estimate of the KL).
    """

    step: int
    mean_reward: float
    mean_cost: float
    upper_bound: float
    lagrange_multiplier: float
    kl: float


@dataclass(frozen=True)
class ReinforceResult:
    """History of :func:`reinforce_lagrangian`.

    Attributes:
        history: One entry per step.
        final_lambda: lambda after the last update.
        sampler: The sampler the training samples were drawn with.
    """

    history: tuple[LagrangianStep, ...]
    final_lambda: float
    sampler: SamplerSettings


def reinforce_lagrangian(
    policy: nn.Module,
    ref_policy: nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    reward_fn: ScoreFn,
    cost_fn: ScoreFn,
    beta: float,
    cost_threshold: float,
    k_pessimism: float,
    steps: int,
    lr: float,
    lambda_lr: float,
    batch_size: int,
    seed: int,
    buffer_size: int = 512,
    lambda_init: float = 1.0,
    max_new_tokens: int = 96,
) -> ReinforceResult:
    """On-policy REINFORCE with a Lagrange multiplier on ``mean + k std`` of the cost.

    As in the HC-RLHF reference code (Chittepu et al. 2025): each step samples two responses for
    each of ``batch_size`` prompts from ``pi_theta`` (temperature 1, no truncation, so the samples
    are on-policy), forms the return ``r - beta (log pi_theta - log pi_ref) - lambda c'``, uses the
    other sample's return as the baseline (leave-one-out), and then updates
    ``log lambda += lambda_lr * lambda * (UB - tau)`` with ``UB = mu + k sigma`` over a buffer of
    recent costs. Keeping ``log lambda`` keeps lambda positive and makes the step scale with it.

    Args:
        policy: Causal LM, trained in place (only parameters with ``requires_grad``).
        ref_policy: Frozen reference; None under LoRA means the policy with adapters disabled.
        tokenizer: The tokenizer of both.
        prompts: Training prompts.
        reward_fn: Rewards of (prompt, response) texts.
        cost_fn: Costs of (prompt, response) texts.
        beta: KL coefficient.
        cost_threshold: ``tau``.
        k_pessimism: ``k`` of the bound.
        steps: Optimiser steps.
        lr: Adam learning rate of the policy.
        lambda_lr: Step size of the ``log lambda`` update.
        batch_size: Prompts per step (two samples each).
        seed: Seed of prompt sampling and generation.
        buffer_size: Recent costs kept for ``mu`` and ``sigma`` (>= 2).
        lambda_init: Initial lambda (> 0).
        max_new_tokens: Cap on generated tokens; keep it above the longest response, since a cut
            sample is scored (and its log-probability taken) as if it had ended there.
    """
    _check(
        positive={"steps": steps, "lr": lr, "batch_size": batch_size, "lambda_init": lambda_init},
        non_negative={"lambda_lr": lambda_lr, "beta": beta, "k_pessimism": k_pessimism},
    )
    if buffer_size < 2 or (ref_policy is None and not hasattr(policy, "disable_adapter")):
        raise ConfigError(
            f"need buffer_size >= 2 (got {buffer_size}), and a frozen ref_policy unless the policy "
            "is a LoRA (peft) model, whose reference is itself with the adapters disabled"
        )
    sampler = SamplerSettings(max_new_tokens=max_new_tokens)
    draw = partial(_sample_and_score, policy, tokenizer, reward_fn, cost_fn, sampler)
    optimizer = torch.optim.Adam(_trainable(policy), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    buffer: deque[float] = deque(maxlen=buffer_size)
    log_lambda, history = math.log(lambda_init), []
    bar = tqdm(range(steps), desc="reinforce-lagrangian", leave=False, disable=None)
    for step in bar:
        index = torch.randperm(len(prompts), generator=generator)[:batch_size].tolist()
        batch = [prompts[i] for i in index]
        samples, r, c = draw(batch, num_samples=2, seed=_derive(seed, 3, step))
        buffer.extend(c.flatten().tolist())
        mu, sigma = _buffer_moments(buffer)
        lam = math.exp(log_lambda)
        penalised = r - lam * _surrogate_cost(c, mu, sigma, k_pessimism)
        kl = _policy_step(
            policy, ref_policy, tokenizer, batch, samples, optimizer, penalised=penalised, beta=beta
        )
        upper = mu + k_pessimism * sigma
        log_lambda = _update_log_lambda(log_lambda, upper - cost_threshold, lr=lambda_lr)
        history.append(
            LagrangianStep(step, float(r.mean()), float(c.mean()), upper, lam, float(kl.mean()))
        )
        bar.set_postfix(cost=f"{float(c.mean()):.2f}", ub=f"{upper:.2f}", lam=f"{lam:.3g}")
    return ReinforceResult(tuple(history), math.exp(log_lambda), sampler)


def _surrogate_cost(c: Tensor, mu: float, sigma: float, k: float) -> Tensor:
    """``c' = c + k (c^2 - 2 c mu) / (2 sigma)`` (Chittepu et al. 2025, reference code).

    Why: ``grad sigma = grad(E[c^2] - mu^2) / (2 sigma) = E[(c^2 - 2 mu c) grad log pi] / (2 sigma)``
    by the score-function identity, so REINFORCE with ``c'`` as the cost follows the gradient of
    ``mu + k sigma``, the pessimistic bound, rather than of the mean alone.
    """
    return c + k * (c.square() - 2.0 * c * mu) / (2.0 * sigma)


def _update_log_lambda(log_lambda: float, violation: float, *, lr: float) -> float:
    """``log lambda += lr * lambda * (UB - tau)`` (Chittepu et al. 2025, reference code).

    Gradient ascent on the Lagrangian in ``log lambda``: lambda stays positive, and the step is
    relative, so lambda grows geometrically while the bound is violated and decays once it holds.
    """
    updated = log_lambda + lr * math.exp(log_lambda) * violation
    return min(max(updated, _LOG_LAMBDA_RANGE[0]), _LOG_LAMBDA_RANGE[1])


def _buffer_moments(buffer: deque[float]) -> tuple[float, float]:
    values = np.asarray(buffer, dtype=float)
    sigma = float(values.std(ddof=1)) if values.size > 1 else 0.0
    # A floor on sigma: with identical costs in the buffer the surrogate would divide by zero.
    return float(values.mean()), max(sigma, 1e-6)


def _policy_step(
    policy: nn.Module,
    ref_policy: nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    samples: list[list[str]],
    optimizer: torch.optim.Optimizer,
    *,
    penalised: Tensor,
    beta: float,
) -> Tensor:
    """One REINFORCE step on the return ``penalised - beta KL`` with a leave-one-out baseline.

    ``penalised`` is ``r - lambda c'`` per sample, ``[B, 2]``; returns the KL estimates ``[B, 2]``.
    """
    flat_prompts = [p for p in prompts for _ in range(2)]
    flat_responses = [y for pair in samples for y in pair]
    with torch.no_grad():
        if ref_policy is None:
            with policy.disable_adapter():
                ref = sequence_logprobs(policy, tokenizer, flat_prompts, flat_responses)
        else:
            ref = sequence_logprobs(ref_policy, tokenizer, flat_prompts, flat_responses)
    was_training = policy.training
    policy.train()
    logp = sequence_logprobs(policy, tokenizer, flat_prompts, flat_responses).view(-1, 2)
    # The per-sample KL estimate enters the return as a detached reward: its expected score-function
    # gradient is already the gradient of KL(pi_theta || pi_ref).
    kl = (logp.detach() - ref.view(-1, 2).to(logp)).double()
    ret = penalised - beta * kl
    advantage = (ret - ret.flip(-1)).to(logp)  # leave-one-out: the other sample is the baseline
    loss = -(advantage * logp).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    policy.train(was_training)
    return kl
