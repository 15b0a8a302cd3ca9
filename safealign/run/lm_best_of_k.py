"""Best-of-K over a language model (``policy.method: best_of_k`` with ``policy.model`` set).

The deployed policy is the base LM, untrained, plus HC-RLHF's best-of-K resampler (DESIGN.md,
"Optimisers for step 1"): for a prompt, the LM draws K responses with the recorded sampler
settings, the run's DP cost and reward (or group reward) models score them, and one is drawn
with probability ``∝ exp((r - λ·metric(c)) / β)`` (uniform reference weights: the candidates
are the LM's own samples). β, λ and the MaxMin weights come from the same
:func:`~safealign.constraints.align.optimize_policy` as the resampler over the reference sampler,
fitted on K LM samples per candidate prompt (cached in ``lm/round-best-of-k/``).

The policy is :class:`~safealign.models.policy_artifact.LMBestOfKPolicy`: the base model's and
every scoring model's directory and SHA-256, the sampler, K, β, λ, the metric, the group weights
and the two seeds of the safety test (its K samples per prompt, and the resampling draw).
Certification (:func:`deploy`, then :func:`safealign.run.certification.best_of_k_test`) and
``safealign generate`` (:func:`generate_best_of_k`) sample exactly that artefact: every recorded
directory is hash-checked first, and a changed file is refused. ``policy/generation_config.json``
holds the base LM's certified sampler in Hugging Face form. Only the DP models and public prompts
enter, so nothing here spends privacy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from safealign.config import to_plain
from safealign.constraints.align import Scorers, score_candidates
from safealign.constraints.candidates import Candidates, candidates_from_texts
from safealign.constraints.tilting import TiltedPolicy
from safealign.errors import ConfigError, DataError
from safealign.models.causal import generate
from safealign.models.policy_artifact import LMBestOfKPolicy, save_generation_dir, tree_sha256
from safealign.models.scalar import load_scoring_model
from safealign.run.lm_align import LMAlignment, _candidates, _tilt, sampler_of
from safealign.run.lm_base import BaseModel, _derive, base_path, load_base, prepare_base
from safealign.run.models import train_models
from safealign.run.policy_file import FROM_POLICY_LM, ModelDirs, policy_file_from
from safealign.run.workspace import Workspace, say

#: Where alignment caches the K LM samples per candidate prompt (``lm/round-best-of-k/``).
ROUND = "best-of-k"


def align_lm_best_of_k(ws: Workspace, *, progress: bool = True) -> LMAlignment:
    """HC-RLHF step 1 for best-of-K over ``policy.model``: K LM samples per candidate prompt,
    scored by the DP models, tilted by the same solver and MaxMin weights as the resampler path;
    returns the policy file content (the caller writes ``policy.json``)."""
    config, paths = ws.config, ws.paths
    k = config.policy.num_candidates
    base = prepare_base(ws, progress=progress)  # public data only: before any privacy is spent
    models = train_models(ws, progress=progress)
    model, tokenizer = load_base(base, seed=config.seed)
    sampler, prompts = sampler_of(ws), list(ws.splits.candidate.prompts)
    say(progress, f"[4/6] policy: best-of-{k} over {base.name}'s samples, pessimistic tilt "
        "(HC-RLHF step 1)")  # fmt: skip
    with ws.embedding_cache():
        cands = _candidates(model, tokenizer, prompts, sampler, paths.lm_round(ROUND), ws,
                            seed_tag=0)  # fmt: skip
        aligned = _tilt(ws, cands, models.scorers, 0)
    tilted, policy = aligned.selection.policy, None
    if tilted is not None:
        save_generation_dir(sampler, tokenizer, paths.policy_dir)
        weights = aligned.group_weights or {}
        policy = LMBestOfKPolicy(
            base_model=base.name,
            base_dir=base.recorded_dir(ws.out),
            base_sha256=base.sha256,
            sampler=sampler,
            num_candidates=k,
            beta=tilted.beta,
            lambda_=tilted.lambda_,
            metric=tilted.metric,
            scoring_models=_scoring_models(ws.out, models.dirs),
            group_weights=tuple(weights.items()),
            seed=_derive(config.seed, 0xCE57),  # the safety test's draws: no alignment stream
            resample_seed=_derive(config.seed, 0xCE58),
        )
    policy_file = policy_file_from(
        aligned,
        safety=to_plain(config.safety),
        models=models.dirs,
        candidates={
            "source": FROM_POLICY_LM,
            "reference_sampler": {"source": f"the base LM {base.name}", "num_candidates": k},
            "num_prompts": len(prompts),
        },
        data=ws.data_record(),
    )
    return LMAlignment(replace(policy_file, policy=policy), aligned, models.receipts, base)


@dataclass(frozen=True)
class DeployedBestOfK:
    """A best-of-K LM policy loaded for sampling: its base LM and scoring models, hash-checked."""

    policy: LMBestOfKPolicy
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    scorers: Scorers
    batch_size: int

    @property
    def tilted(self) -> TiltedPolicy:
        """The resampler over each prompt's K samples (uniform reference weights)."""
        p = self.policy
        return TiltedPolicy(beta=p.beta, lambda_=p.lambda_, num_candidates=p.num_candidates,
                            metric=p.metric, seed=p.resample_seed)  # fmt: skip

    def candidates(self, prompts: Sequence[str], *, seed: int) -> Candidates:
        """K samples per prompt from the base LM with the recorded sampler (seeded)."""
        return lm_candidates(self.model, self.tokenizer, prompts, policy=self.policy, seed=seed,
                             batch_size=self.batch_size)  # fmt: skip


