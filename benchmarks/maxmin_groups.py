"""MaxMin over EM group reward models vs one pooled reward model, on the synthetic world.

The world's users come in two groups at 10:1 with conflicting style preferences (defaults:
majority +0.3 formal, minority -1.0, i.e. casual); 264 users x 40 pairs. Every reward model is
the world's feature model (``--backbone features``: the algorithm is measured, not how well a
random-init text encoder learns; ``--backbone tiny`` uses a tiny BERT with LoRA) trained with
user-level DP-SGD at ``target_epsilon`` = 8 *per release*
(the pooled model is one release, each EM iteration another; the JSON gives EM's composed ε, alone
and with the pooled release). EM starts from that released pooled model (``--em-init pooled``, the
library default: users it explains worse than a coin flip start in cluster 1; ``random`` for a
seeded random start) and runs the pipeline's E-step on all of a user's pairs (``--holdout``: M-steps
fit the 1st, 3rd, ... pair of each user and E-steps score the others; ``--count-noise S`` adds the
noisy-size prior). We measure:

* cluster accuracy: EM's final assignment (:func:`assign_users`, internal state that is never
  released; compared here only because the world is synthetic) against the true groups, up to
  label permutation, with each group's recall;
* each group's TRUE expected reward (the world's ``true_rewards`` on held-out candidate sets) under
  (a) the pooled model's KL-regularised optimum (``solve_unconstrained``), (b) MaxMin over the EM
  models' rewards normalised by ``--normalize`` (``solve_maxmin``; the other normalisation is
  reported beside it, on the same models), and (c) each group's own optimum,
  ``solve_unconstrained`` on that group's TRUE reward (the ceiling no learnt model can beat;
  ``own_model_optimum_reward`` is the same with the group's EM cluster model instead).

Targets: cluster accuracy >= 0.9; MaxMin closes >= 30% of the minority's gap between (a) and
(c); the majority loses less true reward than the minority gains.

Usage: python benchmarks/maxmin_groups.py --out benchmarks/results/maxmin_groups.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from itertools import permutations
from pathlib import Path

import numpy as np
import torch

from safealign import train_group_reward_models, train_reward_model
from safealign._atomic import atomic_write_text
from safealign.config import (
    GroupsConfig,
    LoraConfig,
    ModelConfig,
    PrivacyConfig,
    SyntheticConfig,
    TrainConfig,
)
from safealign.constraints import (
    group_report,
    normalize_group_rewards,
    solve_maxmin,
    solve_unconstrained,
)
from safealign.data import SyntheticWorld
from safealign.groups import score_candidates
from safealign.groups.em import assign_users, holdout_split, pooled_initial_assignment
from safealign.privacy import compute_epsilon


def _model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        backbone=args.backbone,
        lora=LoraConfig(r=args.lora_r) if args.backbone != "features" else None,
        train=TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length
        ),
        privacy=PrivacyConfig(
            target_epsilon=args.epsilon,
            target_delta=args.delta,
            max_grad_norm=args.max_grad_norm,
            privacy_unit="user",
        ),
    )


def _cluster_accuracy(world: SyntheticWorld, assignment: dict[str, int], k: int) -> dict:
    """Best accuracy over label permutations, each group's recall, cluster -> true group."""
    truth = dict(zip(world.user_ids, world.user_groups, strict=True))
    names = sorted(world.group_weights)
    best = None
    for perm in permutations(range(k), len(names)):
        label = {c: names[i] for i, c in enumerate(perm)}
        hits = sum(label.get(c) == truth[u] for u, c in assignment.items())
        if best is None or hits > best[0]:
            best = (hits, label)
    hits, label = best
    recall = {}
    for g in names:
        users = [u for u in assignment if truth[u] == g]
        recall[g] = sum(label.get(assignment[u]) == g for u in users) / max(1, len(users))
    return {"accuracy": hits / len(assignment), "recall": recall, "cluster_group": label}


def _true_rewards(q: torch.Tensor, true: dict[str, np.ndarray]) -> dict[str, float]:
    return {g: float((q * torch.from_numpy(r)).sum(-1).mean()) for g, r in true.items()}


