"""The align stage for a language-model policy (``policy.method: distill``; the on-policy
``reinforce_lagrangian`` shares everything here but its training, :mod:`.lm_reinforce`).

Rounds of HC-RLHF tilting distilled into the LM (DESIGN.md, "Optimisers for step 1"): each round
samples K responses per candidate prompt from the *current* LM with the deployment sampler,
scores them with the run's DP reward/cost (and group) models, tilts them with the same step-1
solver and MaxMin weights as the best-of-K path (:func:`~safealign.constraints.align.optimize_policy`;
uniform reference weights, since the candidates were drawn from that LM) and distils the tilt
into LoRA adapters by weighted SFT. A last draw from the final LM gives step 1's verdict on the
LM itself: its pessimistic bound (the same :func:`~safealign.constraints.bounds.anticipated_bound`)
must meet ``cost_threshold``, else the answer is NSF without a safety test.

Everything is cached in the run directory: ``lm/round-R/candidates.json`` (samples, their
log-probabilities under the LM that drew them) and ``lm/round-R/adapter/`` after each round, so
an interrupted run resumes where it stopped. The released policy is ``policy/``, a PEFT adapter
directory with the certified ``generation_config.json``. Only the DP models and public prompts
enter, so the LM is post-processing and spends no privacy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from safealign._atomic import atomic_write_text
from safealign.config import to_plain
from safealign.constraints.align import AlignResult, Scorers, optimize_policy, score_candidates
from safealign.constraints.attempts import attempt_safety
from safealign.constraints.bounds import anticipated_bound
from safealign.constraints.candidates import Candidates, candidates_from_texts
from safealign.constraints.group_rewards import normalize_group_rewards
from safealign.constraints.hc_rlhf import metric_range
from safealign.constraints.lm_policy import distill
from safealign.constraints.tilting import metric_costs
from safealign.models.causal import SamplerSettings, add_lora, generate, sequence_logprobs
from safealign.models.policy_artifact import LMPolicy, save_policy_artifact
from safealign.privacy.training import PrivacyReceipt
from safealign.run.lm_base import (
    BaseModel,
    _derive,
    load_adapter_weights,
    load_base,
    prepare_base,
)
from safealign.run.lm_reinforce import reinforce_adapter
from safealign.run.models import train_models
from safealign.run.paths import ADAPTER_DIR, CANDIDATES_FILE, POLICY_DIR
from safealign.run.policy_file import FROM_POLICY_LM, PolicyFile
from safealign.run.workspace import Workspace, say

_CACHE_KIND = "safealign.lm_candidates"


@dataclass(frozen=True)
class LMAlignment:
    """What :func:`align_lm` produced; ``aligned`` is the last round's tilt (its scorers carry
    the MaxMin weights)."""

    policy_file: PolicyFile
    aligned: AlignResult
    receipts: list[PrivacyReceipt]
    base: BaseModel


def sampler_of(ws: Workspace) -> SamplerSettings:
    s = ws.config.policy.sampler
    return SamplerSettings(s.max_new_tokens, float(s.temperature), float(s.top_p))


def align_lm(ws: Workspace, *, progress: bool = True) -> LMAlignment:
    """Tilt-and-distil rounds (or REINFORCE-Lagrangian, :mod:`~safealign.run.lm_reinforce`) into
    LoRA adapters of ``policy.model``; writes ``policy/`` and returns the policy file content
    (the caller writes ``policy.json``)."""
    config, paths = ws.config, ws.paths
    pc = config.policy
    base = prepare_base(ws, progress=progress)  # public data only: before any privacy is spent
    models = train_models(ws, progress=progress)
    model, tokenizer = load_base(base, seed=config.seed)
    model = add_lora(model, pc.lora, seed=config.seed)
    sampler, prompts = sampler_of(ws), list(ws.splits.candidate.prompts)
    how = (
        f"{pc.distill.rounds} rounds of sample → pessimistic tilt → distil"
        if pc.method == "distill"
        else f"{pc.reinforce.steps} REINFORCE-Lagrangian steps"
    )
    say(progress, f"[4/6] policy: {how} into LoRA adapters of {base.name} (HC-RLHF step 1)")
    aligned = None
    rounds = pc.distill.rounds if pc.method == "distill" else 1
    with ws.embedding_cache():
        for index in tqdm(range(rounds), desc="rounds", leave=False, disable=None):
            folder = paths.lm_round(index)
            cands = _candidates(model, tokenizer, prompts, sampler, folder, ws, seed_tag=index)
            aligned = _tilt(ws, cands, models.scorers, index)
            if pc.method == "reinforce_lagrangian":  # round 0 gives the MaxMin weights only
                reinforce_adapter(ws, model, tokenizer, prompts, aligned.scorers,
                                  folder=paths.lm_round("reinforce") / ADAPTER_DIR)  # fmt: skip
                continue
            if (folder / ADAPTER_DIR / "adapter_model.safetensors").is_file():
                load_adapter_weights(model, folder / ADAPTER_DIR)  # resumed: this round already ran
                continue
            q = _weights(ws, cands, aligned)
            say(progress, _round_line(ws, index, cands, aligned, q))
            d = pc.distill
            distill(model, tokenizer, cands.prompts, cands.responses, q, lr=d.lr, epochs=d.epochs,
                    batch_size=d.batch_size, seed=_derive(config.seed, 0xD15, index))  # fmt: skip
            model.save_pretrained(folder / ADAPTER_DIR)
        final = _candidates(model, tokenizer, prompts, sampler, paths.lm_round("final"), ws,
                            seed_tag=rounds)  # fmt: skip
        scorers = aligned.scorers
        scored = score_candidates(final, scorers)
    adapter_sha = save_policy_artifact(
        model, tokenizer, sampler, paths.policy_dir, base_name_or_path=str(base.path.resolve())
    )
    policy = LMPolicy(
        base_model=base.name,
        base_dir=base.recorded_dir(ws.out),
        base_sha256=base.sha256,
        adapter_dir=POLICY_DIR,
        adapter_sha256=adapter_sha,
        sampler=sampler,
        seed=_derive(config.seed, 0xCE57),  # the safety test's draw: no training stream
    )
    selection, reason, feasible = _final_selection(ws, scored, aligned)
    group_rewards = _group_rewards(ws, scored, scorers)
    policy_file = PolicyFile(
        policy=policy if feasible else None,
        reason=reason,
        selection=selection,
        safety=_plain(to_plain(config.safety)),
        group_weights=aligned.group_weights,
        group_rewards=group_rewards,
        models=models.dirs,
        candidates={
            "source": FROM_POLICY_LM,
            "reference_sampler": {
                "source": "the policy LM itself, each round",
                "num_candidates": pc.num_candidates,
            },  # fmt: skip
            "rounds": rounds,
            "num_prompts": len(prompts),
        },
        data=ws.data_record(),
    )
    return LMAlignment(policy_file, aligned, models.receipts, base)


# --- internals ------------------------------------------------------------------------------


def _candidates(model, tokenizer, prompts, sampler, folder: Path, ws: Workspace, *, seed_tag: int):
    """K samples per prompt from the current LM (cached in ``folder``), with uniform weights."""
    k, seed = ws.config.policy.num_candidates, _derive(ws.config.seed, 0x5A3, seed_tag)
    key = {"prompts": len(prompts), "num_candidates": k, "sampler": sampler.to_dict(), "seed": seed}
    cached = _read_cache(folder / CANDIDATES_FILE, key, prompts)
    if cached is None:
        responses = generate(model, tokenizer, prompts, num_samples=k, seed=seed,
                             batch_size=ws.config.policy.sampler.batch_size, **sampler.to_dict())  # fmt: skip
        flat_p = [p for p in prompts for _ in range(k)]
        with torch.no_grad():
            logp = sequence_logprobs(model, tokenizer, flat_p, [y for r in responses for y in r])
        logprobs = logp.double().view(len(prompts), k).tolist()
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"prompt": p, "responses": list(r), "logprobs": lp}
                for p, r, lp in zip(prompts, responses, logprobs, strict=True)]  # fmt: skip
        text = json.dumps({"kind": _CACHE_KIND, **key, "rows": rows}, sort_keys=True)
        atomic_write_text(folder / CANDIDATES_FILE, text + "\n")
        cached = responses
    # The candidates were drawn from the LM being tilted: uniform reference weights (log p = 0).
    return candidates_from_texts(prompts, cached, source="policy LM")


def _read_cache(path: Path, key: dict, prompts: list[str]) -> list[list[str]] | None:
    """The cached responses when ``path`` holds samples drawn exactly as ``key`` says."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("kind") != _CACHE_KIND:
        return None
    if any(obj.get(name) != value for name, value in key.items()):
        return None
    rows = obj.get("rows")
    if not isinstance(rows, list) or [r.get("prompt") for r in rows] != prompts:
        return None
    return [list(r["responses"]) for r in rows]


