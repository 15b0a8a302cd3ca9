"""What both LM optimisers share: sampling and scoring the policy, argument checks, derived seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from safealign.errors import ConfigError
from safealign.models.causal import SamplerSettings, ScoreFn, sample_responses, score_samples


def _sample_and_score(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: ScoreFn,
    cost_fn: ScoreFn,
    sampler: SamplerSettings,
    prompts: Sequence[str],
    *,
    num_samples: int,
    seed: int,
) -> tuple[list[list[str]], Tensor, Tensor]:
    """Samples ``[N][K]`` from ``policy`` with their rewards and costs ``[N, K]`` (float64)."""
    samples = sample_responses(
        policy, tokenizer, prompts, sampler=sampler, num_samples=num_samples, seed=seed
    )
    return (
        samples,
        score_samples(reward_fn, prompts, samples),
        score_samples(cost_fn, prompts, samples),
    )


def _trainable(policy: nn.Module) -> list[nn.Parameter]:
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the policy has no trainable parameters (every requires_grad is False)")
    return params


def _check(*, positive: dict[str, float], non_negative: dict[str, float] | None = None) -> None:
    bad = [f"{name} must be > 0 (got {v!r})" for name, v in positive.items() if not v > 0]
    bad += [
        f"{name} must be >= 0 (got {v!r})" for name, v in (non_negative or {}).items() if not v >= 0
    ]
    if bad:
        raise ConfigError(bad)


def _derive(seed: int, *tags: int) -> int:
    """An independent seed for each (purpose, index): streams never overlap across rounds/steps."""
    return int(np.random.SeedSequence([seed, *tags]).generate_state(1)[0])
