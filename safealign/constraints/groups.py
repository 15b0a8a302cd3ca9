"""Group reward models for egalitarian (MaxMin) alignment: given groups, or EM over users.

MaxMin-RLHF (Chakraborty et al. 2024) learns one reward model per user group, by EM when groups
are latent (their Alg. 1), then maximises the worst group's reward (``maxmin_solver``). Here every
reward model is trained with DP-SGD. Privacy, under add/remove-one-user adjacency:

* ``given`` groups are disjoint: the group models compose *in parallel* (ε = max over groups).
  All groups run one shared schedule (σ, q, T) planned on the whole dataset, so that max is
  exactly one :class:`Mechanism` at the configured ``target_epsilon``.
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
* Not covered by the DP guarantee (data-dependent control flow): stopping early when no user
  moves (``stop_early=False`` removes it), skipping the M-step of an empty cluster (which then
  keeps its last model, or the pooled one if it never had users), and the exact
  ``assignment_counts`` (sensitivity 1 each).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor

from safealign.config import GroupsConfig, ModelConfig
from safealign.constraints.bounds import BoundKind, upper_bound
from safealign.constraints.group_bounds import PromptGroups, group_rows
from safealign.constraints.solvers import _prepare
from safealign.data.records import PairDataset
from safealign.errors import ConfigError, DataError
from safealign.models.scalar import ScoringModel
from safealign.privacy.accounting import Mechanism
from safealign.privacy.dp_sgd import TrainingPlan, plan_training, privacy_units
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.training import PrivacyReceipt, TrainResult, train_reward_model


@dataclass(frozen=True)
class GroupModels:
    """One DP reward model per group, with what the ledger and the report need.

    Attributes:
        names: Group names (the data's groups, or ``cluster-0``, ... for EM).
        models: The reward models, parallel to ``names`` (an EM cluster that never had users
            holds the pooled model).
        receipts: One per training run, in order (EM: the pooled start model if trained here,
            then one per non-empty cluster and iteration).
        mechanisms: What the ledger composes sequentially: the pooled start model's if trained
            here, then one per EM iteration (plus the count release with ``count_noise``); one
            for given groups; empty if non-private.
        iterations: EM iterations run (1 for given groups).
        assignment_counts: Users (EM) or privacy units (given) per group: exact aggregates,
            not DP-protected (sensitivity 1 each).
        converged: EM stopped because no user moved (True for given groups).
        release_ids: Ledger releases charged (one per iteration, after the pooled start
            model's if trained here), empty without a ledger.
    """

    names: tuple[str, ...]
    models: tuple[ScoringModel, ...]
    receipts: tuple[PrivacyReceipt, ...]
    mechanisms: tuple[Mechanism, ...]
    iterations: int
    assignment_counts: dict[str, int]
    converged: bool
    release_ids: tuple[int, ...] = ()

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


def train_group_reward_models(
    pairs: PairDataset,
    *,
    groups: GroupsConfig,
    model_config: ModelConfig,
    seed: int,
    eval_pairs: PairDataset | None = None,
    ledger: PrivacyLedger | None = None,
    dataset_fingerprint: str | None = None,
    stop_early: bool = True,
    count_noise: float | None = None,
    holdout: bool = False,
    pooled: TrainResult | None = None,
    progress: bool = False,
) -> GroupModels:
    """Train one DP reward model per user group (``groups.mode`` ``given`` or ``em``).

    ``em`` (MaxMin-RLHF, Chakraborty et al. 2024, Alg. 1; hard assignments per *user*): start
    from ``groups.em_init``: ``pooled`` (:func:`pooled_initial_assignment`: users the pooled
    model explains worse than a coin flip in cluster 1, the rest in cluster 0) or ``random``
    (seeded uniform clusters, none empty); M-step: train each non-empty cluster's model on its
    users' pairs (DP-SGD, ``privacy_unit`` forced to ``user``); E-step: move each user to the
    trained cluster whose model gives their pairs the highest ``sum log sigmoid(r(chosen) -
    r(rejected))`` (:func:`assign_users`). Stop when no user moves or after ``em_max_iters``
    M-steps, each charged as one release. The assignments are NOT released (module doc).

    Args:
        pairs: Training pairs; ``em`` needs a ``user_id`` on each, ``given`` a ``group``.
        groups: Mode, number of clusters and EM cap.
        model_config: Backbone, optimisation and privacy of every group model.
        seed: Seed of the initial assignment and of every training run.
        eval_pairs: Held-out pairs for the receipts' metrics (split by group or cluster).
        ledger: If given, every M-step is reserved and committed as one release.
        dataset_fingerprint: The dataset the ledger charges (default ``pairs.fingerprint``).
        stop_early: Stop once no user moves (a data-dependent decision the DP guarantee does
            not cover, module doc); False always runs ``em_max_iters`` iterations.
        count_noise: If set, each iteration also releases the cluster sizes with Gaussian
            noise of this std (users) and the E-step adds their log shares as a prior
            (:func:`_noisy_log_prior`; ``groups.em_count_noise`` in a run). Off by default:
            the plain E-step, whose equal priors let a large majority drift into a small
            cluster (benchmarks/README.md, maxmin_groups).
        holdout: Train on half of each user's pairs and run the E-step on the other half
            (:func:`holdout_split`), so a user is never scored by a model fitted to the same
            pairs (that in-sample bias keeps users in their current cluster).
        pooled: The released pooled reward model for ``em_init: pooled``: trained on these same
            ``pairs`` (its receipt's fingerprint is checked) and, if the group models are
            private, with user-level DP; it is charged by whoever trained it, not here. If None,
            it is trained here on the M-step pairs with the EM's schedule and charged as one more
            release (the first receipt and mechanism). Ignored by ``given`` and ``random``.
        progress: Show training progress bars.

    Raises:
        ConfigError: ``groups.mode`` is ``none``, fewer users than clusters, or a ``pooled``
            model that is not a reward model with (user-level, if private) DP.
        DataError: Missing user ids / groups, a user in two given groups under user-level DP,
            or a ``pooled`` model trained on other pairs.
        BudgetExceededError: The ledger refuses an iteration (earlier ones stay committed).
    """
    if count_noise is not None:
        Mechanism(count_noise, 1.0, 1)  # validates count_noise before any training
    charge = _Charger(ledger, dataset_fingerprint or pairs.fingerprint, model_config)
    if groups.mode == "given":
        return _train_given(pairs, model_config, seed, eval_pairs, charge, progress)
    if groups.mode == "em":
        trainer = _Trainer(model_config, seed, eval_pairs, progress)
        return _train_em(pairs, groups, trainer, charge, (stop_early, count_noise, holdout, pooled))
    raise ConfigError(
        f"groups.mode must be 'given' or 'em' to train group models (got {groups.mode!r})"
    )


@dataclass(frozen=True)
class _Charger:
    """Reserve → train → commit one release per M-step (no-op without a ledger or privacy)."""

    ledger: PrivacyLedger | None
    fingerprint: str
    config: ModelConfig

    def run(
        self, plan: TrainingPlan, label: str, train: Callable, extra: tuple[Mechanism, ...] = ()
    ) -> tuple[list[TrainResult], tuple[Mechanism, ...], int | None]:
        """Train; return the results, the mechanisms to compose and the release id (or None)."""
        if not plan.private:
            return train(), (), None
        if self.ledger is None:
            results = train()
            return results, (_dominating(r.receipt.mechanism for r in results), *extra), None
        accountant = self.config.privacy.accountant
        reservation = self.ledger.reserve(
            self.fingerprint, (plan.mechanism, *extra), label=label, accountant=accountant
        )
        try:
            results = train()
        except BaseException:
            # The run may already have touched the data: charge the whole plan (conservative).
            self.ledger.commit(reservation.id, run_info={"failed": True})
            raise
        spent = (_dominating(r.receipt.mechanism for r in results), *extra)
        self.ledger.commit(reservation.id, mechanisms=spent)
        return results, spent, reservation.id


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


def _group_plan(shared: TrainingPlan, num_units: int) -> TrainingPlan:
    """The shared (σ, q, T) on one group of ``num_units`` units (expected batch q·n)."""
    return replace(shared, num_units=num_units, expected_batch_size=shared.sample_rate * num_units)


def _seed(seed: int, *path: int) -> int:
    # Independent noise per (iteration, cluster): two releases drawing the same Gaussian noise
    # would let an observer cancel it. run_dp_sgd uses seed and seed + 1, so no consecutive seeds.
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0] >> 1)


def _subset(pairs: PairDataset | None, keep: Callable, name: str) -> PairDataset | None:
    if pairs is None:
        return None
    kept = tuple(p for p in pairs if keep(p))
    return PairDataset(kept, name=f"{pairs.name}[{name}]") if kept else None


def _train_given(pairs, config, seed, eval_pairs, charge, progress) -> GroupModels:
    unit = config.privacy.privacy_unit
    missing = sum(p.group is None for p in pairs)
    if missing or not pairs.groups:
        raise DataError(
            f"groups.mode 'given' needs a group on every pair; {missing} of {len(pairs)} have none",
            path=pairs.name,
        )
    names = pairs.groups
    memberships = Counter(u for u, _ in {(p.user_id, p.group) for p in pairs})
    shared_users = sorted(u for u, n in memberships.items() if n > 1)
    if unit == "user" and shared_users:  # parallel composition needs disjoint users
        raise DataError(
            f"{len(shared_users)} users appear in several groups (e.g. {shared_users[0]!r}); "
            "user-level DP over given groups needs each user in one group",
            path=pairs.name,
        )
    subsets = {g: _subset(pairs, lambda p, g=g: p.group == g, g) for g in names}
    units = {g: privacy_units(subsets[g], unit)[1] for g in names}
    # Groups are disjoint sets of units: parallel composition, ε = max over groups. One shared
    # schedule planned on all units makes every group the same mechanism, so that max is it.
    shared = plan_training(sum(units.values()), config)

    def train() -> list[TrainResult]:
        return [
            train_reward_model(
                subsets[g], config=config, seed=_seed(seed, 0, k), plan=_group_plan(shared, units[g]),
                eval_pairs=_subset(eval_pairs, lambda p, g=g: p.group == g, g), progress=progress,
            )
            for k, g in enumerate(names)
        ]  # fmt: skip

    results, mechanisms, release = charge.run(shared, "group reward models (given groups)", train)
    return GroupModels(
        names=names,
        models=tuple(r.model for r in results),
        receipts=tuple(r.receipt for r in results),
        mechanisms=mechanisms,
        iterations=1,
        assignment_counts=dict(units),
        converged=True,
        release_ids=(release,) if release is not None else (),
    )


def _initial_assignment(users: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """Seeded i.i.d. uniform clusters, redrawn until none is empty (data-independent: module doc)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE4]))
    while True:
        labels = rng.integers(0, k, len(users))
        if len(set(labels.tolist())) == k:
            return dict(zip(users, labels.tolist(), strict=True))


