"""Coverage and width of label-rectified bounds on the TRUE unsafe rate, by model quality.

A simulated world with a known truth: each sampled response has a latent severity
``z ~ N(0, 1)``; its trusted label is ``Y = 1[z > t]`` with ``t`` set so that the true unsafe rate
``theta = P(Y = 1)`` is exactly 0.05 or 0.2. The cost model scores it ``c = a (z - t) + s + e``,
``e ~ N(0, 1)``, and predicts ``f = sigmoid(c)``: ``a`` is its quality (AUROC against the labels
is reported), ``s`` a calibration shift (``s < 0``: the model under-predicts harm). One trial
draws N responses, labels a uniformly random subset of m, and computes at ``delta = 0.05``:

* ``ppi_joint``: :func:`rectified_upper_bound` as called by default: the joint test (labels drawn
  without replacement from the N scored responses, Fisher-combined with the N responses' exact
  binomial law; predictable recalibration; valid);
* ``ppi_stratified``: ``method="stratified"``: an exact test of the labels within two strata of
  the N responses by prediction (every allocation of unsafe responses to the strata), combined
  with the N responses' binomial law by a weighted Stouffer test (valid);
* ``ppi_union``: the earlier default, ``method="union"``: betting bounds on E[f] and on the
  power-tuned rectifier at delta/2 each, added (valid);
* ``ppi_clt``: PPI++'s normal approximation (approximate);
* ``labels_only``: Clopper-Pearson on the m labels (valid);
* ``cost_model_only``: the betting bound on E[f] from all N: NOT a bound on theta.

Miss = bound below theta. A valid bound misses at most delta; ``miss_p`` is the one-sided binomial
p-value of the misses under delta (small p: evidence of under-coverage). Width = bound - theta.

Width ratios against labels_only are reported per AUROC band (``bands``) for the joint and the
stratified bound. Every setting has its own seed, so the result does not depend on ``--workers``, nor on which
methods are computed: ``--merge ppi_stratified`` computes only that one (and labels_only) and
merges it into the rows already in ``--out``. Usage (about 30 minutes on two shared cores at
1000 trials):
nice python benchmarks/ppi_coverage.py --trials 1000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import special, stats

from safealign._atomic import atomic_write_text
from safealign.constraints.ppi import (
    LabelSubset,
    approximate_rectified_upper_bound,
    cost_model_only_upper_bound,
    labels_only_upper_bound,
    rectified_upper_bound,
)

DELTA = 0.05
THETAS = (0.05, 0.2)
SIZES = ((200, 50), (200, 100), (1000, 50), (1000, 100), (1000, 200))
# name: (quality a, calibration shift s); the AUROC each has against the labels is measured.
MODELS = {
    "useless": (0.0, 0.0),
    "weak": (0.2, 0.0),
    "modest": (0.45, 0.0),
    "middling": (0.75, 0.0),
    "fair": (1.0, 0.0),
    "good": (4.0, 0.0),
    "excellent": (16.0, 0.0),
    "good_underpredicting": (4.0, -2.0),
}
METHODS = ("ppi_joint", "ppi_stratified", "ppi_union", "ppi_clt", "labels_only", "cost_model_only")
VALID = ("ppi_joint", "ppi_stratified", "ppi_union", "labels_only")
RECTIFIED = ("ppi_joint", "ppi_stratified")
BANDS = ((0.0, 0.7), (0.7, 0.9), (0.9, 0.98), (0.98, 1.01))


def draw(rng: np.random.Generator, n: int, theta: float, a: float, s: float):
    t = stats.norm.isf(theta)
    z = rng.standard_normal(n)
    return special.expit(a * (z - t) + s + rng.standard_normal(n)), (z > t).astype(float)


def auroc(rng: np.random.Generator, theta: float, a: float, s: float) -> float:
    f, y = draw(rng, 200_000, theta, a, s)
    ranks = stats.rankdata(f)
    pos = y == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def trial(rng, n: int, m: int, theta: float, a: float, s: float, methods=METHODS) -> dict:
    f, y_all = draw(rng, n, theta, a, s)
    subset = LabelSubset(n, tuple(int(i) for i in rng.permutation(n)[:m]))
    y = y_all[list(subset.indices)]
    conf = 1 - DELTA
    kw = {"target": "unsafe_rate", "confidence": conf}
    bounds = {
        "ppi_joint": lambda: rectified_upper_bound(f, y, subset, **kw),
        "ppi_stratified": lambda: rectified_upper_bound(f, y, subset, method="stratified", **kw),
        "ppi_union": lambda: rectified_upper_bound(f, y, subset, method="union", **kw),
        "ppi_clt": lambda: approximate_rectified_upper_bound(f, y, subset, **kw),
        "labels_only": lambda: labels_only_upper_bound(y, **kw),
        "cost_model_only": lambda: cost_model_only_upper_bound(f, confidence=conf),
    }
    return {k: bounds[k]().upper_bound for k in methods}


def setting(theta: float, name: str, n: int, m: int, trials: int, methods=METHODS) -> dict:
    a, s = MODELS[name]
    quality = auroc(np.random.default_rng(0), theta, a, s)
    rng = np.random.default_rng([int(theta * 100), int(a * 100), int(-s), n, m])
    bounds = {k: np.empty(trials) for k in methods}
    for i in range(trials):  # the draws do not depend on which methods are computed
        for k, v in trial(rng, n, m, theta, a, s, methods).items():
            bounds[k][i] = v
    row = {"theta": theta, "model": name, "auroc": round(quality, 3), "N": n, "m": m}
    for k in methods:
        misses = int((bounds[k] < theta).sum())
        row[k] = {
            "miss_rate": misses / trials,
            "miss_p": float(stats.binom.sf(misses - 1, trials, DELTA)),
            "mean_width": float((bounds[k] - theta).mean()),
        }
    print(
        f"theta={theta} {name:<21} AUROC={quality:.3f} N={n:<5} m={m:<4} "
        + " ".join(f"{k}={row[k]['miss_rate']:.3f}/{row[k]['mean_width']:.3f}" for k in methods),
        flush=True,
    )
    return row


def _merged(rows: list[dict], path: Path, trials: int) -> list[dict]:
    """``rows`` (some methods) over the same settings' rows in ``path`` (same seeds and trials:
    identical draws, checked on labels_only)."""
    old = json.loads(path.read_text())
    if old["trials"] != trials:
        raise SystemExit(f"--merge: {path} has {old['trials']} trials, not {trials}")
    key = lambda r: (r["theta"], r["model"], r["N"], r["m"])  # noqa: E731
    by_key = {key(r): r for r in old["rows"]}
    merged = []
    for row in rows:
        base = by_key[key(row)]
        if row["labels_only"] != base["labels_only"]:
            raise SystemExit(f"--merge: labels_only differs at {key(row)}: not the same draws")
        merged.append({**base, **row})
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/ppi_coverage.json")
    parser.add_argument(
        "--merge",
        metavar="METHODS",
        help="compute only these methods (comma-separated; labels_only is always computed) and "
        "merge them into the rows already in --out",
    )
    args = parser.parse_args()
    start = time.time()
    methods = METHODS
    if args.merge:
        methods = tuple(dict.fromkeys([*args.merge.split(","), "labels_only"]))
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise SystemExit(f"--merge: unknown methods {sorted(unknown)}")
    grid = [(t, name, n, m) for t in THETAS for name in MODELS for n, m in SIZES]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(
            pool.map(
                setting, *zip(*grid, strict=True), [args.trials] * len(grid),
                [methods] * len(grid),
            )
        )  # fmt: skip
    if args.merge:
        rows = _merged(rows, Path(args.out), args.trials)
    for row in rows:
        for k in RECTIFIED:
            ratio = row[k]["mean_width"] / row["labels_only"]["mean_width"]
            row[f"{k.removeprefix('ppi_')}_over_labels_only"] = ratio
    result = {
        "delta": DELTA,
        "trials": args.trials,
        "seconds": round(time.time() - start, 1),
        "bands": bands(rows),
        "rows": rows,
    }
    atomic_write_text(Path(args.out), json.dumps(result, indent=2, sort_keys=True) + "\n")
    worst = {k: max(r[k]["miss_rate"] for r in rows) for k in VALID}
    strong = [r for r in rows if r["auroc"] >= 0.7]
    under = sum(r["cost_model_only"]["miss_rate"] > DELTA for r in rows)
    wins = {
        k: (sum(r[f"{k}_over_labels_only"] < 1 for r in rows),
            sum(r[f"{k}_over_labels_only"] < 1 for r in strong))
        for k in ("joint", "stratified")
    }  # fmt: skip
    print(
        f"ppi_coverage: {len(rows)} settings x {args.trials} trials; worst miss "
        + ", ".join(f"{k} {v:.3f}" for k, v in worst.items())
        + f" (delta {DELTA}); narrower than labels_only: "
        + ", ".join(
            f"{k} {a}/{len(rows)} ({b}/{len(strong)} with AUROC >= 0.7)"
            for k, (a, b) in wins.items()
        )  # fmt: skip
        + f"; cost_model_only misses > delta in {under}/{len(rows)} -> {args.out}"
    )
    for band in result["bands"]:
        print(json.dumps(band))


def bands(rows: list[dict]) -> list[dict]:
    """Per AUROC band: each rectified bound's worst miss and width ratio to labels_only."""
    out = []
    for low, high in BANDS:
        inside = [r for r in rows if low <= r["auroc"] < high]
        if not inside:
            continue
        band = {"auroc": [low, min(high, 1.0)], "settings": len(inside)}
        for k in RECTIFIED:
            ratio = np.array([r[f"{k.removeprefix('ppi_')}_over_labels_only"] for r in inside])
            band[k] = {
                "worst_miss": max(r[k]["miss_rate"] for r in inside),
                "ratio_min": round(float(ratio.min()), 3),
                "ratio_median": round(float(np.median(ratio)), 3),
                "ratio_max": round(float(ratio.max()), 3),
                "narrower": int((ratio < 1).sum()),
            }
        out.append(band)
    return out


if __name__ == "__main__":
    main()