def deploy(out: Path, policy: LMBestOfKPolicy, *, batch_size: int = 64) -> DeployedBestOfK:
    """Load the base LM and the scoring models ``policy`` records, after checking every
    directory's SHA-256 (:func:`check_deployed`)."""
    base, models = check_deployed(out, policy)
    model, tokenizer = load_base(BaseModel(policy.base_model, base, policy.base_sha256), seed=0)
    loaded = {role: load_scoring_model(path) for role, path in models.items()}
    groups = {r.removeprefix("group:"): m for r, m in loaded.items() if r.startswith("group:")}
    scorers = Scorers(
        cost=loaded["cost"],
        reward=loaded.get("reward"),
        group_rewards=groups or None,
        group_weights=dict(policy.group_weights) or None,
    )
    return DeployedBestOfK(policy, model, tokenizer, scorers, batch_size)


def check_deployed(out: Path, policy: LMBestOfKPolicy) -> tuple[Path, dict[str, Path]]:
    """The base directory and each scoring model's directory, checked against their hashes.

    Raises:
        DataError: a directory is missing, or its files are not the ones recorded at alignment
            (best-of-K with other models is another policy, which no certificate covers).
    """
    base = Path(policy.base_dir)
    base = base if base.is_absolute() else out / base
    _check_dir(base, policy.base_sha256, "base model")
    models = {}
    for role, where, recorded in policy.scoring_models:
        path = out / where
        _check_dir(path, recorded, f"{role} scoring model")
        models[role] = path
    return base, models


def check_matches_config(policy: LMBestOfKPolicy, ws: Workspace, *, path: Path) -> None:
    """Refuse to certify a best-of-K policy that the config would not have aligned: another K,
    sampler, β, base model or safety-test seed (an edited ``policy.json``, e.g. a seed shopped
    for a pass). λ and the group weights are step 1's output: a changed value is another policy,
    which the certification log counts as another attempt.

    Raises:
        ConfigError: listing every mismatch, with both values.
    """
    config = ws.config
    expected = {
        "num_candidates": config.policy.num_candidates,
        "generation": sampler_of(ws).to_dict(),
        "beta": config.policy.beta,
        "base_model": config.policy.model,
        "seed": _derive(config.seed, 0xCE57),
        "resample_seed": _derive(config.seed, 0xCE58),
    }
    recorded = {
        "num_candidates": policy.num_candidates,
        "generation": policy.sampler.to_dict(),
        "beta": policy.beta,
        "base_model": policy.base_model,
        "seed": policy.seed,
        "resample_seed": policy.resample_seed,
    }
    problems = [
        f"policy.json's {name} is {recorded[name]!r}, the config aligns {value!r}: certify the "
        "policy the config aligned (align again), or the config it was aligned with"
        for name, value in expected.items()
        if recorded[name] != value
    ]
    if problems:
        raise ConfigError(problems, source=str(path))