def _policies(args, world, pooled, em, cluster_group) -> tuple[dict, dict, object]:
    """Candidates, then each policy's TRUE per-group reward; also the MaxMin result."""
    # Held-out prompts: none appears in a training pair.
    seen = set(world.pairs.prompts)
    unseen = [p for p in world.prompts if p not in seen]
    rng = np.random.default_rng(args.seed + 1)
    size = min(args.prompts, len(unseen))
    prompts = [unseen[i] for i in rng.choice(len(unseen), size=size, replace=False)]
    cands = world.sample_candidates(prompts, num_candidates=args.candidates, seed=args.seed + 2)
    pooled_r = score_candidates([pooled], prompts, cands.responses)[0]
    group_r = em.score_candidates(prompts, cands.responses)
    normalised = normalize_group_rewards(group_r, mode=args.normalize, beta=args.beta)
    maxmin = solve_maxmin(normalised, beta=args.beta)
    other = "regret" if args.normalize == "reference" else "reference"
    alternative = solve_maxmin(
        normalize_group_rewards(group_r, mode=other, beta=args.beta), beta=args.beta
    )
    out = {
        "pooled": _true_rewards(solve_unconstrained(pooled_r, beta=args.beta), cands.true_rewards),
        "maxmin": _true_rewards(maxmin.q, cands.true_rewards),
        f"maxmin_{other}": _true_rewards(alternative.q, cands.true_rewards),
        "own_optimum": {},
        "own_model_optimum": {},
    }
    for g, r in cands.true_rewards.items():
        own = solve_unconstrained(torch.from_numpy(r), beta=args.beta)
        out["own_optimum"][g] = _true_rewards(own, {g: r})[g]
        clusters = [c for c, name in cluster_group.items() if name == g]
        if clusters:
            q = solve_unconstrained(group_r[clusters[0]], beta=args.beta)
            out["own_model_optimum"][g] = _true_rewards(q, {g: r})[g]
    reference = {g: float(r.mean()) for g, r in cands.true_rewards.items()}
    return out, reference, (maxmin, cands)


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    world = SyntheticWorld(
        SyntheticConfig(
            num_prompts=args.world_prompts,
            num_users=args.users,
            pairs_per_user=args.pairs_per_user,
        ),
        seed=args.seed,
    )
    pairs, config = world.pairs, _model_config(args)
    pooled = train_reward_model(pairs, config=config, seed=args.seed, progress=False)
    t_pooled = time.perf_counter() - start
    groups = GroupsConfig(mode="em", num_groups=2, em_max_iters=args.em_iters, em_init=args.em_init)
    # The pooled model above is the released one EM starts from (em_init pooled): same pairs,
    # user-level DP, charged once (its epsilon is in the JSON); EM spends nothing more on it.
    em = train_group_reward_models(
        pairs, groups=groups, model_config=config, seed=args.seed,
        count_noise=args.count_noise, holdout=args.holdout, pooled=pooled,
    )  # fmt: skip
    t_em = time.perf_counter() - start - t_pooled
    # Scored on the pairs the models were not fitted to, as in EM's own E-step.
    scored = holdout_split(pairs)[1] if args.holdout else pairs
    recovery = _cluster_accuracy(world, assign_users(scored, em.models), groups.num_groups)
    if args.em_init == "pooled":
        start_assignment = pooled_initial_assignment(
            scored, pooled.model, num_groups=groups.num_groups, seed=args.seed
        )
        recovery["start"] = _cluster_accuracy(world, start_assignment, groups.num_groups)
    print(f"EM: {em.iterations} iterations, accuracy {recovery['accuracy']:.3f}", flush=True)
    cluster_group = dict(recovery["cluster_group"])
    rewards, reference, (maxmin, cands) = _policies(args, world, pooled.model, em, cluster_group)
    names = sorted(world.group_weights)
    sizes = {g: world.user_groups.count(g) for g in names}
    true = torch.from_numpy(np.stack([cands.true_rewards[g] for g in names]))
    report = group_report(maxmin, true, names=names, sizes=sizes)
    return _payload(args, world, em, pooled, recovery, rewards, reference, report, maxmin,
                    sizes, {"pooled_model": t_pooled, "em": t_em,
                            "total": time.perf_counter() - start})  # fmt: skip


