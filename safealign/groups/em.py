"""EM over users for latent groups (MaxMin-RLHF, Chakraborty et al. 2024, Alg. 1), with DP.

:func:`train_em` is the ``groups.mode: em`` branch of
:func:`safealign.groups.training.train_group_reward_models` (given groups, and the rest of the
privacy argument, are in :mod:`safealign.groups.training`). Privacy, under add/remove-one-user
adjacency:

* ``em`` trains with user-level DP. Within an iteration each user is in one cluster, and every
  *other* user's cluster depends only on their own data and on models already released, so
  removing a user changes one cluster's training: the K trainings are one mechanism (parallel
  composition) and iterations compose sequentially. Hence no exact cluster sizes in the E-step
  and no initialisation that pools users' data: k-means++ on user statistics, a quantile of
  users' scores, or a prior from exact counts, would let one user's data move other users
  between clusters (``count_noise`` uses Gaussian-noised sizes instead, one more charged
  mechanism). The initial assignment is either data-independent (``em_init: random``) or, by
  default (``pooled``), the same kind of function as an E-step: each user's cluster from a
  *released* pooled reward model and their own pairs against a fixed threshold (worse than a
  coin flip), so it is post-processing of that release and the first iteration composes with
  it like any later one. The pooled model must itself be a user-level DP release on the same
  pairs: passed in (charged by its trainer) or trained here as one more release.
* Assignments are a function of each user's own data: internal state, never released.
* What is released about EM is data-independent in shape: a fixed number of iterations
  (``groups.em_max_iters``; stopping early when no user moves is opt-in, ``stop_early`` /
  ``groups.em_stop_early``, and then the number of releases depends on the data and is listed
  in the report as outside the guarantee), and one receipt per charged mechanism
  (:func:`~safealign.groups.common.release_receipts`: no cluster sizes, no per-cluster
  metrics, no subset hashes), and the exact ``assignment_counts`` (sensitivity 1 each) are never
  written. Still not covered, and listed in the report (``safealign.audits.inventory``): an
  emptied cluster keeps its last model (or the pooled one) instead of a noise-only DP-SGD run, so
  whether a cluster emptied can show in the final models.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from safealign.config import GroupsConfig, ModelConfig
from safealign.data.records import PairDataset
from safealign.errors import ConfigError, DataError
from safealign.groups.common import (
    Charger,
    GroupModels,
    derive_seed,
    group_plan,
    release_receipts,
    subset,
)
from safealign.models.scalar import ScoringModel
from safealign.privacy.accounting import Mechanism
from safealign.privacy.dp_sgd import privacy_units
from safealign.privacy.plan import TrainingPlan, plan_training
from safealign.privacy.secret import secret_generator
from safealign.privacy.training import (
    TrainResult,
    commit_fingerprint,
    ledger_commitment_key,
    train_reward_model,
)


def train_em(
    pairs: PairDataset,
    *,
    groups: GroupsConfig,
    model_config: ModelConfig,
    seed: int,
    charge: Charger,
    eval_pairs: PairDataset | None = None,
    stop_early: bool = False,
    count_noise: float | None = None,
    holdout: bool = False,
    pooled: TrainResult | None = None,
    commitment_key: bytes | None = None,
    progress: bool = False,
) -> GroupModels:
    """EM over users: one DP reward model per cluster, each M-step charged through ``charge``.

    The algorithm, and every argument but ``charge``, are as in
    :func:`safealign.groups.training.train_group_reward_models` (``groups.mode: em``), which
    calls this after validating ``count_noise``.

    Args:
        charge: Reserves and commits each release (the pooled start model if trained here,
            then one per iteration) in the ledger, if any.
    """
    key = commitment_key or ledger_commitment_key()
    trainer = _Trainer(model_config, seed, eval_pairs, progress, key)
    return _run_em(pairs, groups, trainer, charge, (stop_early, count_noise, holdout, pooled))


def _initial_assignment(users: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """Seeded i.i.d. uniform clusters, redrawn until none is empty (data-independent: module doc)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE4]))
    while True:
        labels = rng.integers(0, k, len(users))
        if len(set(labels.tolist())) == k:
            return dict(zip(users, labels.tolist(), strict=True))


