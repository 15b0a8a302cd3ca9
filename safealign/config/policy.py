"""``policy:``: how the released policy is optimised, and, for a language-model policy, which
model, how it is sampled and how it is trained (:func:`policy_config_problems`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from safealign._typed import doc
from safealign.config._rules import _at_least, _positive
from safealign.config.model import LoraConfig

#: Built-in causal LMs: a random tiny GPT-2 over the world's template vocabulary, and that GPT-2
#: after plain SFT on the synthetic world's reference responses to freshly generated prompts.
TINY_POLICY_MODEL, WORLD_SFT_MODEL = "tiny-gpt2", "world-sft"
BUILTIN_POLICY_MODELS = (TINY_POLICY_MODEL, WORLD_SFT_MODEL)
#: The methods whose released policy is the language model itself.
LM_METHODS = ("distill", "reinforce_lagrangian")
#: Former names of ``policy.method`` values: refused, naming the new one (one name per method).
RENAMED_METHODS = {"tilting": "best_of_k"}


def renamed_method_problem(data: object) -> str | None:
    """The problem of a config whose ``policy.method`` is a former name (checked before typing,
    so that it is the one message the user reads), or None."""
    policy = data.get("policy") if isinstance(data, dict) else None
    method = policy.get("method") if isinstance(policy, dict) else None
    if not isinstance(method, str) or method not in RENAMED_METHODS:
        return None
    return (
        f"policy.method: {method!r} was renamed {RENAMED_METHODS[method]!r} (the same method); "
        f"write policy.method: {RENAMED_METHODS[method]}"
    )


def _top_p(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def _temperature(v: float) -> str | None:
    return None if math.isfinite(v) and v >= 0 else "must be >= 0 (0 is greedy decoding)"


@dataclass(frozen=True)
class SamplerConfig:
    """The deployment sampler of an LM policy: what alignment samples and certification covers."""

    temperature: float = field(
        default=1.0, metadata=doc("Softmax temperature; 0 is greedy.", _temperature)
    )
    top_p: float = field(
        default=1.0, metadata=doc("Nucleus sampling mass; 1 keeps every token.", _top_p)
    )
    max_new_tokens: int = field(
        default=96,
        metadata=doc("Cap on generated tokens per response (eos included).", _at_least(1)),
    )
    batch_size: int = field(
        default=64,
        metadata=doc("Prompts per generate call (speed only, not the distribution).", _at_least(1)),
    )


@dataclass(frozen=True)
class DistillConfig:
    """``policy.method: distill``: rounds of sample → pessimistic tilt → weighted SFT (LoRA)."""

    rounds: int = field(default=2, metadata=doc("Sample-tilt-distil rounds.", _at_least(1)))
    epochs: int = field(default=2, metadata=doc("Weighted-SFT epochs per round.", _at_least(1)))
    lr: float = field(default=5e-3, metadata=doc("AdamW learning rate of the adapters.", _positive))
    batch_size: int = field(
        default=32, metadata=doc("(prompt, response) pairs per step.", _at_least(1))
    )


@dataclass(frozen=True)
class ReinforceConfig:
    """``policy.method: reinforce_lagrangian``: on-policy REINFORCE with a log-λ dual update."""

    steps: int = field(default=60, metadata=doc("Optimiser steps.", _at_least(1)))
    lr: float = field(default=1e-3, metadata=doc("Adam learning rate of the adapters.", _positive))
    lambda_lr: float = field(default=0.1, metadata=doc("Step size of log λ.", _positive))
    batch_size: int = field(
        default=16, metadata=doc("Prompts per step (two samples each).", _at_least(1))
    )


@dataclass(frozen=True)
class SftConfig:
    """``policy.model: world-sft``: the built-in SFT model, trained in code from the run's seed on
    public synthetic text (fresh prompts of the world's templates, never the dataset's)."""

    num_prompts: int = field(
        default=400, metadata=doc("Fresh world prompts to train on.", _at_least(2))
    )
    responses_per_prompt: int = field(
        default=4, metadata=doc("Reference responses per prompt.", _at_least(1))
    )
    epochs: int = field(default=4, metadata=doc("SFT epochs.", _at_least(1)))
    lr: float = field(default=1e-2, metadata=doc("AdamW learning rate.", _positive))
    n_embd: int = field(default=64, metadata=doc("GPT-2 width.", _at_least(8)))
    n_layer: int = field(default=2, metadata=doc("GPT-2 layers.", _at_least(1)))


@dataclass(frozen=True)
class PolicyConfig:
    method: Literal["best_of_k", "distill", "reinforce_lagrangian"] = field(
        default="best_of_k",
        metadata=doc(
            "'best_of_k': the best-of-K resampler over the reference sampler's candidates, or over "
            "K samples of policy.model (deployed as that LM plus the resampler); "
            "'distill': rounds of sample → pessimistic tilt → weighted SFT into LoRA adapters of "
            "policy.model (the released policy is the LM itself); 'reinforce_lagrangian': on-policy "
            "REINFORCE of policy.model's LoRA adapters under the pessimistic surrogate cost."
        ),
    )
    model: str | None = field(
        default=None,
        metadata=doc(
            "The policy LM: null (the reference sampler, with method best_of_k), 'tiny-gpt2' "
            "(built in code), 'world-sft' (a small GPT-2 SFT-trained in code on the synthetic "
            "world's text; needs data.source: synthetic) or a local Hugging Face causal-LM "
            "directory."
        ),
    )
    beta: float = field(default=0.1, metadata=doc("KL regularisation strength β.", _positive))
    num_candidates: int = field(
        default=16, metadata=doc("Candidates sampled per prompt (K).", _at_least(2))
    )
    sampler: SamplerConfig = field(
        default_factory=SamplerConfig, metadata=doc("LM deployment sampler.")
    )
    distill: DistillConfig = field(default_factory=DistillConfig, metadata=doc("Tilt-and-distil."))
    reinforce: ReinforceConfig = field(
        default_factory=ReinforceConfig, metadata=doc("REINFORCE-Lagrangian.")
    )
    lora: LoraConfig = field(
        default_factory=LoraConfig, metadata=doc("The policy's LoRA adapters.")
    )
    sft: SftConfig = field(default_factory=SftConfig, metadata=doc("The built-in world-sft model."))


def policy_config_problems(
    policy: PolicyConfig,
    *,
    data_source: str,
    safety_unit: str = "response",
    designated: bool = False,
    labelled: bool = False,
) -> list[str]:
    """Constraints within ``policy`` and with the data source, the safety unit, a designated
    safety set (``safety.prompts``) and labelled certification (``safety.labels``), at load
    time."""
    problems, lm = [], policy.method in LM_METHODS
    if designated and not lm:
        # The reference sampler (the world's, or the data's own responses) only has responses
        # for its own prompts: it cannot answer a prompt file's.
        problems.append(
            "safety.prompts: a designated safety set is answered by the released policy, which "
            "must sample any prompt: an LM policy (policy.model with policy.method distill or "
            f"reinforce_lagrangian); {policy.method!r} deploys a best-of-K resampler, which "
            + (
                "only has responses for its own prompts"
                if policy.model is None
                else "over an LM is not certified on a designated set yet"
            )
        )
    if lm and safety_unit != "response":
        problems.append(
            f"safety.unit: {safety_unit!r} averages a resampler's K candidates per prompt; an LM "
            "policy is tested on one sampled response per prompt: use 'response'"
        )
    if lm and policy.model is None:
        problems.append(
            f"policy.model: method {policy.method!r} trains a language model; set policy.model "
            f"to {', '.join(BUILTIN_POLICY_MODELS)} or a Hugging Face causal-LM directory"
        )
    sampler = policy.sampler
    if policy.method == "reinforce_lagrangian" and (sampler.temperature, sampler.top_p) != (1, 1):
        problems.append(
            "policy.sampler: 'reinforce_lagrangian' trains on-policy on samples at temperature 1, "
            f"top_p 1 (got {sampler.temperature:g}, {sampler.top_p:g}), so the certified sampler "
            "must be that one; set policy.sampler.temperature: 1 and top_p: 1, or use distill"
        )
    if policy.method == "best_of_k" and policy.model is not None and labelled:
        problems.append(
            "safety.labels: labelled certification of best-of-K over an LM (policy.model set) is "
            "not implemented yet: remove safety.labels, or policy.model for the reference sampler"
        )
    if policy.model == WORLD_SFT_MODEL and data_source != "synthetic":
        problems.append(
            "policy.model: 'world-sft' is trained on the synthetic world's text and its tokenizer "
            f"knows only that vocabulary; it needs data.source: synthetic (got {data_source!r})"
        )
    if policy.model == "":
        problems.append("policy.model: empty; give null, a built-in name or a directory")
    return problems
