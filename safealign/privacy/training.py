"""The public training stages: ``train_reward_model`` and ``train_cost_model``.

Each returns the trained model and a :class:`PrivacyReceipt` — everything needed to recompute ε
independently (σ, q, steps, δ, accountant) plus provenance and held-out metrics.

A receipt is a released file (``receipt.json`` sits in the run directory), so it carries nothing
that is an exact function of the training pairs beyond what the release inventory declares
public (``safealign.audits.inventory``): the dataset appears only as a keyed commitment
(:func:`commit_fingerprint`), never as its SHA-256, which anyone holding every record but one
could recompute for each guess of the missing record; and no training loss (measured on private
batches, it is not DP: it stays in :attr:`TrainResult.losses`, in memory).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from safealign._atomic import atomic_write_text
from safealign._version import __version__
from safealign.config import ModelConfig
from safealign.data.records import PairDataset
from safealign.errors import DataError
from safealign.models.embeddings import embedding_cache
from safealign.models.evaluate import evaluate_scoring_model
from safealign.models.pairs import embed_pairs, encode_pairs
from safealign.models.scalar import Kind, ScoringModel, build_scoring_model, save_scoring_model
from safealign.privacy.accounting import Mechanism, compute_epsilon
from safealign.privacy.calibration import apply_shift, calibrates_run, fit_shift, labelled_costs
from safealign.privacy.dp_sgd import privacy_units, run_dp_sgd
from safealign.privacy.identity import default_ledger_path, keyed_digest, ledger_key
from safealign.privacy.plan import TrainingPlan, plan_training

_COMMITMENT_DOMAIN = "safealign.dataset-commitment.v1"


def commit_fingerprint(key: bytes, fingerprint: str) -> str:
    """A keyed commitment (HMAC-SHA256) to a dataset's SHA-256 fingerprint, safe to publish.

    Equal data gives equal commitments under one key, so two stages of a run can still check they
    saw the same split; without the key (kept beside the ledger) nobody can test a guess.

    Args:
        key: The ledger's secret (:func:`~safealign.privacy.identity.ledger_key`).
        fingerprint: ``PairDataset.fingerprint`` (or any SHA-256 of private records).
    """
    return keyed_digest(key, _COMMITMENT_DOMAIN, fingerprint)


def ledger_commitment_key(ledger: str | Path | None = None) -> bytes:
    """The key of every commitment charged to ``ledger``: the secret kept beside it (beside the
    per-user default ledger when ``ledger`` is None)."""
    return ledger_key(Path(ledger) if ledger else default_ledger_path())


@dataclass(frozen=True)
class PrivacyReceipt:
    """What one training run spent and achieved (written as ``receipt.json``).

    ``epsilon`` is None only for an explicitly non-private run (``private`` False), which is then
    labelled NON-PRIVATE everywhere it is shown. ``dataset_fingerprint`` is a keyed commitment
    (:func:`commit_fingerprint`), not a plain hash. ``num_units``/``num_pairs`` are the training
    set's size (declared public, as the sampling rate reveals it) or None where the size is not
    released (a group's or an EM cluster's subset, :mod:`safealign.groups.common`).
    """

    kind: str
    private: bool
    epsilon: float | None
    target_epsilon: float | None
    target_delta: float
    noise_multiplier: float | None
    sample_rate: float
    steps: int
    planned_steps: int
    max_grad_norm: float | None
    accountant: str | None
    accountant_fallback: str | None
    privacy_unit: str
    num_units: int | None
    num_pairs: int | None
    dataset_fingerprint: str
    seed: int
    backbone: str
    metrics: dict[str, Any] = field(default_factory=dict)
    safealign_version: str = __version__
    calibration_steps: int = 0  # the last of `steps`: DP calibration of a cost model's level
    grad_sample_mode: str | None = None  # how units were clipped (None: non-private, older runs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @property
    def mechanism(self) -> Mechanism | None:
        if not self.private or self.steps == 0:
            return None
        return Mechanism(self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class TrainResult:
    """A trained scalar model and its receipt."""

    model: ScoringModel
    receipt: PrivacyReceipt
    losses: tuple[float, ...]


def train_scoring_model(
    pairs: PairDataset,
    *,
    kind: Kind,
    config: ModelConfig,
    seed: int,
    eval_pairs: PairDataset | None = None,
    plan: TrainingPlan | None = None,
    checkpoint: str | Path | None = None,
    on_step=None,
    commitment_key: bytes | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a reward or cost model on ``pairs`` with DP-SGD as ``config`` says.

    Args:
        pairs: Training pairs (the DP-protected data).
        kind: ``reward`` or ``cost``.
        config: Backbone, LoRA, optimisation and privacy settings.
        seed: Seed of initialisation (and of a non-private run's sampling); a private run's
            sampling, noise and calibration are secret (:mod:`safealign.privacy.secret`).
        eval_pairs: Held-out pairs for metrics (never trained on).
        plan: A schedule fixed earlier (e.g. the one reserved in the ledger); default computed.
        checkpoint: File to checkpoint to each step and resume from if present.
        on_step: Called with the step count after each step (progress hooks, tests).
        commitment_key: Key of the receipt's dataset commitment (the ledger's key; default the
            per-user default ledger's).
        progress: Show a progress bar.

    With ``config.head`` set (a frozen backbone) the pairs' embeddings come from the active
    embedding cache (:func:`~safealign.models.embeddings.embedding_cache`; the pipeline's is the
    run directory's ``embeddings/``), or are computed once and kept in memory for this call, and
    DP-SGD trains the head alone on them.
    """
    with embedding_cache(None):  # the caller's cache, or one in memory for this call
        return _train_scoring_model(
            pairs, kind=kind, config=config, seed=seed, eval_pairs=eval_pairs, plan=plan,
            checkpoint=checkpoint, on_step=on_step, commitment_key=commitment_key,
            progress=progress,
        )  # fmt: skip


