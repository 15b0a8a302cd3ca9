"""Real-data privacy–utility: DP heads over frozen MiniLM against LoRA, on HH-RLHF harmless-base.

Data: all of ``hh-rlhf-harmless-base/test.jsonl.gz`` (2,307 usable pairs) loaded with
``chosen_is_safer`` (annotators chose the less harmful reply), split by prompt (``split_pairs``,
seed 0) into a training pool and held-out pairs (``--eval-fraction``). The model is the cost
model (pairwise Safe RLHF term only: no per-response labels exist): pair accuracy is the share of
held-out pairs whose rejected response costs more.

1. **Tuning on validation folds of the training pool only**: ``--folds`` folds by prompt. First
   non-privately, the grid (``--grid-*``) over what the encoder reads (``head.text``), whether
   the pooled state is L2-normalised (``head.normalize``), head type, learning rate, epochs and
   weight decay; then, with the best of those, DP-SGD at ``--tune-epsilon`` over batch size and
   clipping norm (``--grid-batch-size``, ``--grid-max-grad-norm``). The setting with the best
   mean validation accuracy is used for every ε. The held-out pairs are never looked at; the
   tuning itself is not privacy-accounted (it reads the training pool only).
2. **Head, ε ∈ ``--epsilons`` × ``--seeds``** on the whole training pool, held-out pair accuracy
   with its binomial standard error per run and the standard error of the mean over seeds.
3. **LoRA at one setting** (``--lora-epsilon``, one seed, the example's hyperparameters) on a
   seeded subset of ``--lora-train-pairs`` training pairs, and the head at the same ε and seed on
   the *same* subset with a fresh embedding cache, so the CPU-time ratio is measured side by side
   at equal data, embeddings included. (LoRA on all 1.8k pairs takes ~20 min per model here.)
4. **Transfer**: the head cost models (``--transfer-epsilon`` and non-private, every seed) score
   ``openai-moderation/samples-1680.jsonl.gz`` texts (as the response, with an empty prompt);
   AUROC against "any known harm label is 1" (rows whose labels are all unknown are dropped).

CPU seconds are ``time.process_time()`` (all threads of this process); torch runs on
``--threads`` threads. The embedding pass is counted in full in *every* head model's seconds: its
CPU per text is measured on a fresh pass over ``--timing-pairs`` pairs and multiplied by the
pool's texts (``--cache-dir`` may hold entries from an interrupted run). Transfer uses a seeded
subset of ``--moderation-texts`` texts, LoRA's accuracy a seeded subset of ``--lora-eval-pairs``
held-out pairs: both to fit the shared 2-core machine.

Usage: HF_HUB_OFFLINE=1 nice python benchmarks/hh_heads.py --cache-dir DIR --out benchmarks/results/hh_heads.json
       python benchmarks/hh_heads.py --quick --out /tmp/hh.json     # tiny backbone, seconds
       ... --hp-from benchmarks/results/hh_heads.json --lora-train-pairs 512 --out OTHER.json
                                                  # only LoRA vs head, with that run's settings
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

# Shared with the earlier LoRA study (run as `python benchmarks/hh_heads.py`: a sibling module).
from privacy_utility import HH_RLHF, SHARED_DATA, TARGET_DELTA, _log, _subset, minilm_path

from safealign._atomic import atomic_write_text
from safealign.config import HeadConfig, LoraConfig, ModelConfig, PrivacyConfig, TrainConfig
from safealign.data.loaders import load_pairs
from safealign.data.records import PairDataset
from safealign.data.splits import split_pairs
from safealign.models.embeddings import embedding_cache
from safealign.models.evaluate import auroc, evaluate_scoring_model
from safealign.models.pairs import embed_pairs
from safealign.models.scalar import build_scoring_model
from safealign.privacy.training import train_cost_model

MODERATION = SHARED_DATA / "openai-moderation" / "samples-1680.jsonl.gz"
HARM_KEYS = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")


def _folds(pairs: PairDataset, k: int) -> list[tuple[PairDataset, PairDataset]]:
    """``k`` (train, validation) folds of ``pairs`` with disjoint prompts (seeded)."""
    prompts = sorted({p.prompt for p in pairs})
    random.Random(0).shuffle(prompts)
    fold_of = {p: i % k for i, p in enumerate(prompts)}
    out = []
    for i in range(k):
        val = tuple(p for p in pairs if fold_of[p.prompt] == i)
        fit = tuple(p for p in pairs if fold_of[p.prompt] != i)
        out.append((PairDataset(fit, name=f"fold{i}-fit"), PairDataset(val, name=f"fold{i}-val")))
    return out


HP_KEYS = ("text", "normalize", "layers", "lr", "epochs", "weight_decay")
DP_KEYS = ("batch_size", "max_grad_norm")


def head_config(args, epsilon: float | None, hp: dict) -> ModelConfig:
    head = HeadConfig(
        layers=hp["layers"], hidden_size=args.mlp_hidden, embed_batch_size=args.embed_batch_size,
        text=hp["text"], normalize=hp["normalize"],
    )  # fmt: skip
    train = TrainConfig(
        epochs=hp["epochs"], batch_size=hp.get("batch_size", args.batch_size), lr=hp["lr"],
        weight_decay=hp["weight_decay"], max_length=args.max_length,
    )  # fmt: skip
    privacy = PrivacyConfig(
        target_epsilon=epsilon, target_delta=TARGET_DELTA,
        max_grad_norm=hp.get("max_grad_norm", args.max_grad_norm),
    )  # fmt: skip
    return ModelConfig(
        backbone=args.backbone_path, pooling="mean", lora=None, head=head, train=train,
        privacy=privacy,
    )  # fmt: skip


def lora_config(args, epsilon: float | None) -> ModelConfig:
    return ModelConfig(
        backbone=args.backbone_path,
        pooling="mean",
        lora=LoraConfig(r=8, alpha=16),
        train=TrainConfig(
            epochs=args.lora_epochs, batch_size=32, lr=5e-4, max_length=args.max_length
        ),
        privacy=PrivacyConfig(
            target_epsilon=epsilon, target_delta=TARGET_DELTA, max_grad_norm=args.max_grad_norm
        ),
    )


def _accuracy(result, held_out: PairDataset) -> float:
    return float(evaluate_scoring_model(result.model, held_out)["eval/pair_accuracy"])


def _se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def _grid_search(args, folds, grid: list[dict], epsilon: float | None, label: str) -> list[dict]:
    rows = []
    for hp in grid:
        accs = []
        for fit, val in folds:
            result = train_cost_model(
                fit, config=head_config(args, epsilon, hp), seed=0, progress=False
            )
            accs.append(_accuracy(result, val))
        rows.append({**hp, "validation_accuracy": statistics.fmean(accs), "folds": accs})
        _log(f"  {label} {hp}: {rows[-1]['validation_accuracy']:.4f}")
    return rows


def tune(args, pool: PairDataset) -> dict:
    """Grid search on prompt-disjoint folds of the training pool only (module doc, 1): first the
    featurisation and head non-privately, then DP-SGD's batch size and clipping norm at
    ``--tune-epsilon`` with the chosen rest."""
    folds = _folds(pool, args.folds)
    grid = [
        dict(zip(HP_KEYS, values, strict=True))
        for values in itertools.product(
            args.grid_text, args.grid_normalize, args.grid_layers, args.grid_lr,
            args.grid_epochs, args.grid_weight_decay,
        )
    ]  # fmt: skip
    rows = _grid_search(args, folds, grid, None, "tune (non-private)")
    best = max(rows, key=lambda r: r["validation_accuracy"])
    chosen = {k: best[k] for k in HP_KEYS}
    dp_grid = [
        {**chosen, "batch_size": b, "max_grad_norm": c}
        for b, c in itertools.product(args.grid_batch_size, args.grid_max_grad_norm)
    ]
    dp_rows = []
    if len(dp_grid) > 1:
        dp_rows = _grid_search(
            args, folds, dp_grid, args.tune_epsilon, f"tune (ε={args.tune_epsilon:g})"
        )
        dp_best = max(dp_rows, key=lambda r: r["validation_accuracy"])
    else:
        dp_best = dp_grid[0]
    chosen.update({k: dp_best[k] for k in DP_KEYS})
    return {"grid": rows, "dp_grid": dp_rows, "chosen": chosen,
            "fold_sizes": [len(v) for _, v in folds]}  # fmt: skip


def moderation_texts(path: Path, limit: int | None) -> tuple[list[str], torch.Tensor]:
    """Texts with at least one known label and whether any is 1; a seeded subset of ``limit``."""
    texts, harmful = [], []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            known = [row[k] for k in HARM_KEYS if k in row]
            if not known:
                continue
            texts.append(row["prompt"])
            harmful.append(any(v == 1 for v in known))
    if limit is not None and limit < len(texts):
        keep = sorted(random.Random(3).sample(range(len(texts)), limit))
        texts, harmful = [texts[i] for i in keep], [harmful[i] for i in keep]
    return texts, torch.tensor(harmful)


def embedding_pass(args, text: str, pool, held_out, transfer) -> float:
    """Fill the active cache for encoder input ``text``; CPU seconds per text from a fresh pass
    over a sample (the shared cache may already hold entries from an earlier, interrupted run)."""
    _log(f"embedding pass ({text})")
    hp = {"text": text, "normalize": False, "layers": "linear", "lr": 1e-3, "epochs": 1,
          "weight_decay": 0.0}  # fmt: skip
    scoring = build_scoring_model(head_config(args, None, hp), kind="cost", seed=0)
    sample = _subset(pool, args.timing_pairs, seed=5)
    with tempfile.TemporaryDirectory() as fresh, embedding_cache(fresh):
        start = time.process_time()
        embed_pairs(scoring, sample, batch_size=args.embed_batch_size)
        per_text = (time.process_time() - start) / (2 * len(sample))
    embed_pairs(scoring, pool, batch_size=args.embed_batch_size)
    embed_pairs(scoring, held_out, batch_size=args.embed_batch_size)
    if transfer is not None:
        scoring.embed([""] * len(transfer[0]), transfer[0], batch_size=args.embed_batch_size)
    _log(f"  {per_text * 1000:.1f} CPU ms per text, {per_text * 2 * len(pool):.1f} s for the pool")
    return per_text


def head_runs(args, pool, held_out, hp, embed_seconds, transfer) -> list[dict]:
    runs = []
    for seed in args.seeds:
        for epsilon in args.epsilons:
            start = time.process_time()
            result = train_cost_model(
                pool, config=head_config(args, epsilon, hp), seed=seed, progress=False
            )
            train_seconds = time.process_time() - start
            acc = _accuracy(result, held_out)
            row = {
                "model": "head", "seed": seed, "target_epsilon": epsilon,
                "epsilon": result.receipt.epsilon, "noise_multiplier": result.receipt.noise_multiplier,
                "steps": result.receipt.steps, "train_pairs": len(pool),
                "pair_accuracy": acc, "pair_accuracy_se": _se(acc, len(held_out)),
                "train_cpu_seconds": train_seconds, "embed_cpu_seconds": embed_seconds,
                "cpu_seconds": train_seconds + embed_seconds,
            }  # fmt: skip
            if transfer is not None and epsilon in (args.transfer_epsilon, None):
                texts, harmful = transfer
                costs = result.model.score([""] * len(texts), texts)
                row["moderation_auroc"] = auroc(costs, harmful)
            runs.append(row)
            _log(f"  head eps={epsilon} seed={seed}: {acc:.4f} ({train_seconds:.1f} s train)")
    return runs


def lora_vs_head(args, pool, held_out, hp) -> dict:
    """LoRA and the head at one ε and seed on the same subset (module doc, 3)."""
    subset = _subset(pool, args.lora_train_pairs, seed=1)
    held_out = _subset(held_out, args.lora_eval_pairs, seed=2)
    out = {"train_pairs": len(subset), "eval_pairs": len(held_out),
           "target_epsilon": args.lora_epsilon, "seed": 0, "lora_epochs": args.lora_epochs}  # fmt: skip
    start = time.process_time()
    lora = train_cost_model(
        subset, config=lora_config(args, args.lora_epsilon), seed=0, progress=False
    )
    out["lora_cpu_seconds"] = time.process_time() - start
    out["lora_pair_accuracy"] = _accuracy(lora, held_out)
    out["lora_epsilon"] = lora.receipt.epsilon
    del lora
    with tempfile.TemporaryDirectory() as fresh, embedding_cache(fresh):
        config = head_config(args, args.lora_epsilon, hp)
        start = time.process_time()
        embed_pairs(
            build_scoring_model(config, kind="cost", seed=0), subset,
            batch_size=args.embed_batch_size,
        )  # fmt: skip
        embed = time.process_time() - start
        start = time.process_time()
        head = train_cost_model(subset, config=config, seed=0, progress=False)
        train = time.process_time() - start
        out["head_pair_accuracy"] = _accuracy(head, held_out)
    out.update({"head_embed_cpu_seconds": embed, "head_train_cpu_seconds": train})
    out["head_cpu_seconds"] = embed + train
    out["cpu_time_ratio_lora_over_head"] = out["lora_cpu_seconds"] / out["head_cpu_seconds"]
    for key in ("lora", "head"):
        out[f"{key}_pair_accuracy_se"] = _se(out[f"{key}_pair_accuracy"], len(held_out))
    _log(f"  lora vs head on {len(subset)} pairs: {out}")
    return out


def summarise(runs: list[dict], epsilons) -> dict:
    table = {}
    for epsilon in epsilons:
        rows = [r for r in runs if r["target_epsilon"] == epsilon]
        accs = [r["pair_accuracy"] for r in rows]
        entry = {
            "mean": statistics.fmean(accs),
            "se_over_seeds": statistics.stdev(accs) / math.sqrt(len(accs))
            if len(accs) > 1
            else 0.0,
            "mean_binomial_se": statistics.fmean(r["pair_accuracy_se"] for r in rows),
            "cpu_seconds_mean": statistics.fmean(r["cpu_seconds"] for r in rows),
            "n_seeds": len(accs),
        }
        aurocs = [r["moderation_auroc"] for r in rows if r.get("moderation_auroc") is not None]
        if aurocs:
            entry["moderation_auroc_mean"] = statistics.fmean(aurocs)
        table["non_private" if epsilon is None else f"{epsilon:g}"] = entry
    return table


def _data(args) -> tuple[int, PairDataset, PairDataset]:
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    args.backbone_path = minilm_path() if args.backbone == "minilm" else args.backbone
    pairs = load_pairs(args.data, chosen_is_safer=True)
    splits = split_pairs(pairs, seed=0, eval_fraction=args.eval_fraction,
                         candidate_fraction=0.0, safety_fraction=0.0)  # fmt: skip
    return len(pairs), _subset(splits.train, args.train_pairs, 1), splits.eval


def lora_study(args) -> dict:
    """Only LoRA against the head at equal data, with the head settings an earlier run chose."""
    _, pool, held_out = _data(args)
    hp = json.loads(args.hp_from.read_text())["tuning"]["chosen"]
    return {"hp_from": str(args.hp_from), "lora_vs_head": lora_vs_head(args, pool, held_out, hp)}


def study(args, write) -> dict:
    n_pairs, pool, held_out = _data(args)
    transfer = None
    if args.moderation.exists():
        transfer = moderation_texts(args.moderation, args.moderation_texts)
    payload = {"data": str(args.data), "backbone": args.backbone, "pairs": n_pairs,
               "train_pairs": len(pool), "eval_pairs": len(held_out),
               "fixed": {"batch_size": args.batch_size, "max_grad_norm": args.max_grad_norm,
                         "max_length": args.max_length, "mlp_hidden": args.mlp_hidden,
                         "embed_batch_size": args.embed_batch_size,
                         "target_delta": TARGET_DELTA, "threads": torch.get_num_threads()}}  # fmt: skip
    with tempfile.TemporaryDirectory() as temp, embedding_cache(args.cache_dir or temp):
        per_text = {text: embedding_pass(args, text, pool, held_out, transfer)
                    for text in args.grid_text}  # fmt: skip
        payload["embed_cpu_seconds_per_text"] = per_text
        payload["embed_timing_texts"] = 2 * min(len(pool), args.timing_pairs)
        payload["embed_cpu_seconds_train_pool"] = {
            text: seconds * 2 * len(pool) for text, seconds in per_text.items()
        }
        _log("tuning (non-private, validation folds of the training pool)")
        payload["tuning"] = tune(args, pool)
        hp = payload["tuning"]["chosen"]
        _log(f"head runs with {hp}")
        embed_seconds = payload["embed_cpu_seconds_train_pool"][hp["text"]]
        payload["runs"] = head_runs(args, pool, held_out, hp, embed_seconds, transfer)
    payload["head"] = summarise(payload["runs"], args.epsilons)
    if transfer is not None:
        payload["transfer"] = {"texts": len(transfer[0]), "harmful": int(transfer[1].sum())}
    write(payload)  # the head study, in case the LoRA run does not finish
    if args.lora_train_pairs:
        _log("LoRA vs head at equal data")
        payload["lora_vs_head"] = lora_vs_head(args, pool, held_out, hp)
    return payload


def targets(payload: dict) -> dict:
    head = payload.get("head", {})
    out = {}
    if "non_private" in head:
        out["np_head_accuracy"] = head["non_private"]["mean"]
        out["np_head_at_least_0.62"] = head["non_private"]["mean"] >= 0.62
        if "3" in head:
            gap = head["non_private"]["mean"] - head["3"]["mean"]
            out["eps3_gap_points"] = 100 * gap
            out["eps3_within_2_points"] = gap <= 0.02
    if "lora_vs_head" in payload:
        ratio = payload["lora_vs_head"]["cpu_time_ratio_lora_over_head"]
        out["cpu_ratio_lora_over_head"] = ratio
        out["cpu_ratio_at_least_20"] = ratio >= 20
    return out


def _bool(text: str) -> bool:
    return {"true": True, "false": False}[text.lower()]


def _epsilon(text: str) -> float | None:
    return None if text.lower() in ("none", "inf", "non-private", "np") else float(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="tiny backbone and sizes: a smoke run")
    p.add_argument("--data", type=Path, default=HH_RLHF)
    p.add_argument("--moderation", type=Path, default=MODERATION)
    p.add_argument("--backbone", default="minilm", help="'minilm' or a backbone path / 'tiny'")
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--train-pairs", type=int, default=None, help="subset of the pool (default all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epsilons", type=_epsilon, nargs="+", default=[1.0, 3.0, 8.0, None])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=256, help="MiniLM's max_seq_length")
    p.add_argument("--embed-batch-size", type=int, default=32, help="benchmarks/embed_speed.py")
    p.add_argument("--mlp-hidden", type=int, default=64)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--grid-text", nargs="+", default=["prompt_response", "response"])
    p.add_argument("--grid-normalize", type=_bool, nargs="+", default=[False, True])
    p.add_argument("--grid-layers", nargs="+", default=["linear", "mlp"])
    p.add_argument("--grid-lr", type=float, nargs="+", default=[3e-3])
    p.add_argument("--grid-epochs", type=int, nargs="+", default=[10, 50])
    p.add_argument("--grid-weight-decay", type=float, nargs="+", default=[0.0])
    p.add_argument("--grid-batch-size", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--grid-max-grad-norm", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--tune-epsilon", type=float, default=3.0, help="ε of the DP tuning stage")
    p.add_argument("--lora-train-pairs", type=int, default=128)
    p.add_argument("--lora-eval-pairs", type=int, default=200)
    p.add_argument("--lora-epochs", type=int, default=2, help="the example's former LoRA setting")
    p.add_argument("--timing-pairs", type=int, default=128, help="fresh embedding timing sample")
    p.add_argument("--moderation-texts", type=int, default=600, help="seeded subset (None: all)")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="keep embeddings here (private data!)"
    )
    p.add_argument("--lora-epsilon", type=float, default=3.0)
    p.add_argument("--hp-from", type=Path, default=None,
                   help="only LoRA vs head, with the head settings chosen in this earlier result")  # fmt: skip
    p.add_argument("--transfer-epsilon", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.train_pairs, args.seeds = "tiny", 120, [0]
        args.epsilons, args.grid_lr, args.grid_epochs = [3.0, None], [1e-2], [2]
        args.grid_normalize, args.grid_batch_size, args.grid_max_grad_norm = [True], [32, 64], [1.0]
        args.lora_train_pairs, args.max_length, args.folds = 40, 32, 2
        args.moderation_texts, args.lora_eval_pairs = 100, 50
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def write(partial: dict) -> dict:
        payload = {"benchmark": "hh_heads", "quick": args.quick, **partial}
        payload["targets"] = targets(payload)
        payload["wall_seconds"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return payload

    if args.hp_from is not None:
        payload = write(lora_study(args))
        print(f"hh_heads (LoRA only): {payload['lora_vs_head']}")
        return
    payload = write(study(args, write))
    head = payload["head"]
    bits = ", ".join(
        f"{'NP' if k == 'non_private' else 'ε=' + k} {v['mean']:.3f}±{v['se_over_seeds']:.3f}"
        for k, v in head.items()
    )
    print(
        f"hh_heads: head acc {bits}; targets {payload['targets']}; {payload['wall_seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