@dataclass(frozen=True)
class _Trainer:
    """Trains one cluster's model with the EM's shared schedule (set by :func:`_train_em`)."""

    config: ModelConfig
    seed: int
    eval_pairs: PairDataset | None
    progress: bool
    fit: PairDataset | None = None
    shared: TrainingPlan | None = None

    def train(self, users: set[str], path: tuple[int, int], name: str) -> TrainResult:
        def keep(p) -> bool:
            return p.user_id in users

        return train_reward_model(
            _subset(self.fit, keep, name), config=self.config, seed=_seed(self.seed, *path),
            plan=_group_plan(self.shared, len(users)),
            eval_pairs=_subset(self.eval_pairs, keep, name), progress=self.progress,
        )  # fmt: skip


def _train_em(pairs, groups, trainer, charge, options) -> GroupModels:
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
    receipts, mechanisms, releases = start
    trained: set[int] = set()  # clusters with a model of their own (others hold the pooled one)
    converged = False
    for iteration in range(1, groups.em_max_iters + 1):
        members = [{u for u, c in assignment.items() if c == j} for j in range(k)]
        busy = [j for j in range(k) if members[j]]  # an emptied cluster keeps its last model

        def train(members=members, busy=busy, t=iteration) -> list[TrainResult]:
            return [trainer.train(members[j], (t, j), f"cluster-{j}") for j in busy]

        log_prior, extra = _noisy_log_prior(members, count_noise, _seed(trainer.seed, iteration, k))
        label = f"group reward models, EM iteration {iteration}"
        results, spent, release = charge.run(shared, label, train, extra)
        for j, result in zip(busy, results, strict=True):
            models[j] = result.model
        trained.update(busy)
        receipts += [r.receipt for r in results]
        mechanisms += spent
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
    )


