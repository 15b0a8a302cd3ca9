"""Release-inventory entries of the policy: policy.json and an LM policy's files
(:mod:`safealign.audits.inventory`).
"""

from __future__ import annotations

from safealign.audits._inventory_base import (
    _COMMITMENT,
    _CONFIG,
    _DIGEST,
    _MODELS_ON_PUBLIC,
    _N_SAFETY,
    _PUBLIC_SPLIT,
    _TEXT,
    ReleasedFile,
    _e,
)

POLICY = (
    _e("kind", "public", _TEXT),
    _e("version", "public", _TEXT),
    _e("reason", "post_processing", _MODELS_ON_PUBLIC),
    _e("policy.lambda", "post_processing", _MODELS_ON_PUBLIC),
    _e("policy.group_weights.*", "post_processing", _MODELS_ON_PUBLIC),  # best-of-K over an LM
    _e("policy.scoring_models.*.sha256", "post_processing", _DIGEST),
    _e("policy.**", "public", "the selected policy's settings: configuration"),
    _e("selection.n_safety", "public", _N_SAFETY),
    _e("selection.n_opt", "public", "the candidate split's prompt count: declared public"),
    _e("selection.cost_threshold", "public", _CONFIG),
    _e("selection.method", "public", _CONFIG),
    _e("selection.metric", "public", _CONFIG),
    _e("selection.*", "post_processing", _MODELS_ON_PUBLIC),
    _e("safety.**", "public", _CONFIG),
    _e("groups.weights.*", "post_processing", _MODELS_ON_PUBLIC),
    _e("groups.rewards.*", "post_processing", _MODELS_ON_PUBLIC),
    _e("groups.cost_lambdas.*", "post_processing", _MODELS_ON_PUBLIC),
    _e("models.**", "public", "model directory names: code"),
    _e("candidates.**", "public", "where the public candidates came from (sampler or file)"),
    _e("data.dataset", "public", "the dataset's name: configuration"),
    _e("data.dataset_fingerprint", "public", _COMMITMENT),
    _e("data.split_fingerprints.train", "public", _COMMITMENT),
    _e("data.split_fingerprints.eval", "public", _COMMITMENT),
    _e("data.split_fingerprints.*", "public", _PUBLIC_SPLIT),
    _e("data.n_safety", "public", _N_SAFETY),
)

_LM_BASE = "the policy LM's base: built in code, SFT on public synthetic text, or a public model"
_LM_TILT = "the policy LM distilled from DP-model scores of its own samples on public prompts"

#: An LM policy's files (policy.method: distill), for the inventory to list before
#: "*.safetensors": its weights are no DP-SGD output. The base is public (built in code, SFT on
#: public synthetic text, or the user's pretrained model); the adapter and the cached candidates
#: are the LM tilted by the DP models' scores of public prompts and of the LM's own samples:
#: post-processing.
LM_FILES = (
    ReleasedFile("policy LM base", "base/*", (_e("**", "public", _LM_BASE),), False),
    ReleasedFile("policy LM base", "sft/*", (_e("**", "public", _LM_BASE),), False),
    ReleasedFile("policy LM adapter", "policy/*", (_e("**", "post_processing", _LM_TILT),), False),
    ReleasedFile("policy LM rounds", "lm/*", (_e("**", "post_processing", _LM_TILT),), False),
)
