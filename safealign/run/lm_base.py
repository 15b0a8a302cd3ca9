"""The base model of an LM policy (``policy.model``): built-in, trained in code, or the user's.

``tiny-gpt2`` is built from the run's seed and saved once in ``base/``; ``world-sft`` is that
GPT-2 after plain SFT on the synthetic world's reference responses, saved once in ``sft/``; any
other value is a local Hugging Face causal-LM directory, used where it is. Either way the base is
named by the SHA-256 of its directory's files (:func:`~safealign.models.policy_artifact.tree_sha256`),
which policy.json and the certificate record.

``world-sft`` trains only on public synthetic text: prompts that a *fresh* world (another seed)
renders from the templates, minus every prompt of the run's own world, so no prompt of the
dataset, of its candidate split or of its sealed safety split is ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from safealign.config import Config
from safealign.config.policy import TINY_POLICY_MODEL, WORLD_SFT_MODEL
from safealign.constraints.lm_policy import distill
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError
from safealign.models.causal import build_tiny_causal_lm, load_causal_lm, policy_device
from safealign.models.policy_artifact import save_model_dir, tree_sha256
from safealign.run.workspace import Workspace, say


@dataclass(frozen=True)
class BaseModel:
    """The policy's base: ``name`` as configured, its directory and its content hash."""

    name: str
    path: Path
    sha256: str

    def recorded_dir(self, root: Path) -> str:
        """The directory as policy.json records it: relative when inside the run directory."""
        try:
            return self.path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return str(self.path.resolve())


def check_policy_model(config: Config) -> None:
    """Refuse a ``policy.model`` directory that cannot hold a causal LM, before anything is spent.

    Raises:
        ConfigError: not a built-in name and not a directory with a ``config.json``.
    """
    name = config.policy.model
    if name is None or name in (TINY_POLICY_MODEL, WORLD_SFT_MODEL):
        return
    if not (Path(name) / "config.json").is_file():
        raise ConfigError(
            f"policy.model: {name!r} is not a Hugging Face model directory (no config.json "
            f"there); give a local directory, {TINY_POLICY_MODEL} or {WORLD_SFT_MODEL}"
        )


def base_path(ws: Workspace) -> Path:
    """Where ``policy.model``'s base lives: ``base/`` or ``sft/`` in the run, or its own directory."""
    name = ws.config.policy.model
    if name == TINY_POLICY_MODEL:
        return ws.paths.lm_base
    return ws.paths.sft if name == WORLD_SFT_MODEL else Path(name)


def prepare_base(ws: Workspace, *, progress: bool = True) -> BaseModel:
    """The policy's base model directory, built or trained once and reused on resume."""
    name, seed, path = ws.config.policy.model, ws.config.seed, base_path(ws)
    check_policy_model(ws.config)
    if name == TINY_POLICY_MODEL and not (path / "config.json").is_file():
        save_model_dir(*build_tiny_causal_lm(seed), path)
    elif name == WORLD_SFT_MODEL and not (path / "config.json").is_file():
        say(progress, "      policy base: SFT of a small GPT-2 on fresh synthetic-world text")
        save_model_dir(*train_world_sft(ws.config, ws.world), path)
    return BaseModel(name, path, tree_sha256(path))


def load_base(base: BaseModel, *, seed: int) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The base LM and its tokenizer, on :func:`~safealign.models.causal.policy_device`."""
    model, tokenizer = load_causal_lm(str(base.path), seed=seed)
    return model.to(policy_device()), tokenizer


def load_adapter_weights(model: nn.Module, folder: Path) -> None:
    """Load a saved round's LoRA weights into ``model`` (a peft model), on its device."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    set_peft_model_state_dict(
        model, {k: v.to(next(model.parameters()).device) for k, v in state.items()}
    )


def sft_texts(config: Config, world: SyntheticWorld) -> tuple[list[str], list[list[str]]]:
    """Public SFT data: fresh world prompts (none of ``world``'s) and reference responses."""
    sft = config.policy.sft
    seed = _derive(config.seed, 0x5F7)
    # A fresh world of the same templates under another seed; twice the prompts, so that enough
    # remain once every prompt of the run's own world is removed.
    space = replace(config.data.synthetic, num_prompts=min(2 * sft.num_prompts, _max_prompts()))
    fresh = SyntheticWorld(space, seed=seed)
    taken = set(world.prompts)
    prompts = [p for p in fresh.prompts if p not in taken][: sft.num_prompts]
    if len(prompts) < 2:
        raise ConfigError(
            "policy.sft.num_prompts: the synthetic world has too few prompts left for SFT once "
            "the dataset's prompts are removed; lower data.synthetic.num_prompts"
        )
    cands = fresh.sample_candidates(prompts, num_candidates=sft.responses_per_prompt, seed=seed)
    return prompts, [list(row) for row in cands.responses]


def train_world_sft(
    config: Config, world: SyntheticWorld | None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The ``world-sft`` base: a GPT-2 (word-level world tokenizer) after plain SFT on
    :func:`sft_texts`, deterministic in the run's seed (CPU)."""
    if world is None:
        raise ConfigError("policy.model: 'world-sft' needs data.source: synthetic")
    sft = config.policy.sft
    prompts, responses = sft_texts(config, world)
    model, tokenizer = build_tiny_causal_lm(
        config.seed, n_embd=sft.n_embd, n_layer=sft.n_layer, n_head=2
    )
    uniform = torch.ones(len(prompts), len(responses[0]))  # plain SFT: every response weight 1
    distill(model, tokenizer, prompts, responses, uniform, lr=sft.lr, epochs=sft.epochs,
            batch_size=32, seed=_derive(config.seed, 0x5F8))  # fmt: skip
    return model.eval(), tokenizer


def _max_prompts() -> int:
    from safealign.data import synthetic_text as text

    space = len(text.OPENERS) * len(text.ASKERS) * len(text.PLACES) * len(text.TOPICS)
    return space // 2


def _derive(seed: int, *tags: int) -> int:
    """An independent 32-bit seed per purpose (streams never overlap)."""
    return int(np.random.SeedSequence([seed, *tags]).generate_state(1)[0])