@dataclass(frozen=True)
class _Trainer:
    """Trains one cluster's model with the EM's shared schedule (set by :func:`_run_em`)."""

    config: ModelConfig
    seed: int
    eval_pairs: PairDataset | None
    progress: bool
    commitment_key: bytes
    fit: PairDataset | None = None
    shared: TrainingPlan | None = None

    def train(self, users: set[str], path: tuple[int, int], name: str) -> TrainResult:
        def keep(p) -> bool:
            return p.user_id in users

        return train_reward_model(
            subset(self.fit, keep, name), config=self.config, seed=derive_seed(self.seed, *path),
            plan=group_plan(self.shared, len(users)),
            eval_pairs=subset(self.eval_pairs, keep, name),
            commitment_key=self.commitment_key, progress=self.progress,
        )  # fmt: skip


def _run_em(pairs, groups, trainer, charge, options) -> GroupModels:
    stop_early, count_noise, holdout, pooled = options
    config = replace(trainer.config, privacy=replace(trainer.config.privacy, privacy_unit="user"))
    _, num_users = privacy_units(pairs, "user")  # DataError without user ids
    k = groups.num_groups
    if num_users < k:
        raise ConfigError(
            f"groups.num_groups={k} clusters need at least {k} users (got {num_users})"
        )
    fit, held_out = holdout_split(pairs) if holdout else (pairs, pairs)
    shared = plan_training(num_users, config)
    trainer = replace(trainer, config=config, fit=fit, shared=shared)
    assignment, models, start = _em_start(pairs, held_out, groups, trainer, charge, pooled)
    receipts, mechanisms, releases, published = start
    dataset = commit_fingerprint(trainer.commitment_key, pairs.fingerprint)
    trained: set[int] = set()  # clusters with a model of their own (others hold the pooled one)
    converged = False
    for iteration in range(1, groups.em_max_iters + 1):
        members = [{u for u, c in assignment.items() if c == j} for j in range(k)]
        busy = [j for j in range(k) if members[j]]  # an emptied cluster keeps its last model

        def train(members=members, busy=busy, t=iteration) -> list[TrainResult]:
            return [trainer.train(members[j], (t, j), f"cluster-{j}") for j in busy]

        log_prior, extra = _noisy_log_prior(members, count_noise)
        label = f"group reward models, EM iteration {iteration}"
        results, spent, release = charge.run(shared, label, train, extra)
        for j, result in zip(busy, results, strict=True):
            models[j] = result.model
        trained.update(busy)
        receipts += [r.receipt for r in results]
        mechanisms += spent
        published += release_receipts(results, spent, dataset=dataset)
        releases += [release] if release is not None else []
        # Only clusters with a model of their own compete: a never-trained cluster's placeholder
        # (the pooled model) would otherwise split a homogeneous population on DP noise alone.
        live = sorted(trained)
        prior = None if log_prior is None else log_prior[live]
        picked = assign_users(held_out, [models[j] for j in live], log_prior=prior)
        # A user absent from held_out (a single pair) keeps their cluster.
        updated = {**assignment, **{u: live[i] for u, i in picked.items()}}
        converged, assignment = updated == assignment, updated
        if converged and stop_early:
            break
    counts = Counter(assignment.values())
    return GroupModels(
        names=tuple(f"cluster-{j}" for j in range(k)),
        models=tuple(models),
        receipts=tuple(receipts),
        mechanisms=tuple(mechanisms),
        iterations=iteration,
        assignment_counts={f"cluster-{j}": counts.get(j, 0) for j in range(k)},
        converged=converged,
        release_ids=tuple(releases),
        release_receipts=tuple(published),
    )


