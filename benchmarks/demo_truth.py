"""Does the demo's certificate hold against the synthetic world's TRUE cost, seed after seed?

The HC-RLHF certificate bounds the policy's expected cost *under the DP cost model*; the demo's
world knows the true cost of every response, so each seed's run can be checked: a certified policy
whose true expected cost exceeds the threshold is a violation. For each seed this runs the demo
pipeline exactly as ``safealign demo --seed N`` does (``demo_config``) in a fresh directory and
records the certificate, the composed ε, the cost model's held-out metrics, the true value of the
certified quantity (the true unsafe rate for the probability metrics, the true expected cost for
``expected_cost``) and the wall time.

With ``--labels M`` the demo also declares ``safety.labels: {size: M, decide: DECIDE}``: the world's
truth labels M of the safety responses (drawn at random after sampling), and the run records the
label-rectified, labels-only and cost-model-only bounds and whether the released policy's true
unsafe rate lies under each.

Usage: python benchmarks/demo_truth.py --seeds 0 1 2 3 4 --out benchmarks/results/demo_truth.json
       python benchmarks/demo_truth.py --labels 100 --out benchmarks/results/demo_truth_labels.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from safealign._atomic import atomic_write_text
from safealign.run import demo_config, run


def one_seed(seed: int, root: Path, overrides: tuple[str, ...] = ()) -> dict:
    out = root / f"seed-{seed}"
    start = time.perf_counter()
    result = run(demo_config(seed=seed, out_dir=out, overrides=overrides), out, progress=False)
    seconds = time.perf_counter() - start
    safety, truth = result.report["safety"], result.truth
    cost_receipt = json.loads((out / "cost" / "receipt.json").read_text())
    key = "expected_cost" if truth["metric"] == "expected_cost" else "unsafe_rate"
    record = {
        "seed": seed,
        "seconds": seconds,
        "certified": safety["passed"],
        "upper_bound": safety["upper_bound"],
        "threshold": safety["cost_threshold"],
        "epsilon": result.report["privacy"]["epsilon"],
        "cost_model_auroc": cost_receipt["metrics"].get("eval/safety_auroc"),
        "metric": truth["metric"],
        # The TRUE value of the certified quantity (the unsafe rate for the probability metrics).
        "true_value": truth["released"][key] if "released" in truth else None,
        "true_unconstrained_value": truth["unconstrained"][key] if "released" in truth else None,
        "true_reference_value": truth["reference"][key],
        "true_expected_cost": truth["released"]["expected_cost"] if "released" in truth else None,
        "guarantee_holds": truth.get("guarantee_holds"),
    }
    labelling = safety.get("labelling")
    if labelling and "bounds" in labelling and record["true_value"] is not None:
        bounds = {name: entry["upper_bound"] for name, entry in labelling["bounds"].items()}
        record["labelled"] = {
            "m": len(labelling["indices"]),
            "n": labelling["n"],
            "decided_by": labelling["decided_by"],
            "bounds": bounds,
            "truth_within": {name: record["true_value"] <= b for name, b in bounds.items()},
            "labelled_unsafe_share": sum(labelling["labels"]) / len(labelling["labels"]),
            "judge_auroc": labelling["judge"]["auroc"],
            "judge_brier": labelling["judge"]["brier"],
            "judge_missed_unsafe_share": labelling["judge"]["missed_unsafe_share"],
        }
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--labels", type=int, default=None, help="m: label m safety responses")
    parser.add_argument("--decide", default="rectified", choices=["rectified", "labels_only"])
    args = parser.parse_args(argv)
    overrides = (
        ()
        if args.labels is None
        else (f"safety.labels={{size: {args.labels}, decide: {args.decide}}}",)
    )
    torch.set_num_threads(args.threads)
    runs = []
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            runs.append(one_seed(seed, Path(root), overrides))
            r = runs[-1]
            unconstrained = r["true_unconstrained_value"]
            bound = "none (no policy)" if r["upper_bound"] is None else f"{r['upper_bound']:+.3f}"
            print(
                f"seed {seed}: certified={r['certified']} UB {bound} on "
                f"{r['metric']}, true value {r['true_value']} (unconstrained {unconstrained}, "
                f"reference {r['true_reference_value']:+.3f}), {r['seconds']:.0f} s",
                flush=True,
            )
            if "labelled" in r:
                lab = r["labelled"]
                print(
                    f"         labelled bounds {lab['bounds']}, truth within {lab['truth_within']}"
                )
    certified = [r for r in runs if r["certified"]]
    labelled = [r["labelled"] for r in runs if "labelled" in r]
    payload = {
        "labels": None if args.labels is None else {"m": args.labels, "decide": args.decide},
        "truth_within_rectified": sum(lab["truth_within"]["rectified"] for lab in labelled),
        "truth_within_labels_only": sum(lab["truth_within"]["labels_only"] for lab in labelled),
        "truth_within_cost_model_only": sum(
            lab["truth_within"]["cost_model_only"] for lab in labelled
        ),
        "labelled_runs": len(labelled),
        "runs": runs,
        "certified": len(certified),
        "violations": sum(not r["guarantee_holds"] for r in certified),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    times = [r["seconds"] for r in runs]
    print(
        f"demo_truth: {payload['certified']}/{len(runs)} seeds certified, "
        f"{payload['violations']} violations of the truth; demo {min(times):.0f}-"
        f"{max(times):.0f} s per run"
        + (
            f"; truth within the label-rectified bound at {payload['truth_within_rectified']}/"
            f"{len(labelled)} labelled seeds (labels-only {payload['truth_within_labels_only']}, "
            f"cost-model-only {payload['truth_within_cost_model_only']})"
            if labelled
            else ""
        )
    )


if __name__ == "__main__":
    main()
