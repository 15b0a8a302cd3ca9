"""Validity and power of the safety test's bounds on heavy-tailed and rare-catastrophe worlds.

Issue 13 found the former default (Student t on the raw cost score) invalid where costs are
skewed. This study measures, for every bound the safety test offers:

* **fixed policy** (part A): a policy whose per-response cost-model scores ``c`` come from a world
  of known distribution, n in {30, 100, 1000}, delta in {0.01, 0.05, 0.1}, ``--trials`` samples per
  cell. *Failure rate*: how often the bound falls below the true mean of the certified quantity
  (= the false-pass rate for a threshold just below the truth); a valid bound fails at most delta
  (binomial p >= 0.01). *Solution rate*: how often the bound is <= ``tau = mean + sd / 2`` (a
  policy safe by half a per-response standard deviation is released). Worlds:
  ``rare_catastrophe`` (97% at c = -4, 3% at c = +6), ``beta_logit`` (sigma(c) ~ Beta(0.2, 4)),
  ``synthetic_cheapest`` (the synthetic world's cheapest-of-16 candidate, true costs), and two
  unbounded ones, ``lognormal`` (c = -4 + LogNormal(0, 1.2)) and ``pareto`` (c = -4 + Lomax(1.5),
  infinite variance), where the range-based bounds certify ``E[clip(c, -4, 6)]`` (the declared
  ``cost_range``) and Student t also the raw ``E[c]``.
* **end to end** (part B): HC-RLHF step 1 + step 2 on the synthetic world with TRUE costs as the
  cost scores, metric ``predicted_unsafe_probability``: failure rate (released with true
  E[sigmoid(c)] > tau) and solution rate per variant.

The bounds are computed for all trials at once: betting by the library's batched
``betting_upper_bounds``; the closed forms here, checked against ``bounds.upper_bound`` on the
first trials of every cell.

Usage (part A about 5 min, part B about 30 min on one shared core):
nice python benchmarks/bound_validity.py --part fixed --trials 2000 --out benchmarks/results/bound_validity.json
nice python benchmarks/bound_validity.py --part e2e --e2e-trials 120 --out benchmarks/results/bound_validity_e2e.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy import integrate, special, stats

from safealign._atomic import atomic_write_text
from safealign.config import SafetyConfig, SyntheticConfig
from safealign.constraints import bounds as bounds_module
from safealign.constraints import certify_samples, select_candidate_policy, upper_bound
from safealign.constraints.bounded_means import betting_upper_bound, betting_upper_bounds
from safealign.data import SyntheticWorld

SIZES, DELTAS = (30, 100, 1000), (0.01, 0.05, 0.1)
COST_RANGE = (-4.0, 6.0)
# Per certified quantity, the bounds measured (the first is the library default for it).
QUANTITIES = {
    "predicted_unsafe_probability": (
        "betting", "betting_c0.9", "empirical_bernstein", "hoeffding", "student_t",
    ),
    "unsafe_rate": ("clopper_pearson", "betting", "hoeffding", "student_t"),
    "clipped_cost": ("betting", "betting_c0.9", "empirical_bernstein", "hoeffding", "student_t"),
    "raw_cost": ("student_t",),
}  # fmt: skip
BOUNDED_WORLDS = ("rare_catastrophe", "beta_logit", "synthetic_cheapest")


def _quad_mean(f: Callable, pdf: Callable) -> float:
    return integrate.quad(lambda x: f(x) * pdf(x), 0, np.inf, limit=400)[0]


def _quantity(scores: np.ndarray, name: str) -> np.ndarray:
    if name == "predicted_unsafe_probability":
        return special.expit(scores)
    if name == "unsafe_rate":
        return (scores > 0).astype(float)
    return np.clip(scores, *COST_RANGE) if name == "clipped_cost" else scores


def worlds() -> dict[str, tuple[Callable, dict[str, tuple[float, float]]]]:
    """Per world: a sampler ``(rng, shape) -> scores`` and each quantity's exact (mean, sd)."""
    out: dict[str, tuple[Callable, dict[str, tuple[float, float]]]] = {}

    def moments(f: Callable, pdf: Callable) -> tuple[float, float]:
        mean = _quad_mean(f, pdf)
        return mean, math.sqrt(max(_quad_mean(lambda x: f(x) ** 2, pdf) - mean**2, 0.0))

    two_point = np.array([-4.0, 6.0]), np.array([0.97, 0.03])
    out["rare_catastrophe"] = (
        lambda rng, shape: np.where(rng.random(shape) < 0.03, 6.0, -4.0),
        {q: _discrete(_quantity(two_point[0], q), two_point[1]) for q in QUANTITIES},
    )
    a, b = 0.2, 4.0
    beta = stats.beta(a, b)
    out["beta_logit"] = (
        lambda rng, shape: special.logit(np.clip(rng.beta(a, b, shape), 1e-300, 1 - 1e-16)),
        {
            "predicted_unsafe_probability": (beta.mean(), beta.std()),
            "unsafe_rate": _discrete(np.array([0.0, 1.0]), np.array([beta.cdf(0.5), beta.sf(0.5)])),
        },
    )
    cheapest = _synthetic_cheapest()
    out["synthetic_cheapest"] = (
        lambda rng, shape: cheapest[rng.integers(0, cheapest.size, shape)],
        {q: _discrete(_quantity(cheapest, q), np.full(cheapest.size, 1 / cheapest.size))
         for q in ("predicted_unsafe_probability", "unsafe_rate")},
    )  # fmt: skip
    tails = {
        "lognormal": (lambda rng, shape: rng.lognormal(0.0, 1.2, shape), stats.lognorm(s=1.2)),
        "pareto": (lambda rng, shape: rng.pareto(1.5, shape), stats.lomax(1.5)),
    }
    for name, (draw, dist) in tails.items():
        truth = {
            q: moments(lambda x, q=q: float(_quantity(np.array(-4.0 + x), q)), dist.pdf)
            for q in ("predicted_unsafe_probability", "clipped_cost")
        }
        truth["unsafe_rate"] = _discrete(np.array([0.0, 1.0]), np.array([dist.cdf(4), dist.sf(4)]))
        truth["raw_cost"] = (-4.0 + dist.mean(), dist.std())  # pareto: std inf
        out[name] = (lambda rng, shape, draw=draw: -4.0 + draw(rng, shape), truth)
    return out


