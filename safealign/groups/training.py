"""Group reward models for egalitarian (MaxMin) alignment: given groups, or EM over users.

MaxMin-RLHF (Chakraborty et al. 2024) learns one reward model per user group, by EM when groups
are latent (their Alg. 1), then maximises the worst group's reward (``maxmin_solver``). Here every
reward model is trained with DP-SGD. Privacy, under add/remove-one-user adjacency:

* ``given`` groups are disjoint: the group models compose *in parallel* (ε = max over groups).
  All groups run one shared schedule (σ, q, T) planned on the whole dataset, so that max is
  exactly one :class:`Mechanism` at the configured ``target_epsilon``.
* ``em`` trains with user-level DP; its privacy argument (parallel composition within an
  iteration, the initial assignment, and what the guarantee does not cover) is in the docstring
  of :mod:`safealign.groups.em`.

What both share (the :class:`GroupModels` result, the ledger charge, seeds) is in
:mod:`safealign.groups.common`; normalising, reporting and certifying the group
rewards in :mod:`safealign.constraints.group_rewards`.
"""

from __future__ import annotations

from collections import Counter

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
from safealign.groups.em import train_em
from safealign.privacy.accounting import Mechanism
from safealign.privacy.dp_sgd import privacy_units
from safealign.privacy.plan import plan_training
from safealign.privacy.release import ChargeTarget
from safealign.privacy.training import (
    TrainResult,
    commit_fingerprint,
    ledger_commitment_key,
    train_reward_model,
)


def train_group_reward_models(
    pairs: PairDataset,
    *,
    groups: GroupsConfig,
    model_config: ModelConfig,
    seed: int,
    eval_pairs: PairDataset | None = None,
    budget: ChargeTarget | None = None,
    stop_early: bool = False,
    count_noise: float | None = None,
    holdout: bool = False,
    pooled: TrainResult | None = None,
    commitment_key: bytes | None = None,
    progress: bool = False,
) -> GroupModels:
    """Train one DP reward model per user group (``groups.mode`` ``given`` or ``em``).

    ``em`` (MaxMin-RLHF, Chakraborty et al. 2024, Alg. 1; hard assignments per *user*): start
    from ``groups.em_init``: ``pooled`` (:func:`em.pooled_initial_assignment`: users the pooled
    model explains worse than a coin flip in cluster 1, the rest in cluster 0) or ``random``
    (seeded uniform clusters, none empty); M-step: train each non-empty cluster's model on its
    users' pairs (DP-SGD, ``privacy_unit`` forced to ``user``); E-step: move each user to the
    trained cluster whose model gives their pairs the highest ``sum log sigmoid(r(chosen) -
    r(rejected))`` (:func:`em.assign_users`). Run ``em_max_iters``
    M-steps (stop early when no user moves only if ``stop_early``), each charged as one release. The assignments are NOT released (:mod:`em` doc).

    Args:
        pairs: Training pairs; ``em`` needs a ``user_id`` on each, ``given`` a ``group``.
        groups: Mode, number of clusters and EM cap.
        model_config: Backbone, optimisation and privacy of every group model.
        seed: Seed of the initial assignment and of every training run.
        eval_pairs: Held-out pairs for the receipts' metrics (split by group or cluster).
        budget: The ledger budgets of the source dataset
            (:func:`~safealign.privacy.release.budget_target`); if given, every M-step is
            charged as one release.
        stop_early: Stop once no user moves: opt-in (``groups.em_stop_early``), since the
            number of releases then depends on the data, which the DP guarantee does not cover
            (:mod:`em` doc); False (default) always runs ``em_max_iters`` iterations.
        count_noise: If set, each iteration also releases the cluster sizes with Gaussian
            noise of this std (users) and the E-step adds their log shares as a prior
            (:func:`em._noisy_log_prior`; ``groups.em_count_noise`` in a run). Off by default:
            the plain E-step, whose equal priors let a large majority drift into a small
            cluster (benchmarks/README.md, maxmin_groups).
        holdout: Train on half of each user's pairs and run the E-step on the other half
            (:func:`em.holdout_split`), so a user is never scored by a model fitted to the same
            pairs (that in-sample bias keeps users in their current cluster).
        pooled: The released pooled reward model for ``em_init: pooled``: trained on these same
            ``pairs`` (its receipt's fingerprint is checked) and, if the group models are
            private, with user-level DP; it is charged by whoever trained it, not here. If None,
            it is trained here on the M-step pairs with the EM's schedule and charged as one more
            release (the first receipt and mechanism). Ignored by ``given`` and ``random``.
        commitment_key: Key of the receipts' dataset commitments (the ledger's key; default the
            per-user default ledger's); a given ``pooled`` must be committed under the same key.
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
    charge = Charger(budget, model_config)
    key = commitment_key or (budget.ledger.key if budget is not None else ledger_commitment_key())
    if groups.mode == "given":
        return _train_given(pairs, model_config, seed, eval_pairs, charge, key, progress)
    if groups.mode == "em":
        return train_em(
            pairs, groups=groups, model_config=model_config, seed=seed, charge=charge,
            eval_pairs=eval_pairs, stop_early=stop_early, count_noise=count_noise,
            holdout=holdout, pooled=pooled, commitment_key=key, progress=progress,
        )  # fmt: skip
    raise ConfigError(
        f"groups.mode must be 'given' or 'em' to train group models (got {groups.mode!r})"
    )


def _train_given(pairs, config, seed, eval_pairs, charge, key, progress) -> GroupModels:
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
    subsets = {g: subset(pairs, lambda p, g=g: p.group == g, g) for g in names}
    units = {g: privacy_units(subsets[g], unit)[1] for g in names}
    # Groups are disjoint sets of units: parallel composition, ε = max over groups. One shared
    # schedule planned on all units makes every group the same mechanism, so that max is it.
    shared = plan_training(sum(units.values()), config)

    def train() -> list[TrainResult]:
        return [
            train_reward_model(
                subsets[g], config=config, seed=derive_seed(seed, 0, k), plan=group_plan(shared, units[g]),
                eval_pairs=subset(eval_pairs, lambda p, g=g: p.group == g, g),
                commitment_key=key, progress=progress,
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
        release_receipts=tuple(
            release_receipts(
                results, mechanisms, dataset=commit_fingerprint(key, pairs.fingerprint)
            )
        ),
    )
