"""Per-group rewards of an LM policy's safety-test responses, for the certificate's ``groups``.

A distilled or REINFORCE-trained LM is tested on one response per safety prompt. Bradley-Terry
group rewards have no fixed zero, so each group's reward of that response is normalised per
prompt as alignment normalises candidates (``groups.normalize``), against the *base* LM: K fresh
base samples per safety prompt are the reference distribution (uniform weights), the response a
zero-weight extra candidate. ``reference`` then reads "better than the base model by", ``regret``
"short of the group's own KL-regularised optimum over the base model's samples by". The base
samples only set each prompt's zero; the cost and the population test use the response alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from safealign.constraints.align import Scorers
from safealign.constraints.group_rewards import normalize_group_rewards
from safealign.models.causal import SamplerSettings, generate


def base_normalized_group_rewards(
    base: tuple[nn.Module, PreTrainedTokenizerBase],
    prompts: Sequence[str],
    responses: Sequence[str],
    scorers: Scorers,
    *,
    num_samples: int,
    sampler: SamplerSettings,
    seed: int,
    batch_size: int,
    mode: str,
    beta: float,
) -> dict[str, Tensor]:
    """Each group's normalised reward of ``responses[i]`` (the policy's response to
    ``prompts[i]``), ``{group: [n]}``, against ``num_samples`` base-LM samples per prompt.

    Args:
        base: The base LM and its tokenizer (the policy's reference).
        prompts: ``[n]`` safety prompts.
        responses: ``[n]`` the policy's responses, one per prompt.
        scorers: With ``group_rewards`` (one model per group).
        num_samples: Base samples per prompt (K).
        sampler: The deployment sampler, used for the base samples too.
        seed: Seed of the base samples.
        batch_size: Prompts per generate call.
        mode: ``groups.normalize`` (``reference`` or ``regret``).
        beta: The policy's KL coefficient (``regret``).
    """
    model, tokenizer = base
    refs = generate(model, tokenizer, list(prompts), num_samples=num_samples, seed=seed,
                    batch_size=batch_size, **sampler.to_dict())  # fmt: skip
    n, k = len(prompts), num_samples
    flat_p = [p for p in prompts for _ in range(k)]
    flat_y = [y for row in refs for y in row]
    raw = torch.stack(
        [
            torch.cat(
                [
                    model_.score(flat_p, flat_y).double().view(n, k),
                    model_.score(list(prompts), list(responses)).double().view(n, 1),
                ],
                dim=1,
            )
            for model_ in scorers.group_rewards.values()
        ]
    )  # [G, n, K + 1]: the base samples, then the response
    log_p = torch.zeros(n, k + 1, dtype=torch.float64)
    log_p[:, k] = -math.inf  # the response is not part of the reference distribution
    normalized = normalize_group_rewards(raw, mode=mode, beta=beta, log_p=log_p)
    return {g: normalized[i, :, k] for i, g in enumerate(scorers.group_rewards)}