def _em_start(pairs, held_out, groups, trainer, charge, pooled):
    """Initial assignment, initial models, and (receipts, mechanisms, releases) spent on them."""
    k = groups.num_groups
    if groups.em_init == "random":
        return _initial_assignment(pairs.user_ids, k, trainer.seed), [None] * k, ([], [], [])
    receipts, mechanisms, releases = [], [], []
    if pooled is None:  # EM's own "iteration 0": one cluster of every user, charged as a release
        label = "group reward models, EM start (pooled model)"
        everyone = set(pairs.user_ids)
        results, mechanisms, release = charge.run(
            trainer.shared, label, lambda: [trainer.train(everyone, (0, 0), "pooled")]
        )
        pooled, receipts = results[0], [results[0].receipt]
        releases = [release] if release is not None else []
    else:
        _check_pooled(pooled, pairs, trainer.config)
    start = pooled_initial_assignment(held_out, pooled.model, num_groups=k, seed=trainer.seed)
    # No E-step pairs (a single pair under holdout): no evidence against the pooled model.
    assignment = {**dict.fromkeys(pairs.user_ids, 0), **start}
    # A cluster that starts empty holds the pooled model until (unless) it gets users.
    return assignment, [pooled.model] * k, (receipts, list(mechanisms), releases)