def _tilt(ws: Workspace, cands: Candidates, scorers: Scorers, index: int) -> AlignResult:
    config = ws.config
    return optimize_policy(
        cands,
        scorers,
        policy=config.policy,
        safety=attempt_safety(config.safety),  # step 1 anticipates the attempt's confidence
        groups=config.groups,
        n_safety=ws.splits.safety.num_prompts,
        seed=config.seed,
        reference_sampler={"source": "policy LM", "round": index},
    )


def _weights(ws: Workspace, cands: Candidates, aligned: AlignResult) -> torch.Tensor:
    """The tilt ``q [N, K]`` to distil; when no lambda meets the bound, its ``lambda -> inf``
    limit (each prompt's cheapest candidates by the metric, reward-tilted): the safest step."""
    scored = score_candidates(cands, aligned.scorers)
    policy = aligned.selection.policy
    if policy is not None:
        return policy.probabilities(scored.rewards, scored.costs, log_p=scored.log_p)
    safety = ws.config.safety
    metric = metric_costs(scored.costs, safety.metric, cost_range=metric_range(safety))
    cheapest = metric <= metric.min(-1, keepdim=True).values
    return torch.softmax(
        torch.where(cheapest, scored.rewards / ws.config.policy.beta, -math.inf), -1
    )


