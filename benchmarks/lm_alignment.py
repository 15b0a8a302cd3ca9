"""Aligning a language model on the synthetic world: what the released LM truly costs and earns.

For each seed, ``examples/lm_world.yaml`` (the built-in ``world-sft`` GPT-2, ``policy.method:
distill``) runs stage by stage in a fresh directory, each stage timed: the SFT base, the DP reward
and cost models, the tilt-and-distil rounds (sampling, scoring, weighted SFT), the safety test, and
the truth. Then the *reward-only* LM is aligned from the same base and the same DP models (copied,
so no second privacy charge): the same rounds with ``safety.cost_threshold: 1`` (the constraint
never binds, λ = 0). The world parses every generation back to features, so the true expected
cost, unsafe rate and per-group rewards of each LM's own generations on the eval and candidate
prompts (never the safety prompts) are exact for those samples (4 per prompt).

Usage: python benchmarks/lm_alignment.py --seeds 0 --out benchmarks/results/lm_alignment.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from safealign._atomic import atomic_write_text
from safealign.config import load_config
from safealign.run import Workspace
from safealign.run.alignment import align_checked
from safealign.run.certification import certify_policy
from safealign.run.lm_base import prepare_base
from safealign.run.lm_certify import lm_true_outcomes
from safealign.run.models import train_models

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "lm_world.yaml"


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def one_seed(seed: int, root: Path, overrides: list[str]) -> dict:
    out = root / f"seed-{seed}"
    ledger = f"budget.ledger={root / f'ledger-{seed}.sqlite'}"
    config = load_config(CONFIG, [f"seed={seed}", ledger, *overrides])
    ws = Workspace(config, out)
    _, t_sft = _timed(lambda: prepare_base(ws, progress=False))
    _, t_dp = _timed(lambda: train_models(ws, progress=False))
    alignment, t_align = _timed(lambda: align_checked(ws, progress=False))  # base, models cached
    policy = alignment.policy_file.policy
    cert, t_cert = _timed(
        lambda: certify_policy(
            ws, policy, reason=alignment.policy_file.reason, scorers=alignment.aligned.scorers
        )  # fmt: skip
    )
    truth, t_truth = _timed(lambda: lm_true_outcomes(ws, policy))
    # Reward-only: same base and DP models, no binding constraint.
    free_out = root / f"seed-{seed}-reward-only"
    free_out.mkdir(parents=True)
    for name in ("sft", "reward", "cost", "groups", "config.resolved.yaml"):
        src = out / name
        if src.is_dir():
            shutil.copytree(src, free_out / name)
    free_ws = Workspace(load_config(CONFIG, [f"seed={seed}", ledger, *overrides,
                                             "safety.cost_threshold=1"]), free_out)  # fmt: skip
    free, t_free = _timed(lambda: align_checked(free_ws, progress=False))
    free_truth = lm_true_outcomes(free_ws, free.policy_file.policy)
    n_cand = ws.splits.candidate.num_prompts
    rounds = config.policy.distill.rounds
    return {
        "seed": seed,
        "certified": cert.passed,
        "upper_bound": cert.upper_bound,
        "threshold": config.safety.cost_threshold,
        "metric": config.safety.metric,
        "selection": alignment.policy_file.selection,
        "sft": truth["reference"],
        "released": truth.get("released"),
        "reward_only": free_truth.get("released"),
        "truth_prompts": truth["prompts"],
        "seconds": {
            "sft_base": t_sft,
            "dp_models": t_dp,
            "distill_rounds": t_align,
            "certification": t_cert,
            "truth": t_truth,
            "reward_only_rounds": t_free,
        },
        # Each round samples K per candidate prompt, scores and distils; one more draw scores the
        # final LM. Per 1,000 candidate prompts, all of it:
        "distill_seconds_per_1000_prompts": 1000 * t_align / n_cand,
        "candidate_prompts": n_cand,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="benchmarks/results/lm_alignment.json")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. policy.distill.rounds=3"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_seed(s, Path(tmp), args.overrides) for s in args.seeds]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (1 thread)"
    result = {"config": str(CONFIG.name), "overrides": args.overrides, "device": device,
              "platform": platform.platform(), "seeds": rows}  # fmt: skip
    atomic_write_text(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    key = "unsafe_rate" if rows[0]["metric"] != "expected_cost" else "expected_cost"
    for r in rows:
        worst = {name: min(v["reward"].values()) for name in ("sft", "released", "reward_only")
                 if (v := r[name]) is not None}  # fmt: skip
        print(
            f"seed {r['seed']}: true {key} sft {r['sft'][key]:.3f} released "
            f"{(r['released'] or {}).get(key, float('nan')):.3f} reward-only "
            f"{(r['reward_only'] or {}).get(key, float('nan')):.3f} (tau {r['threshold']}); "
            f"worst-group reward {json.dumps({k: round(v, 3) for k, v in worst.items()})}; "
            f"certified {r['certified']} U={r['upper_bound']:.3f}; seconds "
            f"{json.dumps({k: round(v, 1) for k, v in r['seconds'].items()})}"
        )


if __name__ == "__main__":
    main()