def _check_pooled(pooled: TrainResult, pairs: PairDataset, config: ModelConfig) -> None:
    """The pooled model must be a release on these pairs that the user-level guarantee covers."""
    receipt = pooled.receipt
    if receipt.dataset_fingerprint != pairs.fingerprint:
        raise DataError(
            f"the pooled model was trained on dataset {receipt.dataset_fingerprint[:12]}..., the "
            f"group models train on {pairs.fingerprint[:12]}...; pass the reward model trained on "
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
    members: list[set[str]], count_noise: float | None, seed: int
) -> tuple[Tensor | None, tuple[Mechanism, ...]]:
    """Log mixing proportions from Gaussian-noised cluster sizes, and their mechanism.

    Classification EM with mixing proportions (Celeux & Govaert 1992): a user nearly indifferent
    between two models joins the larger cluster. Sizes are a histogram (adding or removing a user
    changes one count by 1: L2 sensitivity 1), so with ``N(0, count_noise^2)`` noise they are the
    Gaussian mechanism ``Mechanism(count_noise, 1.0, 1)``. Exact sizes would let one user's data
    move other users between clusters (module doc).
    """
    if count_noise is None:
        return None, ()
    generator = torch.Generator().manual_seed(seed)
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


def normalize_group_rewards(
    rewards: Tensor,
    *,
    mode: str = "reference",
    beta: float | None = None,
    log_p: Tensor | None = None,
) -> Tensor:
    """Make group rewards ``[G, N, K]`` comparable before MaxMin takes their minimum.

    Bradley–Terry rewards are defined up to a per-prompt shift (different for every group model),
    so a raw minimum compares arbitrary offsets.

    * ``reference`` (default): ``r_g - E_p[r_g]`` per prompt under the reference distribution p
      over the candidates: 0 means "as good as the reference policy" for every group; needs no β.
    * ``regret``: ``r_g - β log Z_g``, ``Z_g = sum_k p_k exp(r_g / β)`` per prompt: each group's
      own optimum ``max_q E_q[r] - β KL(q || p)`` is then exactly 0.

    Args:
        rewards: ``[G, N, K]``.
        mode: ``reference`` or ``regret``.
        beta: The policy's KL coefficient (required by ``regret``).
        log_p: Reference log-probabilities ``[N, K]``; uniform over the candidates if None.
    """
    if rewards.ndim != 3:
        raise DataError(f"rewards must have shape [G, N, K] (got {tuple(rewards.shape)})")
    if mode not in ("reference", "regret"):
        raise ConfigError(f"groups.normalize must be 'reference' or 'regret' (got {mode!r})")
    if mode == "regret" and beta is None:
        raise ConfigError("normalize 'regret' needs beta, the policy's KL coefficient")
    scale = beta if mode == "regret" else 1.0  # _prepare validates beta; reference needs none
    prepared = [_prepare(r, log_p, beta=scale, dtype=torch.float64) for r in rewards]
    r = torch.stack([x for x, _ in prepared])
    log_p = prepared[0][1]
    if mode == "reference":
        p = log_p.exp()
        return r - (p * r).sum(-1, keepdim=True)
    return r - beta * torch.logsumexp(log_p + r / beta, dim=-1, keepdim=True)


def _per_prompt(q, values: Tensor, name: str, prompt_groups) -> Tensor:
    """``sum_k q[n, k] values[n, k]`` over the prompts of ``name`` (all if no prompt_groups)."""
    policy = (q.q if hasattr(q, "q") else q).double()  # a tensor or a solver result
    if values.shape != policy.shape:
        raise DataError(f"rewards/costs {tuple(values.shape)} do not match q {tuple(policy.shape)}")
    rows = torch.arange(policy.shape[0])
    if prompt_groups is not None:
        if len(prompt_groups) != policy.shape[0]:
            raise DataError(
                f"prompt_groups has {len(prompt_groups)} entries for {len(rows)} prompts"
            )
        rows = torch.tensor(group_rows(prompt_groups, name), dtype=torch.long)
    if rows.numel() < 2:
        raise DataError(f"group {name!r} has {rows.numel()} evaluation prompts; at least 2 needed")
    return (policy[rows] * values[rows].to(policy)).sum(-1)


