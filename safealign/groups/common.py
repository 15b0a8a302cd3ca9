"""What both ways of finding groups share: the result, the ledger charge, seeds and plans.

:func:`safealign.groups.training.train_group_reward_models` trains group reward models from
given groups (:mod:`safealign.groups.training`) or by EM over users
(:mod:`safealign.groups.em`); both return :class:`GroupModels`, charge each release through
:class:`Charger` and train each group on :func:`group_plan` of one shared schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from safealign.config import ModelConfig
from safealign.data.records import PairDataset
from safealign.errors import DataError
from safealign.models.scalar import ScoringModel
from safealign.privacy.accounting import Mechanism, compute_epsilon
from safealign.privacy.plan import TrainingPlan
from safealign.privacy.release import ChargeTarget, charge
from safealign.privacy.training import PrivacyReceipt, TrainResult

#: ``kind`` of the receipt of EM's noisy cluster sizes (a Gaussian mechanism, not a training run).
COUNT_RECEIPT_KIND = "em_cluster_sizes"


@dataclass(frozen=True)
class GroupModels:
    """One DP reward model per group, with what the ledger and the report need.

    Attributes:
        names: Group names (the data's groups, or ``cluster-0``, ... for EM).
        models: The reward models, parallel to ``names`` (an EM cluster that never had users
            holds the pooled model).
        receipts: One per training run, in order (EM: the pooled start model if trained here,
            then one per non-empty cluster and iteration). Internal: each carries its subset's
            exact size, and which clusters trained when depends on the data; never written.
        mechanisms: What the ledger composes sequentially: the pooled start model's if trained
            here, then one per EM iteration (plus the count release with ``count_noise``); one
            for given groups; empty if non-private.
        iterations: EM iterations run (1 for given groups).
        assignment_counts: Users (EM) or privacy units (given) per group: exact aggregates,
            not DP-protected (sensitivity 1 each).
        converged: EM stopped because no user moved (True for given groups).
        release_ids: Ledger releases charged (one per iteration, after the pooled start
            model's if trained here), empty without a ledger.
        release_receipts: What may be published about the training (``groups.json``, the
            report): one receipt per mechanism in ``mechanisms``, in order (a single NON-PRIVATE
            receipt per release if non-private), built by :func:`release_receipts`. Their
            composition is the ledger's charge, count noise included.
    """

    names: tuple[str, ...]
    models: tuple[ScoringModel, ...]
    receipts: tuple[PrivacyReceipt, ...]
    mechanisms: tuple[Mechanism, ...]
    iterations: int
    assignment_counts: dict[str, int]
    converged: bool
    release_ids: tuple[int, ...] = ()
    release_receipts: tuple[PrivacyReceipt, ...] = ()

    def score_candidates(
        self, prompts: Sequence[str], responses: Sequence[Sequence[str]]
    ) -> Tensor:
        """Model rewards ``[G, N, K]`` (float64); see :func:`score_candidates`."""
        return score_candidates(self.models, prompts, responses)


def score_candidates(
    models: Sequence[ScoringModel], prompts: Sequence[str], responses: Sequence[Sequence[str]]
) -> Tensor:
    """Rewards ``[G, N, K]`` of ``responses[n][k]`` to ``prompts[n]`` under each model."""
    k = len(responses[0]) if responses else 0
    if any(len(row) != k for row in responses) or len(responses) != len(prompts):
        raise DataError("responses must be N rows of K candidates, one row per prompt")
    flat_prompts = [p for p in prompts for _ in range(k)]
    flat = [r for row in responses for r in row]
    scores = [m.score(flat_prompts, flat).double().view(len(prompts), k) for m in models]
    return torch.stack(scores)


@dataclass(frozen=True)
class Charger:
    """Charge one release per M-step through :func:`~safealign.privacy.release.charge`.

    A no-op without a ledger target or privacy. The block does not report steps, so a failed
    training commits its whole plan (the release's failure policy for callers without steps).
    """

    target: ChargeTarget | None
    config: ModelConfig

    def run(
        self, plan: TrainingPlan, label: str, train: Callable, extra: tuple[Mechanism, ...] = ()
    ) -> tuple[list[TrainResult], tuple[Mechanism, ...], int | None]:
        """Train; return the results, the mechanisms to compose and the release id (or None)."""
        if not plan.private:
            return train(), (), None
        if self.target is None:
            results = train()
            return results, (_dominating(r.receipt.mechanism for r in results), *extra), None
        accountant = self.config.privacy.accountant
        with charge(
            self.target, (plan.mechanism, *extra), label=label, accountant=accountant
        ) as run:
            results = train()
            spent = (_dominating(r.receipt.mechanism for r in results), *extra)
            run.spend(spent)
        return results, spent, run.release_id


def _dominating(mechanisms) -> Mechanism:
    """``(min σ, max q, max T)``: dominates each cluster's mechanism (parallel composition).

    The subsampled Gaussian's privacy loss grows as σ falls, q rises or T rises, so charging this
    is conservative whatever cluster a user is in. With the shared schedule every cluster runs
    the same (σ, q, T), and this is exactly it.
    """
    spent = [m for m in mechanisms if m is not None]
    return Mechanism(
        min(m.noise_multiplier for m in spent),
        max(m.sample_rate for m in spent),
        max(m.steps for m in spent),
    )


def release_receipts(
    results: Sequence[TrainResult], spent: Sequence[Mechanism], *, dataset: str
) -> list[PrivacyReceipt]:
    """The publishable receipts of one group release: one per mechanism the ledger charged.

    A release trains several groups (or EM clusters) in parallel on disjoint users with one
    shared schedule, so the guarantee is about the whole training set: each receipt names it
    (``dataset``, a commitment) rather than a group's subset, and carries no subset size and no
    metric (a group's size, and an EM cluster's held-out metrics, are exact functions of other
    users' assignments). Count noise (``spent[1:]``) gets a receipt of its own.

    Args:
        results: The release's training runs (all with the shared schedule).
        spent: What :meth:`Charger.run` returned: the training mechanism, then count noise;
            empty for a non-private release.
        dataset: Commitment to the training pairs the release is a function of.
    """
    base = replace(
        results[0].receipt, num_units=None, num_pairs=None, metrics={}, dataset_fingerprint=dataset
    )
    if not spent:
        return [base]
    training, *counts = spent
    receipts = [base]
    if base.mechanism != training:  # the dominating schedule of the clusters (Charger.run)
        accounting = _accounting(training, base)
        receipts = [
            replace(
                base,
                epsilon=accounting.epsilon,
                noise_multiplier=training.noise_multiplier,
                sample_rate=training.sample_rate,
                steps=training.steps,
            )
        ]
    for mechanism in counts:
        accounting = _accounting(mechanism, base)
        receipts.append(
            replace(
                base,
                kind=COUNT_RECEIPT_KIND,
                epsilon=accounting.epsilon,
                target_epsilon=None,
                noise_multiplier=mechanism.noise_multiplier,
                sample_rate=mechanism.sample_rate,
                steps=mechanism.steps,
                planned_steps=mechanism.steps,
                calibration_steps=0,
                max_grad_norm=None,  # L2 sensitivity 1: one user changes one count by 1
                accountant=accounting.accountant,
                accountant_fallback=accounting.fallback_reason,
                grad_sample_mode=None,
            )
        )
    return receipts


def _accounting(mechanism: Mechanism, base: PrivacyReceipt):
    return compute_epsilon(
        mechanism, target_delta=base.target_delta, accountant=base.accountant or "prv"
    )


def group_plan(shared: TrainingPlan, num_units: int) -> TrainingPlan:
    """The shared (σ, q, T) on one group of ``num_units`` units (expected batch q·n)."""
    return replace(shared, num_units=num_units, expected_batch_size=shared.sample_rate * num_units)


def derive_seed(seed: int, *path: int) -> int:
    """A seed of its own for each ``path`` (e.g. ``(iteration, cluster)``) under ``seed``."""
    # Independent noise per (iteration, cluster): two releases drawing the same Gaussian noise
    # would let an observer cancel it. run_dp_sgd uses seed and seed + 1, so no consecutive seeds.
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0] >> 1)


def subset(pairs: PairDataset | None, keep: Callable, name: str) -> PairDataset | None:
    """The pairs ``keep`` accepts, named ``<pairs.name>[<name>]``; None if none (or no pairs)."""
    if pairs is None:
        return None
    kept = tuple(p for p in pairs if keep(p))
    return PairDataset(kept, name=f"{pairs.name}[{name}]") if kept else None