def _em_start(pairs, held_out, groups, trainer, charge, pooled):
    """Initial assignment, initial models, and (receipts, mechanisms, releases, publishable
    receipts) spent on them."""
    k = groups.num_groups
    if groups.em_init == "random":
        return _initial_assignment(pairs.user_ids, k, trainer.seed), [None] * k, ([], [], [], [])
    receipts, mechanisms, releases, published = [], [], [], []
    if pooled is None:  # EM's own "iteration 0": one cluster of every user, charged as a release
        label = "group reward models, EM start (pooled model)"
        everyone = set(pairs.user_ids)
        results, mechanisms, release = charge.run(
            trainer.shared, label, lambda: [trainer.train(everyone, (0, 0), "pooled")]
        )
        pooled, receipts = results[0], [results[0].receipt]
        releases = [release] if release is not None else []
        dataset = commit_fingerprint(trainer.commitment_key, pairs.fingerprint)
        published = release_receipts(results, mechanisms, dataset=dataset)
    else:
        _check_pooled(pooled, pairs, trainer.config, trainer.commitment_key)
    start = pooled_initial_assignment(held_out, pooled.model, num_groups=k, seed=trainer.seed)
    # No E-step pairs (a single pair under holdout): no evidence against the pooled model.
    assignment = {**dict.fromkeys(pairs.user_ids, 0), **start}
    # A cluster that starts empty holds the pooled model until (unless) it gets users.
    return assignment, [pooled.model] * k, (receipts, list(mechanisms), releases, published)


def _check_pooled(
    pooled: TrainResult, pairs: PairDataset, config: ModelConfig, commitment_key: bytes
) -> None:
    """The pooled model must be a release on these pairs that the user-level guarantee covers."""
    receipt = pooled.receipt
    expected = commit_fingerprint(commitment_key, pairs.fingerprint)
    if receipt.dataset_fingerprint != expected:
        raise DataError(
            f"the pooled model was trained on dataset (commitment) "
            f"{receipt.dataset_fingerprint[:12]}..., the group models train on {expected[:12]}... "
            "(or it was committed under another ledger's key); pass the reward model trained on "
            "the same pairs, or set groups.em_init: random",
            path=pairs.name,
        )
    problem = None
    if receipt.kind != "reward":
        problem = f"it is a {receipt.kind!r} model, not a reward model"
    elif config.privacy.target_epsilon is not None and not receipt.private:
        problem = "it is NON-PRIVATE, so an initial assignment computed from it is not DP"
    elif config.privacy.target_epsilon is not None and receipt.privacy_unit != "user":
        problem = (
            f"it was trained with {receipt.privacy_unit}-level DP; EM's user-level guarantee "
            "needs the pooled release at user level too"
        )
    if problem:
        raise ConfigError(
            f"groups.em_init 'pooled': cannot start EM from the given pooled model: {problem}; "
            "pass None to train one here, or set groups.em_init: random"
        )


#: Mean log-likelihood per pair of a fair coin, ``log sigmoid(0)``: fixed before seeing data.
COIN_FLIP = math.log(0.5)


def pooled_initial_assignment(
    pairs: PairDataset, pooled: ScoringModel, *, num_groups: int, seed: int
) -> dict[str, int]:
    """EM's start from a released pooled reward model: each user's cluster from their own pairs.

    A user whose pairs ``pooled`` explains worse than a fair coin, ``mean log sigmoid(r(chosen)
    - r(rejected)) < log 1/2`` (:data:`COIN_FLIP`, a constant, not a quantile over users), starts
    outside cluster 0: in cluster 1, or for more clusters in one drawn from 1..K-1 with a seed
    that depends only on ``seed`` and the user's id. Everyone else starts in cluster 0. The
    pooled model follows the majority, so the users it explains worst are where a minority
    shows; a random start instead gives every cluster the majority's mixture, and EM then tends
    to split the majority. Each user's cluster is a function of the released model and their
    own pairs only, so this is post-processing under user-level DP (module doc).

    Args:
        pairs: The pairs to score (EM's E-step pairs); users without pairs get no entry.
        pooled: A reward model trained on every user's pairs (already released).
        num_groups: K, the number of clusters; with K = 1 everyone is in cluster 0.
        seed: Seed of the draw among clusters 1..K-1 (K > 2 only).
    """
    users, total, counts = _log_likelihoods(pairs, [pooled])
    poor = (total[:, 0] / counts < COIN_FLIP).tolist()
    return {
        u: _other_cluster(u, num_groups, seed) if bad else 0
        for u, bad in zip(users, poor, strict=True)
    }