def _train_scoring_model(
    pairs: PairDataset,
    *,
    kind: Kind,
    config: ModelConfig,
    seed: int,
    eval_pairs: PairDataset | None,
    plan: TrainingPlan | None,
    checkpoint: str | Path | None,
    on_step,
    commitment_key: bytes | None,
    progress: bool,
) -> TrainResult:
    if len(pairs) == 0:
        raise DataError("no training pairs", path=pairs.name)
    if kind == "cost" and not any(p.has_safety_labels or p.safer for p in pairs):
        raise DataError(
            "a cost model needs safety labels or 'safer' annotations; none found (for HH-RLHF "
            "harmless-base, whose chosen reply is the less harmful one, set "
            "data.chosen_is_safer: true)",
            path=pairs.name,
        )
    units, num_units = privacy_units(pairs, config.privacy.privacy_unit)
    plan = plan or plan_training(num_units, config, calibration=calibrates_run(kind, pairs, config))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scoring = build_scoring_model(config, kind=kind, seed=seed)
    scoring.model.to(device)
    if config.head is not None:
        data = embed_pairs(scoring, pairs, batch_size=config.head.embed_batch_size)
    else:
        data = encode_pairs(scoring, pairs)
    training_steps = plan.steps - plan.calibration_steps
    steps, losses = run_dp_sgd(
        scoring,
        data,
        units,
        replace(plan, steps=training_steps),
        config=config,
        kind=kind,
        seed=seed,
        checkpoint=Path(checkpoint) if checkpoint else None,
        on_step=on_step,
        progress=progress,
    )
    shift = None
    if plan.calibration_steps and steps == training_steps:
        shift = fit_shift(
            *labelled_costs(scoring, pairs), units, num_units,
            sample_rate=plan.sample_rate, noise_multiplier=plan.noise_multiplier,
            max_grad_norm=config.privacy.max_grad_norm, steps=plan.calibration_steps,
        )  # fmt: skip
        apply_shift(scoring, shift)
        steps += plan.calibration_steps
    metrics = evaluate_scoring_model(scoring, eval_pairs) if eval_pairs is not None else {}
    if shift is not None:
        metrics["train/calibration_shift"] = shift
    privacy = config.privacy
    accounting = None
    if plan.private and steps > 0:
        accounting = compute_epsilon(
            Mechanism(plan.noise_multiplier, plan.sample_rate, steps),
            target_delta=privacy.target_delta,
            accountant=privacy.accountant,
        )
    receipt = PrivacyReceipt(
        kind=kind,
        private=plan.private,
        epsilon=(accounting.epsilon if accounting else (0.0 if plan.private else None)),
        target_epsilon=privacy.target_epsilon,
        target_delta=privacy.target_delta,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=steps,
        planned_steps=plan.steps,
        calibration_steps=plan.calibration_steps if shift is not None else 0,
        max_grad_norm=privacy.max_grad_norm if plan.private else None,
        accountant=accounting.accountant
        if accounting
        else (privacy.accountant if plan.private else None),
        accountant_fallback=accounting.fallback_reason if accounting else None,
        privacy_unit=privacy.privacy_unit,
        num_units=num_units,
        num_pairs=len(pairs),
        dataset_fingerprint=commit_fingerprint(
            commitment_key or ledger_commitment_key(), pairs.fingerprint
        ),
        seed=seed,
        backbone=config.backbone,
        metrics=metrics,
        grad_sample_mode=privacy.grad_sample_mode if plan.private else None,
    )
    return TrainResult(model=scoring, receipt=receipt, losses=tuple(losses))


def train_reward_model(
    pairs: PairDataset, *, config: ModelConfig, seed: int, **kwargs
) -> TrainResult:
    """Bradley–Terry reward model with DP-SGD; see :func:`train_scoring_model`."""
    return train_scoring_model(pairs, kind="reward", config=config, seed=seed, **kwargs)


def train_cost_model(
    pairs: PairDataset, *, config: ModelConfig, seed: int, **kwargs
) -> TrainResult:
    """Safe RLHF cost model (cost > 0 unsafe) with DP-SGD; see :func:`train_scoring_model`."""
    return train_scoring_model(pairs, kind="cost", config=config, seed=seed, **kwargs)


def save_training_output(result: TrainResult, out_dir: str | Path) -> Path:
    """Write ``OUT/model/`` and ``OUT/receipt.json``; returns the receipt path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_scoring_model(result.model, out / "model")
    receipt = out / "receipt.json"
    result.receipt.write(receipt)
    return receipt
