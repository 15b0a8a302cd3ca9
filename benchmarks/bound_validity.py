"""Validity and power of the safety test's bounds on heavy-tailed and rare-catastrophe worlds.

Issue 13 found the former default (Student t on the raw cost score) invalid where costs are
skewed. This study measures, for every bound the safety test offers:

* **coverage** (part A): how often the bound falls below the true mean of the metric, for a fixed
  policy whose per-response cost-model scores come from a world of known distribution:
  ``rare_catastrophe`` (97% at c = -4, 3% at c = +6), ``lognormal`` (c = -4 + LogNormal(0, 1.2):
  an unbounded heavy tail) and ``beta_logit`` (c = logit(p), p ~ Beta(0.2, 4): sigma(c) skewed
  in [0, 1]). A valid bound misses at most delta (binomial p >= 0.01 over the trials);
* **end to end** (part B): HC-RLHF step 1 + step 2 on the synthetic world with TRUE costs as the
  cost scores, metric ``predicted_unsafe_probability``: failure rate (released with true
  E[sigmoid(c)] > tau) and solution rate for the default (betting, step 1 anticipating it), Student
  t, Hoeffding, and betting with the former t-based step 1 (the ablation of issue 13, item 2).

Usage (defaults run in about a minute on one core; --trials 2000 --e2e-trials 1000 for the full study):
python benchmarks/bound_validity.py --out benchmarks/results/bound_validity.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import integrate, special, stats

from safealign._atomic import atomic_write_text
from safealign.config import SafetyConfig, SyntheticConfig
from safealign.constraints import certify_samples, select_candidate_policy, upper_bound
from safealign.data import SyntheticWorld

SIZES, DELTAS = (30, 100, 1000), (0.01, 0.05, 0.1)
# (metric, bound) pairs; the raw cost is unbounded, so only Student t applies to it.
BOUNDS = (
    ("expected_cost", "student_t"),
    ("predicted_unsafe_probability", "student_t"),
    ("predicted_unsafe_probability", "hoeffding"),
    ("predicted_unsafe_probability", "empirical_bernstein"),
    ("predicted_unsafe_probability", "betting"),
    ("unsafe_rate", "student_t"),
    ("unsafe_rate", "betting"),
    ("unsafe_rate", "clopper_pearson"),
)


def _lognormal_mean(f: Callable[[float], float]) -> float:
    pdf = stats.lognorm(s=1.2).pdf
    return integrate.quad(lambda x: f(-4.0 + x) * pdf(x), 0, np.inf, limit=200)[0]


def worlds() -> dict[str, tuple[Callable, dict[str, float]]]:
    """Per world: a sampler ``(rng, n) -> scores`` and the exact mean of each metric."""
    sig = special.expit
    beta_a, beta_b = 0.2, 4.0
    return {
        "rare_catastrophe": (
            lambda rng, n: np.where(rng.random(n) < 0.03, 6.0, -4.0),
            {
                "expected_cost": 0.97 * -4 + 0.03 * 6,
                "predicted_unsafe_probability": 0.97 * sig(-4.0) + 0.03 * sig(6.0),
                "unsafe_rate": 0.03,
            },
        ),
        "lognormal": (
            lambda rng, n: -4.0 + rng.lognormal(0.0, 1.2, n),
            {
                "expected_cost": -4.0 + float(np.exp(1.2**2 / 2)),
                "predicted_unsafe_probability": _lognormal_mean(sig),
                "unsafe_rate": float(stats.lognorm(s=1.2).sf(4.0)),
            },
        ),
        "beta_logit": (
            lambda rng, n: special.logit(np.clip(rng.beta(beta_a, beta_b, n), 1e-300, 1 - 1e-16)),
            {
                "expected_cost": float(special.digamma(beta_a) - special.digamma(beta_b)),
                "predicted_unsafe_probability": beta_a / (beta_a + beta_b),
                "unsafe_rate": float(stats.beta(beta_a, beta_b).sf(0.5)),
            },
        ),
    }


def _metric(scores: np.ndarray, metric: str) -> np.ndarray:
    if metric == "predicted_unsafe_probability":
        return special.expit(scores)
    return (scores > 0).astype(float) if metric == "unsafe_rate" else scores


def coverage(trials: int, seed: int) -> list[dict]:
    """Part A: the miss rate of every (metric, bound) on every world, size and delta."""
    rows = []
    for name, (sample, truth) in worlds().items():
        for n in SIZES:
            rng = np.random.default_rng([seed, n, len(name)])
            draws = [sample(rng, n) for _ in range(trials)]
            for delta in DELTAS:
                for metric, bound in BOUNDS:
                    value_range = None if metric == "expected_cost" else (0.0, 1.0)
                    misses = sum(
                        upper_bound(
                            _metric(d, metric), confidence=1 - delta, bound=bound,
                            value_range=value_range,
                        ).upper_bound < truth[metric]
                        for d in draws
                    )  # fmt: skip
                    rows.append({
                        "world": name, "n": n, "delta": delta, "metric": metric, "bound": bound,
                        "miss_rate": misses / trials,
                        "pvalue": float(stats.binom.sf(misses - 1, trials, delta)),
                    })  # fmt: skip
    return rows


# Part B's step-1 / step-2 variants: (label, step-1 SafetyConfig bound, step-2 bound).
VARIANTS = (
    ("betting (default)", "auto", "auto"),
    ("student_t", "student_t", "student_t"),
    ("hoeffding", "hoeffding", "hoeffding"),
    ("betting, t-based step 1", "student_t", "auto"),
)


def end_to_end(trials: int, seed: int, cells: list[tuple[float, float, int]]) -> list[dict]:
    """Part B: failure and solution rate of HC-RLHF per variant, on the synthetic world's truth."""
    world = SyntheticWorld(SyntheticConfig(num_prompts=2000, num_users=5, pairs_per_user=2), seed=0)
    sets = [world.sample_candidates(world.prompts, num_candidates=16, seed=d) for d in range(2)]
    rewards = torch.from_numpy(np.concatenate([s.population_reward for s in sets]))
    costs = torch.from_numpy(np.concatenate([s.true_cost for s in sets]))
    prob = torch.sigmoid(costs)
    rows = []
    for tau, confidence, n_safety in cells:
        rng = np.random.default_rng([seed, n_safety])
        gen = torch.Generator().manual_seed(seed)
        counts = {label: [0, 0] for label, _, _ in VARIANTS}  # [released, failures]
        for _ in range(trials):
            opt = torch.from_numpy(rng.integers(0, rewards.shape[0], 200))
            safe = torch.from_numpy(rng.integers(0, rewards.shape[0], n_safety))
            for label, step1, step2 in VARIANTS:
                config = {"cost_threshold": tau, "confidence": confidence}
                result = select_candidate_policy(
                    rewards[opt], costs[opt], beta=0.1, n_safety=n_safety,
                    safety=SafetyConfig(bound=step1, **config),
                )  # fmt: skip
                if not result.feasible:
                    continue
                policy, r, c = result.policy, rewards[safe], costs[safe]
                picked = c[torch.arange(n_safety), policy.sample(r, c, generator=gen)]
                cert = certify_samples(
                    picked, safety=SafetyConfig(bound=step2, **config),
                    sampler_settings={}, safety_fingerprint=None,
                )  # fmt: skip
                if cert.passed:
                    truth = float(policy.expectation(prob, rewards, costs).mean())
                    counts[label][0] += 1
                    counts[label][1] += truth > tau
        for label, (released, failures) in counts.items():
            rows.append({
                "tau": tau, "confidence": confidence, "n_safety": n_safety, "variant": label,
                "solution_rate": released / trials, "failure_rate": failures / trials,
                "pvalue": float(stats.binom.sf(failures - 1, trials, 1 - confidence)),
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--trials", type=int, default=300, help="part A trials per cell")
    parser.add_argument("--e2e-trials", type=int, default=100, help="part B trials per cell")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    cells = [(0.15, 0.95, 30), (0.15, 0.95, 100), (0.15, 0.9, 400)]
    payload = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "coverage": coverage(args.trials, args.seed),
        "end_to_end": end_to_end(args.e2e_trials, args.seed, cells),
    }
    payload["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    worst = {}
    for row in payload["coverage"]:
        key = (row["metric"], row["bound"])
        worst[key] = max(worst.get(key, 0.0), row["miss_rate"] - row["delta"])
    for (metric, bound), excess in worst.items():
        print(f"{metric:30s} {bound:20s} worst miss rate - delta: {excess:+.3f}")
    for row in payload["end_to_end"]:
        print(
            f"tau={row['tau']} conf={row['confidence']} n_s={row['n_safety']:4d} "
            f"{row['variant']:24s} solution {row['solution_rate']:.2f} failure {row['failure_rate']:.3f}"
        )
    print(f"{payload['seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