def _payload(args, world, em, pooled, recovery, rewards, reference, report, maxmin, sizes, times):
    minority = min(sizes, key=sizes.get)
    majority = max(sizes, key=sizes.get)
    gain = rewards["maxmin"][minority] - rewards["pooled"][minority]
    loss = rewards["pooled"][majority] - rewards["maxmin"][majority]
    gap = rewards["own_optimum"][minority] - rewards["pooled"][minority]
    composed = (
        compute_epsilon(list(em.mechanisms), target_delta=args.delta) if em.mechanisms else None
    )
    # With em_init pooled, EM's output is post-processing of the pooled release too: its
    # guarantee is the composition of both.
    start = [pooled.receipt.mechanism] if args.em_init == "pooled" else []
    spent = [m for m in (*start, *em.mechanisms) if m is not None]
    total = compute_epsilon(spent, target_delta=args.delta) if spent else None
    groups = {
        g: {
            "size": sizes[g],
            "pooled_reward": rewards["pooled"][g],
            "maxmin_reward": rewards["maxmin"][g],
            "own_optimum_reward": rewards["own_optimum"][g],
            "own_model_optimum_reward": rewards["own_model_optimum"].get(g),
            "reference_reward": reference[g],
            "maxmin_reward_ci": report[g]["reward_ci"],
            "recall": recovery["recall"][g],
        }
        for g in sizes
    }
    other = "regret" if args.normalize == "reference" else "reference"
    alt_gain = rewards[f"maxmin_{other}"][minority] - rewards["pooled"][minority]
    alt_loss = rewards["pooled"][majority] - rewards[f"maxmin_{other}"][majority]
    return {
        "cluster_accuracy": recovery["accuracy"],
        "groups": groups,
        "minority": minority,
        "minority_gap_closed": gain / gap if gap else None,
        "minority_gain": gain,
        "majority_loss": loss,
        "targets": {
            "cluster_accuracy>=0.9": recovery["accuracy"] >= 0.9,
            "gap_closed>=0.3": gap > 0 and gain / gap >= 0.3,
            "majority_loss<minority_gain": loss < gain,
        },
        "maxmin_weights": [float(w) for w in maxmin.weights],
        # The same EM models, normalised the other way before the min (not the headline).
        f"with_{other}_normalisation": {
            "minority_gap_closed": alt_gain / gap if gap else None,
            "minority_gain": alt_gain,
            "majority_loss": alt_loss,
            "maxmin_reward": {g: rewards[f"maxmin_{other}"][g] for g in sizes},
        },
        "em": {
            "iterations": em.iterations,
            "converged": em.converged,
            "cluster_sizes": em.assignment_counts,
            "init": args.em_init,
            "start": recovery.get("start"),
        },  # fmt: skip
        "privacy": {
            "privacy_unit": "user",
            "target_epsilon_per_release": args.epsilon,
            "target_delta": args.delta,
            "em_mechanisms": [m.__dict__ for m in em.mechanisms],
            "em_composed_epsilon": composed.epsilon if composed else None,
            "em_with_start_composed_epsilon": total.epsilon if total else None,
            "pooled_epsilon": pooled.receipt.epsilon,
        },
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": times,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }


def _plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(payload["groups"])
    series = [("pooled", "pooled_reward"), ("MaxMin (EM)", "maxmin_reward"),
              ("own optimum (true r)", "own_optimum_reward")]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(series)
    for i, (label, key) in enumerate(series):
        values = [payload["groups"][g][key] for g in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=label)
    ax.set_xticks(
        np.arange(len(names)) + width, [f"{g} (n={payload['groups'][g]['size']})" for g in names]
    )
    ax.set_ylabel("true expected reward")
    eps = payload["privacy"]["target_epsilon_per_release"]
    ax.set_title(f"Per-group true reward, user-level DP (ε={eps} per release)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result (PNG beside it)")
    parser.add_argument("--users", type=int, default=264)
    parser.add_argument("--pairs-per-user", type=int, default=40)
    parser.add_argument("--world-prompts", type=int, default=5760, help="the maximum")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="expected users per step")
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--backbone", default="features",
                        help="features (default), or tiny: text, with LoRA --lora-r")  # fmt: skip
    parser.add_argument("--lora-r", type=int, default=8, help="text backbones only")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--em-iters", type=int, default=6)
    defaults = GroupsConfig()
    parser.add_argument("--em-init", choices=["pooled", "random"], default=defaults.em_init,
                        help="EM's start (GroupsConfig.em_init)")  # fmt: skip
    parser.add_argument("--count-noise", type=float, default=defaults.em_count_noise,
                        help="EM prior from noisy sizes (GroupsConfig.em_count_noise)")  # fmt: skip
    parser.add_argument("--holdout", action=argparse.BooleanOptionalAction, default=False,
                        help="E-step on held-out halves of each user's pairs (the pipeline's "
                             "EM does not hold out)")  # fmt: skip
    parser.add_argument("--normalize", choices=["reference", "regret"], default=defaults.normalize,
                        help="group rewards before the min (GroupsConfig.normalize)")  # fmt: skip
    parser.add_argument("--prompts", type=int, default=500, help="held-out prompts to evaluate")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    payload = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    _plot(payload, args.out.with_suffix(".png"))
    g, m = payload["groups"], payload["minority"]
    print(
        f"maxmin_groups: cluster accuracy {payload['cluster_accuracy']:.3f}; minority {m} true reward "
        f"pooled {g[m]['pooled_reward']:.3f} -> MaxMin {g[m]['maxmin_reward']:.3f} (own optimum "
        f"{g[m]['own_optimum_reward']:.3f}, gap closed {payload['minority_gap_closed']:.0%}); "
        f"majority loss {payload['majority_loss']:.3f} vs minority gain {payload['minority_gain']:.3f}; "
        f"{payload['seconds']['total']:.0f} s"
    )
    other = next(k for k in payload if k.startswith("with_"))
    alt = payload[other]
    print(
        f"  {other}: gap closed {alt['minority_gap_closed']:.0%}; majority loss "
        f"{alt['majority_loss']:.3f} vs minority gain {alt['minority_gain']:.3f}"
    )


if __name__ == "__main__":
    main()