def _other_cluster(user: str, k: int, seed: int) -> int:
    if k <= 2:
        return k - 1  # K = 1: nowhere else to go
    # Per-user stream: a user's draw never depends on how many or which other users were drawn.
    key = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big")
    return 1 + int(np.random.default_rng([seed, 0xE5, key]).integers(k - 1))


def _noisy_log_prior(
    members: list[set[str]], count_noise: float | None
) -> tuple[Tensor | None, tuple[Mechanism, ...]]:
    """Log mixing proportions from Gaussian-noised cluster sizes, and their mechanism.

    Classification EM with mixing proportions (Celeux & Govaert 1992): a user nearly indifferent
    between two models joins the larger cluster. Sizes are a histogram (adding or removing a user
    changes one count by 1: L2 sensitivity 1), so with ``N(0, count_noise^2)`` noise they are the
    Gaussian mechanism ``Mechanism(count_noise, 1.0, 1)``. Exact sizes would let one user's data
    move other users between clusters (module doc). The noise is secret
    (:mod:`safealign.privacy.secret`), not drawn from the published seed, which would let anyone
    subtract it again.
    """
    if count_noise is None:
        return None, ()
    generator = secret_generator()
    sizes = torch.tensor([len(m) for m in members], dtype=torch.float64)
    noisy = sizes + count_noise * torch.randn(
        len(members), generator=generator, dtype=torch.float64
    )
    noisy = noisy.clamp_min(1.0)
    return torch.log(noisy / noisy.sum()), (Mechanism(count_noise, 1.0, 1),)


def holdout_split(pairs: PairDataset) -> tuple[PairDataset, PairDataset]:
    """Each user's pairs alternately to the M-step (1st, 3rd, ...) and the E-step (2nd, ...)."""
    seen: Counter[str | None] = Counter()
    halves: tuple[list, list] = ([], [])
    for p in pairs:
        halves[seen[p.user_id] % 2].append(p)
        seen[p.user_id] += 1
    return tuple(
        PairDataset(tuple(h), name=f"{pairs.name}[{n}]")
        for h, n in zip(halves, ("fit", "estep"), strict=True)
    )


def assign_users(
    pairs: PairDataset, models: Sequence[ScoringModel], *, log_prior: Tensor | None = None
) -> dict[str, int]:
    """E-step (Chakraborty et al. 2024, Alg. 1): each user's most likely model.

    A user's score under model g is ``sum over their pairs of log sigmoid(r_g(chosen) -
    r_g(rejected))``, plus ``log_prior[g]`` if given; ties go to the lowest index. The result is a
    function of each user's own pairs: keep it internal (never in a report, receipt or log);
    synthetic benchmarks may compare it with the known truth.
    """
    users, total, _ = _log_likelihoods(pairs, models)
    if log_prior is not None:
        total = total + log_prior.to(total)
    return dict(zip(users, total.argmax(-1).tolist(), strict=True))


def _log_likelihoods(
    pairs: PairDataset, models: Sequence[ScoringModel]
) -> tuple[tuple[str, ...], Tensor, Tensor]:
    """Users, each user's ``sum log sigmoid(margin)`` per model ``[U, G]``, their pairs ``[U]``."""
    users = pairs.user_ids
    index = {u: i for i, u in enumerate(users)}
    rows = torch.tensor([index[p.user_id] for p in pairs])
    prompts = [p.prompt for p in pairs]
    total = torch.zeros(len(users), len(models), dtype=torch.float64)
    for g, model in enumerate(models):
        chosen = model.score(prompts, [p.chosen for p in pairs])
        margin = chosen - model.score(prompts, [p.rejected for p in pairs])
        total[:, g].index_add_(0, rows, F.logsigmoid(margin.double()))
    counts = torch.bincount(rows, minlength=len(users)).double()
    return users, total, counts
