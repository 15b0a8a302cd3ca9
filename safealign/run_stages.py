"""Pieces of ``pipeline.run`` that are not one library call: the reference sampler of a run,
persisted group models, the scorers of a run directory, the NSF certificate of an infeasible
selection, the ledger state and per-group entries for the report, and (synthetic world only) the
released policy's true outcomes; and the single-model stages of the command line
(``train-reward``/``train-cost`` and ``privacy-audit``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from safealign._atomic import atomic_write_text
from safealign.config import Config
from safealign.constraints.align import AlignResult, Scorers, score_candidates
from safealign.constraints.attempts import attempt_safety
from safealign.constraints.candidates import (
    Candidates,
    candidates_from_pairs,
    candidates_from_texts,
    load_alignment_candidates,
)
from safealign.constraints.groups import train_group_reward_models
from safealign.constraints.policy_file import FROM_FILE, FROM_REFERENCE, ModelDirs
from safealign.constraints.tilting import TiltedPolicy
from safealign.data.records import PairDataset
from safealign.data.source import load_source, make_splits
from safealign.data.splits import CERTIFY, SealedDataset, Splits
from safealign.errors import ConfigError
from safealign.models.embeddings import RUN_CACHE_DIR, embedding_cache
from safealign.models.scalar import Kind, load_scoring_model, save_scoring_model
from safealign.privacy.audit import AuditResult, prepare_audit, run_privacy_audit
from safealign.privacy.identity import default_ledger_path
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.release import RecordedTraining, budget_target, charge
from safealign.privacy.training import PrivacyReceipt, commit_fingerprint, ledger_commitment_key
from safealign.runs import record_training, trained_model

#: Splits whose plain fingerprints may be published: the report declares them public inputs.
PUBLIC_SPLITS = ("candidate", "safety")


def say(progress: bool, message: str) -> None:
    """Print one progress line (flushed) when ``progress`` is on."""
    if progress:
        print(message, flush=True)


class ReferenceSampler:
    """K reference responses per prompt: the synthetic world's sampler, or the data's own responses.

    Without a world, a prompt's candidates are the distinct responses it has in the preference data
    (the data-collection policy's samples); for safety prompts those are read from the sealed split,
    which only happens inside certification.
    """

    def __init__(self, config: Config, world, splits=None) -> None:
        self.world, self.num_candidates, self.splits = world, config.policy.num_candidates, splits

    def describe(self) -> dict:
        if self.world is not None:
            return {
                "source": "synthetic world reference policy",
                "num_candidates": self.num_candidates,
                "world_seed": self.world.seed,
            }
        return {"source": "responses in the preference data (data-collection policy)"}

    def candidates(self, prompts, *, seed: int, sealed: SealedDataset | None = None) -> Candidates:
        if self.world is not None:
            cands = self.world.sample_candidates(
                list(prompts), num_candidates=self.num_candidates, seed=seed
            )
            return candidates_from_texts(cands.prompts, cands.responses, source="synthetic world")
        pairs = sealed.unseal(purpose=CERTIFY) if sealed is not None else self.splits.candidate
        by_prompt = candidates_from_pairs(pairs)
        order = {p: i for i, p in enumerate(by_prompt.prompts)}
        rows = [by_prompt.responses[order[p]] for p in prompts]
        return candidates_from_texts(tuple(prompts), rows, source=by_prompt.source)


def group_stage(config: Config, out: Path, pairs, splits, *, progress: bool):
    """Per-group reward models (given groups or EM), trained once and kept in ``out``."""
    meta_path = out / "groups.json"
    if not meta_path.exists():
        target = None
        privacy = config.reward_model.privacy
        if privacy.target_epsilon is not None:
            # EM trains at user level whatever the config says: then users are the units.
            unit = "user" if config.groups.mode == "em" else privacy.privacy_unit
            target = budget_target(
                config.budget, pairs, privacy_unit=unit, dataset_id=config.data.dataset_id,
                target_deltas=[("reward_model.privacy.target_delta", privacy.target_delta)],
            )  # fmt: skip
        # No pooled model is passed: with groups the run trains no separate reward model, so
        # em_init 'pooled' trains its start model inside EM, on these same training pairs at
        # user level, and charges it to the ledger as one more release (its receipt comes first).
        trained = train_group_reward_models(
            splits.train,
            groups=config.groups,
            model_config=config.reward_model,
            seed=config.seed,
            eval_pairs=splits.eval,
            budget=target,
            stop_early=config.groups.em_stop_early,
            count_noise=config.groups.em_count_noise,
            commitment_key=commitment_key(config),
            progress=progress,
        )
        for i, model in enumerate(trained.models):
            save_scoring_model(model, out / group_model_dir(i))
        # Released: one receipt per charged mechanism, and the iteration count (fixed by the config
        # unless em_stop_early). Never the per-cluster sizes or training runs (em module doc).
        meta = {
            "names": list(trained.names),
            "receipts": [r.to_dict() for r in trained.release_receipts],
            "iterations": trained.iterations,
        }
        atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    meta = json.loads(meta_path.read_text())
    models = {
        name: load_scoring_model(out / group_model_dir(i)) for i, name in enumerate(meta["names"])
    }
    return models, [PrivacyReceipt(**r) for r in meta["receipts"]]


def group_model_dir(index: int) -> str:
    """Directory (inside the groups stage's directory) of the ``index``-th group's reward model."""
    return f"group-{index}"


def load_scorers(out: Path, models: ModelDirs, group_weights: dict[str, float] | None) -> Scorers:
    """The scorers of an aligned policy, loaded from the model directories of run directory ``out``."""
    cost = load_scoring_model(out / models.cost)
    if models.group_rewards is None:
        return Scorers(cost=cost, reward=load_scoring_model(out / models.reward))
    groups = {name: load_scoring_model(out / path) for name, path in models.group_rewards}
    return Scorers(cost=cost, group_rewards=groups, group_weights=group_weights)


def models_stage(config: Config, out: Path, pairs, splits, *, progress: bool):
    """The cost model and the reward model(s): trained once per run directory, then loaded.

    Returns:
        ``(scorers, receipts, model directories relative to out)``.
    """
    with embedding_cache(out / RUN_CACHE_DIR):  # frozen-backbone embeddings: private, kept here
        return _models_stage(config, out, pairs, splits, progress=progress)


def _models_stage(config: Config, out: Path, pairs, splits, *, progress: bool):
    say(progress, "[2/6] private cost model")
    cost_model, cost_receipt = trained_model(
        config, kind="cost", out=out / "cost", pairs=pairs, splits=splits, progress=progress
    )
    if config.groups.mode == "none":
        say(progress, "[3/6] private reward model")
        reward_model, reward_receipt = trained_model(
            config, kind="reward", out=out / "reward", pairs=pairs, splits=splits, progress=progress
        )
        scorers = Scorers(cost=cost_model, reward=reward_model)
        return scorers, [reward_receipt, cost_receipt], ModelDirs("cost/model", "reward/model")
    say(progress, f"[3/6] private reward models per group ({config.groups.mode})")
    group_models, group_receipts = group_stage(
        config, out / "groups", pairs, splits, progress=progress
    )
    dirs = tuple((g, f"groups/{group_model_dir(i)}") for i, g in enumerate(group_models))
    scorers = Scorers(cost=cost_model, group_rewards=group_models)
    return scorers, [*group_receipts, cost_receipt], ModelDirs("cost/model", group_rewards=dirs)


def candidates_stage(config: Config, sampler: ReferenceSampler, splits, path):
    """The candidates to align on (the reference sampler's, or a file's), with their provenance.

    Returns:
        ``(candidates, source for policy.json, reference-sampler description for the policy)``.
    """
    if path is None:
        candidates = sampler.candidates(splits.candidate.prompts, seed=config.seed + 1)
        reference = sampler.describe()
        source = {"source": FROM_REFERENCE, "reference_sampler": reference, "seed": config.seed + 1}
        return candidates, source, reference
    candidates = load_alignment_candidates(path, safety=splits.safety)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    reference = {"source": "candidates file", "path": str(path), "sha256": digest}
    source = {
        "source": FROM_FILE,
        "path": str(path),
        "sha256": digest,
        "num_prompts": len(candidates.prompts),
        "num_candidates": candidates.num_candidates,
    }
    return candidates, source, reference


def commitment_key(config: Config) -> bytes:
    """The secret that keys every published commitment of a run: the config's ledger's key."""
    return ledger_commitment_key(config.budget.ledger)


def released_fingerprints(config: Config, pairs: PairDataset, splits: Splits) -> dict:
    """The data identities a run publishes: keyed commitments to the private data, plain SHA-256
    only of the splits the report declares public (candidate and safety prompts' splits).

    Returns:
        ``{"dataset": commitment, "splits": {split: commitment or sha256}}``.
    """
    key = commitment_key(config)
    plain = splits.fingerprints()
    return {
        "dataset": commit_fingerprint(key, pairs.fingerprint),
        "splits": {
            name: fp if name in PUBLIC_SPLITS else commit_fingerprint(key, fp)
            for name, fp in plain.items()
        },
    }


def data_record(config: Config, pairs: PairDataset, splits: Splits) -> dict:
    """What policy.json records of the data, so certification can check it sees the same splits
    (commitments compare as equal for equal data under one key: :func:`released_fingerprints`)."""
    released = released_fingerprints(config, pairs, splits)
    return {
        "dataset": pairs.name,
        "dataset_fingerprint": released["dataset"],
        "split_fingerprints": released["splits"],
        "n_safety": splits.safety.num_prompts,
    }


def infeasible_certificate(config: Config, reason: str, sealed: SealedDataset) -> dict:
    """NSF without a test: step 1 found no policy meeting the pessimistic bound, so nothing is released."""
    s = attempt_safety(config.safety)
    return {
        "metric": s.metric,
        "cost_threshold": s.cost_threshold,
        "confidence": s.confidence,
        "bound": s.resolved_bound,
        "n": 0,
        "mean": None,
        "std": None,
        "upper_bound": None,
        "passed": False,
        "result": "NSF",
        "sampler_settings": {},
        "safety_fingerprint": sealed.fingerprint,
        "source": "selection",
        "assumptions": [
            "No policy met the pessimistic step-1 bound on the candidate prompts; the safety "
            "test was not run and nothing was released."
        ],
        "value_range": None,
        "reason": reason,
    }


def report_groups(group_rewards: dict[str, float], certificate: dict) -> dict:
    """The report's per-group entries: the model reward on the candidate prompts, with the bounds
    the safety test's sample gives (``cost_upper_bound``, ``reward_lower_bound``, ``safety_test``).

    ``size`` stays None: the exact number of users or pairs per group in the training data
    (``GroupModels.assignment_counts``) is not covered by the DP guarantee, which the report
    states for everything it releases about the training data.
    """
    bounds = (certificate.get("groups") or {}).get("groups") or {}
    entries = {}
    for name, reward in group_rewards.items():
        entry = {"size": None, "reward": reward}
        if name in bounds:
            b = bounds[name]
            entry["cost_upper_bound"] = b["cost_upper_bound"]
            entry["reward_lower_bound"] = b["reward_lower_bound"]
            keys = ("n", "prompts", "cost_mean", "reward_mean", "reason")
            entry["safety_test"] = {key: b[key] for key in keys}
        entries[name] = entry
    return entries


def ledger_summary(config: Config, fingerprint: str) -> dict | None:
    """The most-spent budget the source dataset is charged on (None when nothing private ran), as
    the report shows it: the dataset's fingerprint replaced by its commitment."""
    path = Path(config.budget.ledger or default_ledger_path())
    if not path.exists():
        return None
    spend = PrivacyLedger(path).dataset_spend(fingerprint)
    if spend is None:
        return None
    summary = dataclasses.asdict(spend)
    summary["fingerprint"] = commit_fingerprint(commitment_key(config), fingerprint)
    return summary


def true_outcomes(
    world, aligned: AlignResult, splits, sampler: ReferenceSampler, config: Config
) -> dict:
    """The released policy's TRUE expected cost and rewards (synthetic world only), on fresh
    reference candidates for the eval and candidate prompts (never the sealed safety prompts)."""
    prompts = list(splits.eval.prompts) + list(splits.candidate.prompts)
    cands = sampler.candidates(prompts, seed=config.seed + 3)
    scored = score_candidates(cands, aligned.scorers)
    flat_prompts, flat_responses = cands.flat()
    shape = scored.costs.shape
    true_cost = torch.tensor(
        world.true_cost(flat_prompts, flat_responses).reshape(shape), dtype=torch.float64
    )
    true_rewards = {
        g: torch.tensor(
            world.true_reward(flat_prompts, flat_responses, g).reshape(shape), dtype=torch.float64
        )
        for g in world.group_weights
    }
    policies = {"reference": torch.full(shape, 1.0 / shape[1], dtype=torch.float64)}
    policy = aligned.selection.policy
    if policy is not None:
        policies["released"] = policy.probabilities(
            scored.rewards, scored.costs, log_p=scored.log_p
        )
        greedy = TiltedPolicy(beta=policy.beta, lambda_=0.0, num_candidates=policy.num_candidates)
        policies["unconstrained"] = greedy.probabilities(
            scored.rewards, scored.costs, log_p=scored.log_p
        )
    out = {name: _values(q, true_cost, true_rewards, world) for name, q in policies.items()}
    out["cost_threshold"] = config.safety.cost_threshold
    out["metric"] = config.safety.metric
    out["prompts"] = len(prompts)
    if "released" in out:
        key = "expected_cost" if config.safety.metric == "expected_cost" else "unsafe_rate"
        out["guarantee_holds"] = bool(out["released"][key] <= config.safety.cost_threshold)
    return out


def train_model_stage(
    config: Config, *, kind: Kind, out_dir: str | Path, progress: bool = True
) -> RecordedTraining:
    """Train the reward or cost model on the training split, charged to the source's budget."""
    pairs, _ = load_source(config)
    with embedding_cache(Path(out_dir) / RUN_CACHE_DIR):
        return record_training(
            config,
            kind=kind,
            out=Path(out_dir),
            pairs=pairs,
            splits=make_splits(pairs, config),
            progress=progress,
        )


def privacy_audit_stage(
    config: Config,
    *,
    out_dir: str | Path,
    num_canaries: int,
    noise_off: bool,
    progress: bool = True,
) -> AuditResult:
    """One-run empirical privacy audit of the reward-model training, charged to the ledger.

    The audited run trains on the real training split (plus canaries), so it is a release like any
    other and is reserved in the ledger first. Switching the noise off is a non-private release:
    allowed only on the synthetic world, whose data is not anyone's.
    """
    if noise_off and config.data.source != "synthetic":
        raise ConfigError(
            "--no-noise trains without privacy; it is allowed only with data.source: synthetic"
        )
    if config.reward_model.backbone == "features":
        raise ConfigError(
            "reward_model.backbone: the privacy audit's canaries are random words, which the "
            "features backbone parses to one and the same input, so the audit could never detect "
            "anything; audit a text backbone (tiny, tiny-gpt2, or a Hugging Face model)"
        )
    pairs, _ = load_source(config)
    splits = make_splits(pairs, config)
    model_config = config.reward_model
    setup = prepare_audit(
        splits.train,
        config=model_config,
        seed=config.seed,
        num_canaries=num_canaries,
        noise_off=noise_off,
    )
    if not (setup.plan.private and not noise_off):
        result = run_privacy_audit(setup, config=model_config, seed=config.seed, progress=progress)
    else:
        privacy = model_config.privacy
        target = budget_target(
            config.budget, pairs, privacy_unit=privacy.privacy_unit,
            dataset_id=config.data.dataset_id,
            target_deltas=[("reward_model.privacy.target_delta", privacy.target_delta)],
        )  # fmt: skip
        # The audit reports no steps: a failure after it started charges the whole plan.
        with charge(target, setup.plan.mechanism, label="privacy audit", accountant=privacy.accountant):
            result = run_privacy_audit(
                setup, config=model_config, seed=config.seed, progress=progress
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "privacy_audit.json", json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n"
    )
    return result


def _values(q, true_cost, true_rewards, world) -> dict:
    rewards = {g: float((q * r).sum(-1).mean()) for g, r in true_rewards.items()}
    return {
        "expected_cost": float((q * true_cost).sum(-1).mean()),
        "unsafe_rate": float((q * (true_cost > 0)).sum(-1).mean()),
        "reward": rewards,
        "population_reward": float(sum(world.group_weights[g] * v for g, v in rewards.items())),
    }