def _round_line(ws: Workspace, index: int, cands: Candidates, aligned: AlignResult, q) -> str:
    """One progress line per round: the LM's mean metric, the tilt's lambda and its metric."""
    scored = score_candidates(cands, aligned.scorers)
    safety = ws.config.safety
    metric = metric_costs(scored.costs, safety.metric, cost_range=metric_range(safety))
    lam = aligned.selection.lambda_
    return (
        f"      round {index + 1}: the LM's samples {safety.metric} {float(metric.mean()):.3f}; "
        f"tilt lambda {'inf' if lam is None else f'{lam:.3g}'} -> {float((q * metric).sum(-1).mean()):.3f}"
    )


def _final_selection(ws: Workspace, scored, aligned: AlignResult) -> tuple[dict, str, bool]:
    """Step 1's verdict on the final LM: the pessimistic bound of its per-prompt expected metric
    (Monte Carlo over its own K samples) against ``cost_threshold``."""
    safety = attempt_safety(ws.config.safety)
    metric = metric_costs(scored.costs, safety.metric, cost_range=metric_range(safety))
    per_prompt = metric.mean(-1)
    n_s = ws.splits.safety.num_prompts
    bound = anticipated_bound(per_prompt, n_safety=n_s, confidence=safety.confidence,
                              bound=safety.resolved_bound, c1=safety.c1, c2=safety.c2,
                              value_range=metric_range(safety))  # fmt: skip
    mean, std = float(per_prompt.mean()), float(per_prompt.std(correction=1))
    feasible = bool(bound <= safety.cost_threshold)
    last = aligned.selection
    reason = "" if feasible else (
        f"the distilled LM's step-1 bound {bound:.4g} on its own samples exceeds "
        f"cost_threshold {safety.cost_threshold:g}: no safety test is run"
    )  # fmt: skip
    selection = {
        "method": ws.config.policy.method,
        "metric": safety.metric,
        "feasible": feasible,
        "lambda": last.lambda_,
        "pessimism_k": (bound - mean) / std if std > 0 else 0.0,
        "selection_bound": bound,
        "cost_threshold": safety.cost_threshold,
        "mean_cost": mean,
        "std_cost": std,
        "expected_reward": float(scored.rewards.mean()),
        "n_opt": int(per_prompt.shape[0]),
        "n_safety": n_s,
        "requires_safety_test": True,
    }
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in selection.items()}, reason, feasible  # fmt: skip


def _group_rewards(ws: Workspace, scored, scorers: Scorers) -> dict[str, float] | None:
    """Each group's mean normalised model reward of the final LM's own samples."""
    if scored.group_rewards is None:
        return None
    normalized = normalize_group_rewards(scored.group_rewards, mode=ws.config.groups.normalize,
                                         beta=ws.config.policy.beta, log_p=scored.log_p)  # fmt: skip
    return {g: float(normalized[i].mean()) for i, g in enumerate(scorers.group_rewards)}


def _plain(value):
    return json.loads(json.dumps(value, sort_keys=True))
