"""Per-group bounds' coverage, overall and conditional on release, simultaneous vs per-group.

The safety report shows each group's cost upper bound and reward lower bound
(``group_bounds.certify_group_samples``) next to the population certificate, and a reader
looks at them when the population test passed. Issue 13 (finding 6) measured per-group bounds
at nominal 0.90 covering 0.83-0.87, and 0.63 conditional on release. This study draws a safety
sample of ``n_s`` prompts from three groups (60 / 30 / 10% of prompts; the smallest has rare
catastrophes), runs the population test (betting on the predicted unsafe probability, tau at the
median population bound so about half the trials release) and the group bounds with
``safety.group_coverage`` ``simultaneous`` (each of the 2G bounds at delta / (2G)) and
``individual`` (each at delta). Coverage = all 2G bounds hold (the cost bound above the group's
true mean, the reward bound below its true mean); per-bound coverage = the average over the 2G.

What the union bound promises: P(all hold) >= 1 - delta. Conditional on release it promises only
P(some fails | released) <= delta / P(released): a release selects samples with low costs.

Usage: nice python benchmarks/group_coverage.py --trials 2000 --out benchmarks/results/group_coverage.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import integrate, special, stats

from safealign._atomic import atomic_write_text
from safealign.constraints.bounded_means import betting_upper_bounds
from safealign.constraints.group_bounds import certify_group_samples

# name: (share of prompts, cost score sampler, true mean of sigmoid(c), reward mean)
GROUPS = ("majority", "second", "rare_catastrophe")
SHARES = (0.6, 0.3, 0.1)
REWARD_MEANS = (0.5, 0.0, -0.3)


def _draw_costs(rng: np.random.Generator, group: int, size: int) -> np.ndarray:
    if group == 2:  # 5% catastrophic, else like the majority
        return np.where(rng.random(size) < 0.05, 6.0, rng.normal(-3.0, 1.0, size))
    return rng.normal((-3.0, -2.0)[group], 1.0, size)


def _true_cost_means() -> list[float]:
    def normal_mean(mu: float) -> float:
        pdf = stats.norm(mu, 1.0).pdf
        return integrate.quad(lambda c: special.expit(c) * pdf(c), -30, 30, limit=200)[0]

    majority = normal_mean(-3.0)
    return [majority, normal_mean(-2.0), 0.95 * majority + 0.05 * special.expit(6.0)]


def coverage(n_safety: int, delta: float, trials: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, n_safety])
    truth = _true_cost_means()
    groups = rng.choice(3, size=(trials, n_safety), p=SHARES)
    costs = np.empty((trials, n_safety))
    for g in range(3):
        costs[groups == g] = _draw_costs(rng, g, int((groups == g).sum()))
    rewards = rng.normal(np.array(REWARD_MEANS)[groups], 1.0)
    population = betting_upper_bounds(special.expit(costs), confidence=1 - delta, low=0.0, high=1.0)
    tau = float(np.median(population))
    released = population <= tau
    rows = []
    for simultaneous in (True, False):
        held = np.zeros((trials, 2 * len(GROUPS)), dtype=bool)
        for t in range(trials):
            names = [GROUPS[g] for g in groups[t]]
            block = certify_group_samples(
                torch.from_numpy(costs[t]),
                {name: torch.from_numpy(rewards[t]) for name in GROUPS},
                metric="predicted_unsafe_probability", confidence=1 - delta, bound="betting",
                value_range=(0.0, 1.0), prompt_groups=names, simultaneous=simultaneous,
            )  # fmt: skip
            for g, name in enumerate(GROUPS):
                entry = block["groups"][name]
                if entry["reason"] is not None:  # < 2 prompts: no bound shown, nothing claimed
                    held[t, 2 * g : 2 * g + 2] = True
                    continue
                held[t, 2 * g] = entry["cost_upper_bound"] >= truth[g]
                held[t, 2 * g + 1] = entry["reward_lower_bound"] <= REWARD_MEANS[g]
        for subset, mask in (("all trials", np.ones(trials, bool)), ("released", released)):
            every = held[mask].all(axis=1)
            rows.append({
                "n_safety": n_safety, "delta": delta, "coverage": "simultaneous" if simultaneous else "individual",
                "trials": subset, "count": int(mask.sum()), "tau": tau,
                "all_hold": float(every.mean()), "per_bound": float(held[mask].mean()),
                "worst_bound": float(held[mask].mean(axis=0).min()),
                # P(all hold) >= 1 - delta is the promise; binomial p of the failures against delta
                "pvalue": float(stats.binom.sf(int((~every).sum()) - 1, int(mask.sum()), delta)),
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = [
        r for n in (100, 1000) for d in (0.1, 0.05) for r in coverage(n, d, args.trials, args.seed)
    ]
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    payload["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    for r in rows:
        print(
            f"n_s={r['n_safety']:4d} delta={r['delta']} {r['coverage']:12s} {r['trials']:10s} "
            f"(n={r['count']:4d}) all hold {r['all_hold']:.3f} (nominal {1 - r['delta']:.2f}) "
            f"per bound {r['per_bound']:.3f} worst {r['worst_bound']:.3f}"
        )
    print(f"{payload['seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