def lm_candidates(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    policy: LMBestOfKPolicy,
    seed: int,
    batch_size: int,
) -> Candidates:
    """``policy.num_candidates`` samples per prompt from ``model`` with ``policy.sampler``."""
    responses = generate(model, tokenizer, list(prompts), num_samples=policy.num_candidates,
                         seed=seed, batch_size=batch_size, **policy.sampler.to_dict())  # fmt: skip
    return candidates_from_texts(tuple(prompts), responses, source="policy LM")


def truth_candidates(ws: Workspace, prompts: Sequence[str]) -> Candidates:
    """K samples per prompt from the run's base LM (for the synthetic world's truth: never the
    sealed safety prompts), with the deployment sampler."""
    model, tokenizer = load_base(BaseModel("base", base_path(ws), ""), seed=ws.config.seed)
    config = ws.config
    pc = config.policy
    responses = generate(model, tokenizer, list(prompts), num_samples=pc.num_candidates,
                         seed=_derive(config.seed, 0x7207), batch_size=pc.sampler.batch_size,
                         **sampler_of(ws).to_dict())  # fmt: skip
    return candidates_from_texts(tuple(prompts), responses, source="policy LM")


def generate_best_of_k(
    out: Path, policy: LMBestOfKPolicy, prompts: Sequence[str], *, seed: int
) -> list[dict]:
    """One response per prompt from the deployed best-of-K policy: K LM samples, scored by the
    recorded (hash-checked) models, one drawn by the recorded tilt; reproducible in ``seed``."""
    deployed = deploy(out, policy)
    cands = deployed.candidates(prompts, seed=seed)
    scored = score_candidates(cands, deployed.scorers)
    generator = torch.Generator().manual_seed(seed)
    picks = deployed.tilted.sample(scored.rewards, scored.costs, generator=generator,
                                   log_p=scored.log_p)  # fmt: skip
    settings = {"generation": policy.sampler.to_dict(), "num_candidates": policy.num_candidates,
                "beta": policy.beta, "lambda": policy.lambda_}  # fmt: skip
    return [{"prompt": p, "response": row[int(i)], "sampler": settings}
            for p, row, i in zip(prompts, cands.responses, picks, strict=True)]  # fmt: skip


# --- internals ------------------------------------------------------------------------------


def _scoring_models(out: Path, dirs: ModelDirs) -> tuple[tuple[str, str, str], ...]:
    roles = [("cost", dirs.cost)]
    if dirs.group_rewards is None:
        roles.append(("reward", dirs.reward))
    else:
        roles.extend((f"group:{name}", where) for name, where in dirs.group_rewards)
    return tuple((role, where, tree_sha256(out / where)) for role, where in roles)


def _check_dir(path: Path, recorded: str, what: str) -> None:
    if not path.is_dir():
        raise DataError(
            f"the policy's {what} directory is missing: best-of-K deploys the LM with the models "
            "it was aligned with; restore it, or align again",
            path=str(path),
        )
    actual = tree_sha256(path)
    if actual != recorded:
        raise DataError(
            f"the {what}'s files changed since alignment (SHA-256 {actual[:12]}…, policy.json "
            f"records {recorded[:12]}…): it is not the policy that was aligned; align again",
            path=str(path),
        )
