"""The run's private models: the cost model and the reward model(s), trained once per run
directory under the ledger's budget, then loaded (a resumed run spends no privacy again)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safealign._atomic import atomic_write_text
from safealign.constraints.align import Scorers
from safealign.groups.training import train_group_reward_models
from safealign.models.scalar import Kind, ScoringModel, load_scoring_model, save_scoring_model
from safealign.privacy.release import RecordedTraining, budget_target, train_on_budget
from safealign.privacy.training import PrivacyReceipt
from safealign.run.paths import (
    MODEL_DIR,
    RECEIPT_FILE,
    group_model_dir,
    relative_group_model,
    relative_model,
)
from safealign.run.policy_file import ModelDirs
from safealign.run.workspace import Workspace, say


@dataclass(frozen=True)
class TrainedModels:
    """The models a run aligns with.

    Attributes:
        scorers: The cost model and the reward model (or one per group).
        receipts: One privacy receipt per charged mechanism, in report order.
        dirs: The model directories relative to the run directory (recorded in policy.json).
    """

    scorers: Scorers
    receipts: list[PrivacyReceipt]
    dirs: ModelDirs


def train_model(ws: Workspace, kind: Kind, *, progress: bool = True) -> RecordedTraining:
    """Train the ``kind`` model on the training split into ``ws.out``, charged to the source's
    budget (``safealign train-reward`` / ``train-cost``)."""
    with ws.embedding_cache():
        return _train_into(ws, kind, ws.out, progress=progress)


def _load_or_train(ws: Workspace, kind: Kind, *, progress: bool):
    """The ``kind`` model and receipt of the run: loaded when its receipt exists, else trained."""
    out = ws.paths.model_dir(kind)
    receipt_path = out / RECEIPT_FILE
    if not receipt_path.exists():
        _train_into(ws, kind, out, progress=progress)
    receipt = PrivacyReceipt(**json.loads(receipt_path.read_text()))
    return load_scoring_model(out / MODEL_DIR), receipt


def _train_into(ws: Workspace, kind: Kind, out: Path, *, progress: bool) -> RecordedTraining:
    config = ws.config
    return train_on_budget(
        ws.splits.train,
        kind=kind,
        config=config.reward_model if kind == "reward" else config.cost_model,
        budget=config.budget,
        source=ws.pairs,
        dataset_id=config.data.dataset_id,
        seed=config.seed,
        out_dir=out,
        eval_pairs=ws.splits.eval,
        progress=progress,
    )


def train_models(ws: Workspace, *, progress: bool = True) -> TrainedModels:
    """The cost model and the reward model(s): trained once per run directory, then loaded."""
    with ws.embedding_cache():  # frozen-backbone models embed each text once for all of them
        return _train_models(ws, progress=progress)


def _train_models(ws: Workspace, *, progress: bool) -> TrainedModels:
    config = ws.config
    say(progress, "[2/6] private cost model")
    cost_model, cost_receipt = _load_or_train(ws, "cost", progress=progress)
    if config.groups.mode == "none":
        say(progress, "[3/6] private reward model")
        reward_model, reward_receipt = _load_or_train(ws, "reward", progress=progress)
        return TrainedModels(
            Scorers(cost=cost_model, reward=reward_model),
            [reward_receipt, cost_receipt],
            ModelDirs(relative_model("cost"), relative_model("reward")),
        )
    say(progress, f"[3/6] private reward models per group ({config.groups.mode})")
    group_models, group_receipts = _group_models(ws, progress=progress)
    dirs = tuple((g, relative_group_model(i)) for i, g in enumerate(group_models))
    return TrainedModels(
        Scorers(cost=cost_model, group_rewards=group_models),
        [*group_receipts, cost_receipt],
        ModelDirs(relative_model("cost"), group_rewards=dirs),
    )


def _group_models(ws: Workspace, *, progress: bool):
    """Per-group reward models (given groups or EM), trained once and kept in ``groups/``."""
    config, folder, meta_path = ws.config, ws.paths.groups, ws.paths.groups_file
    if not meta_path.exists():
        target = None
        privacy = config.reward_model.privacy
        if privacy.target_epsilon is not None:
            # EM trains at user level whatever the config says: then users are the units.
            unit = "user" if config.groups.mode == "em" else privacy.privacy_unit
            target = budget_target(
                config.budget, ws.pairs, privacy_unit=unit, dataset_id=config.data.dataset_id,
                target_deltas=[("reward_model.privacy.target_delta", privacy.target_delta)],
            )  # fmt: skip
        # No pooled model is passed: with groups the run trains no separate reward model, so
        # em_init 'pooled' trains its start model inside EM, on these same training pairs at
        # user level, and charges it to the ledger as one more release (its receipt comes first).
        trained = train_group_reward_models(
            ws.splits.train,
            groups=config.groups,
            model_config=config.reward_model,
            seed=config.seed,
            eval_pairs=ws.splits.eval,
            budget=target,
            stop_early=config.groups.em_stop_early,
            count_noise=config.groups.em_count_noise,
            commitment_key=ws.commitment_key,
            progress=progress,
        )
        for i, model in enumerate(trained.models):
            save_scoring_model(model, folder / group_model_dir(i))
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
        name: load_scoring_model(folder / group_model_dir(i))
        for i, name in enumerate(meta["names"])
    }
    return models, [PrivacyReceipt(**r) for r in meta["receipts"]]


def load_scorers(
    out: Path,
    models: ModelDirs,
    group_weights: dict[str, float] | None,
    *,
    group_cost_lambdas: dict[str, float] | None = None,
) -> Scorers:
    """The scorers of an aligned policy, loaded from the model directories of run directory ``out``."""
    cost: ScoringModel = load_scoring_model(out / models.cost)
    if models.group_rewards is None:
        return Scorers(cost=cost, reward=load_scoring_model(out / models.reward))
    groups = {name: load_scoring_model(out / path) for name, path in models.group_rewards}
    return Scorers(cost=cost, group_rewards=groups, group_weights=group_weights,
                   group_cost_lambdas=group_cost_lambdas)  # fmt: skip
