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
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from safealign._atomic import atomic_write_text
from safealign.config import load_config
from safealign.models.causal import generate
from safealign.models.policy_artifact import load_policy_model
from safealign.run import Workspace
from safealign.run.alignment import align_checked
from safealign.run.certification import certify_policy
from safealign.run.lm_align import sampler_of
from safealign.run.lm_base import prepare_base
from safealign.run.lm_certify import TRUTH_SAMPLES, lm_true_outcomes
from safealign.run.models import train_models

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "lm_world.yaml"


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _adapter_truth(ws: Workspace, base: Path, adapter: Path) -> dict:
    """True cost and rewards of an adapter's own generations (as lm_true_outcomes measures)."""
    world, prompts = ws.world, list(ws.splits.eval.prompts) + list(ws.splits.candidate.prompts)
    model, tokenizer = load_policy_model(base, adapter)
    n, sampler = TRUTH_SAMPLES, sampler_of(ws)
    texts = generate(model, tokenizer, prompts, num_samples=n, seed=1, **sampler.to_dict())
    flat_p, flat_y = [p for p in prompts for _ in range(n)], [y for row in texts for y in row]
    cost = world.true_cost(flat_p, flat_y)
    rewards = {g: float(world.true_reward(flat_p, flat_y, g).mean()) for g in world.group_weights}
    return {"expected_cost": float(cost.mean()), "unsafe_rate": float((cost > 0).mean()),
            "reward": rewards}  # fmt: skip


def one_seed(seed: int, root: Path, overrides: list[str]) -> dict:
    out = root / f"seed-{seed}"
    load_start = os.getloadavg()  # the machine is shared: times are only comparable at equal load
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
    # NSF releases nothing; the distilled adapter is still in OUT/policy/: measure it too.
    distilled = truth.get("released") or _adapter_truth(ws, out / "sft", out / "policy")
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
    n_cand = len(set(ws.splits.candidate.prompts))
    rounds = config.policy.distill.rounds
    return {
        "seed": seed,
        "is_released": policy is not None and bool(cert.passed),
        "certified": cert.passed,
        "step1_bound": alignment.policy_file.selection.get("selection_bound"),
        "upper_bound": cert.upper_bound,
        "threshold": config.safety.cost_threshold,
        "metric": config.safety.metric,
        "selection": alignment.policy_file.selection,
        "sft": truth["reference"],
        "released": truth.get("released"),
        "distilled": distilled,
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
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
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
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows.append(one_seed(seed, Path(tmp), args.overrides))
            print(json.dumps(rows[-1], sort_keys=True), flush=True)  # kept if a later seed fails
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (1 thread)"
    result = {"config": str(CONFIG.name), "overrides": args.overrides, "device": device,
              "platform": platform.platform(), "seeds": rows}  # fmt: skip
    atomic_write_text(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    key = "unsafe_rate" if rows[0]["metric"] != "expected_cost" else "expected_cost"
    for r in rows:
        worst = {name: min(v["reward"].values()) for name in ("sft", "distilled", "reward_only")
                 if (v := r[name]) is not None}  # fmt: skip
        print(
            f"seed {r['seed']}: true {key} sft {r['sft'][key]:.3f} distilled "
            f"{r['distilled'][key]:.3f} (released: {r['released'] is not None}) reward-only "
            f"{(r['reward_only'] or {}).get(key, float('nan')):.3f} (tau {r['threshold']}); "
            f"worst-group reward {json.dumps({k: round(v, 3) for k, v in worst.items()})}; "
            f"step-1 bound {r['step1_bound']:.3f}; certified {r['certified']} U={r['upper_bound']}; "
            f"load {r['load_average']['start'][0]:.1f}-{r['load_average']['end'][0]:.1f}; seconds "
            f"{json.dumps({k: round(v, 1) for k, v in r['seconds'].items()})}"
        )


if __name__ == "__main__":
    main()