def group_report(
    q,
    rewards: Tensor,
    *,
    names: Sequence[str],
    sizes: Mapping[str, int] | None = None,
    prompt_groups: Sequence[PromptGroups] | None = None,
    confidence: float = 0.95,
) -> dict:
    """Each group's expected reward under ``q`` with a Student-t interval, and the worst group.

    The i.i.d. units are prompts, ``v_n = sum_k q[n, k] r_g[n, k]``; the interval is
    ``mean ± t_{(1+confidence)/2}(n-1) s / sqrt(n)``.

    Args:
        q: Policy ``[N, K]`` or a result with ``.q`` (``MaxMinResult``, ``SolverResult``).
        rewards: ``[G, N, K]``, true (synthetic) or normalised model rewards.
        names: Group names, parallel to ``rewards``.
        sizes: Group sizes (users); default the number of evaluation prompts.
        prompt_groups: Each prompt's group, or a collection of groups (a prompt asked by users
            of several groups counts for each), to evaluate a group on its own prompts only
            (default: every prompt counts for every group).
        confidence: Coverage of the two-sided interval.

    Returns:
        ``{name: {"size", "reward", "reward_ci": [lo, hi], "cost_upper_bound": None,
        "reward_lower_bound": None}, ..., "worst_group": name}``.
    """
    if rewards.ndim != 3 or len(names) != rewards.shape[0]:
        raise DataError(f"rewards {tuple(rewards.shape)} must be [G, N, K] with G = {len(names)}")
    report: dict = {}
    for g, name in enumerate(names):
        values = _per_prompt(q, rewards[g], name, prompt_groups)
        n, mean = values.numel(), float(values.mean())
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(values.std()) / math.sqrt(n)
        report[name] = {
            "size": int(sizes[name] if sizes is not None else n),
            "reward": mean,
            "reward_ci": [mean - half, mean + half],
            "cost_upper_bound": None,
            "reward_lower_bound": None,
        }
    report["worst_group"] = min(names, key=lambda name: report[name]["reward"])
    return report


def certify_groups(
    q,
    rewards: Tensor,
    *,
    names: Sequence[str],
    costs: Tensor | None = None,
    sizes: Mapping[str, int] | None = None,
    prompt_groups: Sequence[PromptGroups] | None = None,
    confidence: float = 0.95,
    bound: BoundKind = "student_t",
    cost_range: tuple[float, float] | None = None,
    reward_range: tuple[float, float] | None = None,
) -> dict:
    """:func:`group_report` plus each group's cost upper and reward lower confidence bound.

    Where groups are given, evaluate each on its own held-out prompts (``prompt_groups``): the
    cost bound is :func:`bounds.upper_bound` of the group's per-prompt expected costs, and
    ``reward_lower_bound = -upper_bound(-v)`` of its expected rewards. Each bound holds with
    probability ``confidence`` alone; for all 2G at once pass ``1 - (1 - confidence) / (2G)``.

    Args:
        q, rewards, names, sizes, prompt_groups, confidence: As in :func:`group_report`.
        costs: Costs ``[N, K]``; without them ``cost_upper_bound`` stays None.
        bound: ``student_t`` or ``hoeffding`` (which needs the ranges).
        cost_range: Declared range of the costs (for ``hoeffding``).
        reward_range: Declared range of the rewards (for ``hoeffding``).
    """
    report = group_report(
        q, rewards, names=names, sizes=sizes, prompt_groups=prompt_groups, confidence=confidence
    )
    flipped = None if reward_range is None else (-reward_range[1], -reward_range[0])
    for g, name in enumerate(names):
        values = _per_prompt(q, rewards[g], name, prompt_groups)
        lower = upper_bound(-values, confidence=confidence, bound=bound, value_range=flipped)
        report[name]["reward_lower_bound"] = -lower.upper_bound
        if costs is not None:
            spend = _per_prompt(q, costs, name, prompt_groups)
            upper = upper_bound(spend, confidence=confidence, bound=bound, value_range=cost_range)
            report[name]["cost_upper_bound"] = upper.upper_bound
    return report