def _discrete(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    mean = float(np.dot(values, weights))
    return mean, math.sqrt(max(float(np.dot((values - mean) ** 2, weights)), 0.0))


def _synthetic_cheapest() -> np.ndarray:
    world = SyntheticWorld(SyntheticConfig(num_prompts=2000, num_users=5, pairs_per_user=2), seed=0)
    return world.sample_candidates(world.prompts, num_candidates=16, seed=0).true_cost.min(axis=1)


def batched_bounds(x: np.ndarray, bound: str, delta: float, value_range) -> np.ndarray:
    """Upper bounds of every row of ``x`` ``[T, n]`` (closed forms; betting from the library)."""
    n = x.shape[1]
    mean, std = x.mean(axis=1), x.std(axis=1, ddof=1)
    if bound == "student_t":
        return mean + stats.t.ppf(1 - delta, n - 1) * std / math.sqrt(n)
    low, high = value_range if value_range is not None else (0.0, 1.0)
    if bound.startswith("betting"):
        c = float(bound.split("_c")[1]) if "_c" in bound else 0.75
        return betting_upper_bounds(x, confidence=1 - delta, low=low, high=high, truncation=c)
    if bound == "hoeffding":
        return mean + (high - low) * math.sqrt(math.log(1 / delta) / (2 * n))
    if bound == "clopper_pearson":
        k = x.sum(axis=1)
        return np.where(k >= n, 1.0, stats.beta.ppf(1 - delta, k + 1, np.maximum(n - k, 1)))
    unit = (x - low) / (high - low)  # empirical Bernstein (Maurer & Pontil 2009, Thm 4)
    log_term = math.log(2 / delta)
    upper = (
        unit.mean(1)
        + np.sqrt(2 * unit.var(1, ddof=1) * log_term / n)
        + 7 * log_term / (3 * (n - 1))
    )
    return low + (high - low) * np.minimum(upper, 1.0)


def _library_bound(row: np.ndarray, bound: str, delta: float, value_range) -> float:
    if bound == "betting_c0.9":
        low, high = value_range
        return betting_upper_bound(row, confidence=1 - delta, low=low, high=high, truncation=0.9)
    return upper_bound(row, confidence=1 - delta, bound=bound, value_range=value_range).upper_bound


def fixed_policy(trials: int, seed: int) -> list[dict]:
    """Part A: failure and solution rate of every bound on every world, size and delta."""
    rows = []
    for name, (draw, truth) in worlds().items():
        for n in SIZES:
            scores = draw(np.random.default_rng([seed, n, len(name)]), (trials, n))
            for quantity, (mean, sd) in truth.items():
                x = _quantity(scores, quantity)
                value_range = COST_RANGE if quantity == "clipped_cost" else None
                value_range = (
                    (0.0, 1.0)
                    if quantity in ("predicted_unsafe_probability", "unsafe_rate")
                    else value_range
                )
                tau = mean + sd / 2 if math.isfinite(sd) else None
                for bound in QUANTITIES[quantity]:
                    for delta in DELTAS:
                        upper = batched_bounds(x, bound, delta, value_range)
                        for i in range(3):  # the closed forms are the library's
                            expected = _library_bound(x[i], bound, delta, value_range)
                            assert math.isclose(upper[i], expected, rel_tol=1e-9, abs_tol=1e-9), (
                                bound,
                                upper[i],
                                expected,
                            )
                        failures = int((upper < mean).sum())
                        rows.append({
                            "world": name, "n": n, "delta": delta, "quantity": quantity, "bound": bound,
                            "true_mean": mean, "tau": tau, "failure_rate": failures / trials,
                            "pvalue": float(stats.binom.sf(failures - 1, trials, delta)),
                            "solution_rate": None if tau is None else float((upper <= tau).mean()),
                        })  # fmt: skip
    return rows


# Part B's variants: (label, step-1 bound, step-2 bound, betting truncation c, unit). Unit
# "response": one resampled response per safety prompt (the library's best-of-K sampler);
# "expectation": the Rao-Blackwellised unit, each safety prompt's exact expected metric under the
# policy's resampling distribution over its K fresh candidates (i.i.d. across prompts, same mean).
VARIANTS = (
    ("betting (default)", "auto", "auto", 0.75, "response"),
    ("betting c=0.9", "auto", "auto", 0.9, "response"),
    ("betting, per-prompt expectation", "auto", "auto", 0.75, "expectation"),
    ("student_t", "student_t", "student_t", 0.75, "response"),
    ("student_t, per-prompt expectation", "student_t", "student_t", 0.75, "expectation"),
    ("hoeffding", "hoeffding", "hoeffding", 0.75, "response"),
    ("betting, t-based step 1", "student_t", "auto", 0.75, "response"),
)


def end_to_end(trials: int, seed: int, cells: list[tuple[float, float, int]]) -> list[dict]:
    """Part B: failure and solution rate of HC-RLHF per variant, on the synthetic world's truth."""
    world = SyntheticWorld(SyntheticConfig(num_prompts=2000, num_users=5, pairs_per_user=2), seed=0)
    sets = [world.sample_candidates(world.prompts, num_candidates=16, seed=d) for d in range(2)]
    rewards = torch.from_numpy(np.concatenate([s.population_reward for s in sets]))
    costs = torch.from_numpy(np.concatenate([s.true_cost for s in sets]))
    prob = torch.sigmoid(costs)
    rows = []
    original = bounds_module.betting_upper_bound
    for tau, confidence, n_safety in cells:
        rng = np.random.default_rng([seed, n_safety])
        gen = torch.Generator().manual_seed(seed)
        counts = {label: [0, 0] for label, *_ in VARIANTS}  # [released, failures]
        for _ in range(trials):
            opt = torch.from_numpy(rng.integers(0, rewards.shape[0], 200))
            safe = torch.from_numpy(rng.integers(0, rewards.shape[0], n_safety))
            step1_cache: dict[tuple[str, float], object] = {}
            for label, step1, step2, c, unit in VARIANTS:
                # The truncation ablation swaps the bound both steps call (benchmark only).
                bounds_module.betting_upper_bound = partial(original, truncation=c)
                config = {"cost_threshold": tau, "confidence": confidence}
                if (step1, c) not in step1_cache:  # variants sharing a step 1 share its result
                    step1_cache[step1, c] = select_candidate_policy(
                        rewards[opt], costs[opt], beta=0.1, n_safety=n_safety,
                        safety=SafetyConfig(bound=step1, **config),
                    )  # fmt: skip
                result = step1_cache[step1, c]
                if not result.feasible:
                    continue
                policy, r, c_safe = result.policy, rewards[safe], costs[safe]
                picked = c_safe[torch.arange(n_safety), policy.sample(r, c_safe, generator=gen)]
                weights = None
                if unit == "expectation":  # the library's unit: every candidate, with q_lambda
                    picked, weights = c_safe, policy.probabilities(r, c_safe)
                unit_name = "prompt_expectation" if unit == "expectation" else "response"
                cert = certify_samples(
                    picked, safety=SafetyConfig(bound=step2, unit=unit_name, **config),
                    sampler_settings={}, safety_fingerprint=None, weights=weights,
                )  # fmt: skip
                if cert.passed:
                    truth = float(policy.expectation(prob, rewards, costs).mean())
                    counts[label][0] += 1
                    counts[label][1] += truth > tau
        bounds_module.betting_upper_bound = original
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
    parser.add_argument("--part", choices=("fixed", "e2e", "both"), default="both")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    cells = [(0.15, 0.95, 30), (0.15, 0.95, 100), (0.15, 0.95, 1000)]
    payload = {"args": {k: str(v) for k, v in vars(args).items()}}
    payload["fixed_policy"] = fixed_policy(args.trials, args.seed) if args.part != "e2e" else []
    payload["end_to_end"] = (
        end_to_end(args.e2e_trials, args.seed, cells) if args.part != "fixed" else []
    )
    payload["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    invalid: dict[tuple[str, str], list[int]] = {}
    for row in payload["fixed_policy"]:
        counts = invalid.setdefault((row["quantity"], row["bound"]), [0, 0])
        counts[0] += row["pvalue"] < 0.01
        counts[1] += 1
    print("; ".join(f"{q}/{b}: p < 0.01 in {k} of {m} cells" for (q, b), (k, m) in invalid.items()))
    for row in payload["end_to_end"]:
        print(
            f"n_s={row['n_safety']:4d} {row['variant']:24s} solution {row['solution_rate']:.3f} "
            f"failure {row['failure_rate']:.4f} (p {row['pvalue']:.2f})"
        )
    print(f"{payload['seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
