"""Coverage and width of a designated set's finite-population bounds, by cost-model quality.

A designated safety set is N fixed prompts; its labelled certificate bounds ``P``, the share of
the N recorded responses (one per prompt) the trusted judges call unsafe
(:mod:`safealign.constraints.designated`). Here one population is fixed per setting: N responses,
exactly ``round(rate * N)`` of them unsafe, each with a latent severity and a cost-model
prediction ``f = sigmoid(a * (z - t) + e)`` (``a`` the model's quality; AUROC reported). A trial
draws a uniformly random subset of m to label, as ``certify --export-labelling`` does, and
computes at ``delta = 0.05``, through :func:`~safealign.constraints.designated.population_bounds`:

* ``rectified``: the joint test's finite-population bound (the deciding one by default);
* ``labels_only``: the exact hypergeometric bound on the m labels (its exact miss probability
  is computed too: ``labels_only_exact_miss``);
* ``theta_joint``: for comparison, the joint bound on ``theta`` (the i.i.d. prompt-distribution
  quantity a data split's certificate bounds), which is not the designated set's quantity.

Only the draw is random, so a miss (``P > U``) is the event the guarantee bounds by delta; the
population is the same in every trial of a setting. ``miss_p``: one-sided binomial p-value of the
misses under delta. Width = bound - P. Usage (about 2 minutes on one core at 1000 trials):
python benchmarks/designated_coverage.py --trials 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import special, stats

from safealign._atomic import atomic_write_text
from safealign.constraints.designated import population_bounds
from safealign.constraints.ppi import LabelSubset, rectified_upper_bound

CONFIDENCE = 0.95
SETTINGS = [
    (n, m, rate, quality)
    for n, m in ((100, 20), (100, 50), (500, 50), (500, 100))
    for rate in (0.05, 0.2)
    for quality in (0.5, 3.0)
]


def _population(n: int, rate: float, quality: float, seed: int):
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    y[: round(rate * n)] = 1.0
    z = np.where(y > 0, rng.uniform(0, 2, n), rng.uniform(-2, 0, n))  # severity: unsafe iff > 0
    f = special.expit(quality * z + rng.normal(0, 1, n))
    auroc = stats.mannwhitneyu(f[y > 0], f[y == 0]).statistic / (y.sum() * (n - y.sum()))
    return y, f, float(auroc)


def run_setting(n: int, m: int, rate: float, quality: float, trials: int, seed: int) -> dict:
    y, f, auroc = _population(n, rate, quality, seed)
    rng = np.random.default_rng(seed + 1)
    truth = float(y.mean())
    names = ("rectified", "labels_only", "theta_joint")
    misses, widths = dict.fromkeys(names, 0), {k: [] for k in names}
    for _ in range(trials):
        indices = tuple(int(i) for i in rng.permutation(n)[:m])
        subset, labels = LabelSubset(n=n, indices=indices), y[list(indices)]
        bounds = population_bounds(
            f, labels, subset, target="unsafe_rate", confidence=CONFIDENCE, value_range=None,
            weight="tuned",
        )  # fmt: skip
        theta = rectified_upper_bound(
            f, labels, subset, target="unsafe_rate", confidence=CONFIDENCE, method="joint"
        )
        values = {**bounds, "theta_joint": theta.upper_bound}
        for name in names:
            misses[name] += values[name] < truth
            widths[name].append(values[name] - truth)
    delta = 1 - CONFIDENCE
    # The labels-only bound misses exactly when the unsafe count seen has hypergeometric CDF
    # <= delta under the true count: its exact miss probability, beside the simulated rate.
    seen = np.arange(m + 1)
    cdf = stats.hypergeom.cdf(seen, n, int(y.sum()), m)
    exact = float(stats.hypergeom.pmf(seen, n, int(y.sum()), m)[cdf <= delta].sum())
    return {
        "labels_only_exact_miss": exact,
        "n": n,
        "m": m,
        "rate": truth,
        "quality": quality,
        "auroc": auroc,
        "trials": trials,
        **{
            name: {
                "miss_rate": misses[name] / trials,
                "miss_p": float(stats.binomtest(misses[name], trials, delta, "greater").pvalue),
                "mean_width": float(np.mean(widths[name])),
            }
            for name in names
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/results/designated_coverage.json")
    args = parser.parse_args()
    start = time.time()
    rows = [run_setting(*s, args.trials, seed=100 + i) for i, s in enumerate(SETTINGS)]
    result = {"confidence": CONFIDENCE, "settings": rows, "seconds": time.time() - start}
    atomic_write_text(Path(args.out), json.dumps(result, indent=2, sort_keys=True) + "\n")
    worst = max(max(r["rectified"]["miss_rate"], r["labels_only"]["miss_rate"]) for r in rows)
    narrower = sum(r["rectified"]["mean_width"] < r["labels_only"]["mean_width"] for r in rows)
    print(
        f"designated_coverage: {len(rows)} settings x {args.trials} draws; worst miss rate "
        f"{worst:.3f} (delta {1 - CONFIDENCE:.2f}); rectified narrower than labels-only in "
        f"{narrower}/{len(rows)}; wrote {args.out} ({result['seconds']:.0f} s)"
    )


if __name__ == "__main__":
    main()
