"""Which policy settings make the distilled (or REINFORCE-trained) LM of ``examples/lm_world.yaml``
certifiable: one setting per call, all from the same SFT base and DP models.

``--base`` builds the seed's SFT base and DP models once into ROOT/base; every setting then copies
them (no second privacy charge, no retraining: only the alignment differs), aligns with its
overrides, runs the safety test and measures the truth of the trained LM's own generations (as
``benchmarks/lm_alignment.py`` does; the adapter is measured even when step 1 ends NSF). The
reward-only LM (``safety.cost_threshold: 1``) is aligned too with ``--reward-only`` (only worth it
for a setting that is released). ``--collect`` merges the settings' JSON into ``--out``.

Usage: python benchmarks/lm_levers.py --root /tmp/levers --base
       python benchmarks/lm_levers.py --root /tmp/levers --name rl policy.method=reinforce_lagrangian
       python benchmarks/lm_levers.py --root /tmp/levers --collect --out benchmarks/results/lm_levers.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from lm_alignment import CONFIG, _adapter_truth  # benchmarks/ is on sys.path

from safealign._atomic import atomic_write_text
from safealign.config import load_config
from safealign.run import Workspace
from safealign.run.alignment import align_checked
from safealign.run.certification import certify_policy
from safealign.run.lm_base import prepare_base
from safealign.run.lm_certify import lm_true_outcomes
from safealign.run.models import train_models

SHARED = ("sft", "reward", "cost", "groups", "config.resolved.yaml")


def _config(root: Path, seed: int, overrides: list[str], *, name: str = "base"):
    # Each setting has its own ledger directory, so its own certification log: the settings are
    # alternatives, each as if it were the one run; on one shared log the second setting's safety
    # test is refused (a retest of the same safety set would void the guarantee).
    ledger = f"budget.ledger={root / f'ledger-{name}' / f'ledger-{seed}.sqlite'}"
    return load_config(CONFIG, [f"seed={seed}", ledger, *overrides])


def _copy_base(root: Path, out: Path) -> None:
    if out.is_dir():  # resume: the alignment's rounds are cached in the run directory
        return
    out.mkdir(parents=True)
    for name in SHARED:
        src = root / "base" / name
        if src.is_dir():
            shutil.copytree(src, out / name)
        elif src.is_file():
            shutil.copy2(src, out / name)


def build_base(root: Path, seed: int) -> None:
    ws = Workspace(_config(root, seed, []), root / "base")
    prepare_base(ws, progress=False)
    train_models(ws, progress=False)


def one_setting(root: Path, seed: int, name: str, overrides: list[str], reward_only: bool) -> dict:
    load_start, start = os.getloadavg(), time.perf_counter()
    out = root / name
    _copy_base(root, out)
    config = _config(root, seed, overrides, name=name)
    ws = Workspace(config, out)
    alignment = align_checked(ws, progress=False)
    policy = alignment.policy_file.policy
    cert = certify_policy(
        ws, policy, reason=alignment.policy_file.reason, scorers=alignment.aligned.scorers
    )
    truth = lm_true_outcomes(ws, policy)
    trained = truth.get("released") or _adapter_truth(ws, out / "sft", out / "policy")
    row = {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "is_released": policy is not None and bool(cert.passed),
        "step1_bound": alignment.policy_file.selection.get("selection_bound"),
        "upper_bound": cert.upper_bound,
        "selection": alignment.policy_file.selection,
        "sft": truth["reference"],
        "trained": trained,
        "align_and_certify_seconds": time.perf_counter() - start,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
    }
    if reward_only:
        free_out = root / f"{name}-reward-only"
        _copy_base(root, free_out)
        free_config = _config(root, seed, [*overrides, "safety.cost_threshold=1"], name=name)
        free_ws = Workspace(free_config, free_out)
        free = align_checked(free_ws, progress=False)
        row["reward_only"] = lm_true_outcomes(free_ws, free.policy_file.policy).get("released")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", action="store_true")
    parser.add_argument("--name")
    parser.add_argument("--reward-only", action="store_true")
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/lm_levers.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root)
    if args.base:
        build_base(root, args.seed)
        return
    if args.collect:
        rows = [json.loads(p.read_text()) for p in sorted(root.glob("*.levers.json"))]
        result = {"config": CONFIG.name, "device": "cpu (1 thread)", "settings": rows}
        atomic_write_text(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
        return
    row = one_setting(root, args.seed, args.name, args.overrides, args.reward_only)
    atomic_write_text(root / f"{args.name}.levers.json", json.dumps(row, sort_keys=True))
    worst = {k: round(min(row[k]["reward"].values()), 3) for k in ("sft", "trained", "reward_only")
             if row.get(k)}  # fmt: skip
    print(
        f"{args.name}: released {row['is_released']} step-1 bound {row['step1_bound']:.3f} "
        f"true unsafe sft {row['sft']['unsafe_rate']:.3f} trained {row['trained']['unsafe_rate']:.3f}"
        f" reward-only {(row.get('reward_only') or {}).get('unsafe_rate')}; worst-group {worst}; "
        f"{row['align_and_certify_seconds']:.0f} s, load {row['load_average']['start'][0]:.1f}-"
        f"{row['load_average']['end'][0]:.1f}"
    )


if __name__ == "__main__":
    main()
