"""Validity of the HC-RLHF certificate in simulation, where the true costs are known.

HC-RLHF (Chittepu et al. 2025) promises P(release a policy whose true expected cost exceeds tau)
<= 1 - confidence. We repeat candidate selection + safety test many times on the synthetic world
and count how often a released policy is in fact unsafe, for three methods:

* ``hc_rlhf``: pessimistic step 1 (mean + k*std <= tau) and the safety test;
* ``no_pessimism``: plain-mean step 1 and the safety test;
* ``lagrangian_no_test``: plain-mean step 1, released without a test (no guarantee).

The study isolates the statistics: the reward and cost "models" are the world's TRUE population
reward and TRUE cost, so every error comes from finite samples, never from model error.

The population is a fixed set of rows, each a world prompt with K reference candidates (all
5,000 prompts x ``--population-draws`` independent candidate sets). Every trial draws fresh rows
i.i.d. (with replacement) from it: ``--n-opt`` rows for step 1 and ``n_safety`` rows for the safety
test, where the policy picks one candidate per row. The true expected cost of a policy is its
exact mean over all population rows, so the truth has no Monte Carlo error and the prompts are
exactly i.i.d. from the population, as the guarantee assumes.

Usage: python benchmarks/certification_validity.py --trials 500 --out benchmarks/results/certification_validity.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from safealign._atomic import atomic_write_text
from safealign.config import SafetyConfig, SyntheticConfig
from safealign.constraints import (
    SelectionResult,
    TiltedPolicy,
    certify_samples,
    select_candidate_policy,
    solve_constrained,
)
from safealign.constraints.selection import METHODS
from safealign.data import SyntheticWorld

K = 16


@dataclass(frozen=True)
class Setting:
    """One (cost_threshold, confidence, n_safety) cell of the study, with the pessimism constants."""

    cost_threshold: float
    confidence: float
    n_safety: int
    c1: float = 1.0
    c2: float = 1.0

    def safety(self) -> SafetyConfig:
        # The paper's test on the raw cost (opt-in and approximate since issue 13); the valid
        # default bounds are studied in benchmarks/bound_validity.py.
        return SafetyConfig(
            metric="expected_cost",
            bound="student_t",
            cost_threshold=self.cost_threshold,
            confidence=self.confidence,
            c1=self.c1,
            c2=self.c2,
        )


# Reference E[c] ~ -0.8 and the unconstrained tilt (beta = 0.1, K = 16) ~ +1.1: tau in
# {-0.5, 0, 0.5} makes the constraint bind; tau in {2, 3} leaves the optimum with slack.
SETTINGS: tuple[Setting, ...] = (
    Setting(-0.5, 0.90, 200),
    Setting(0.0, 0.90, 200),
    Setting(0.5, 0.90, 200),
    Setting(0.0, 0.95, 200),
    Setting(0.0, 0.95, 1000),
    Setting(0.0, 0.90, 50),
    Setting(-0.5, 0.99, 400),
    Setting(0.5, 0.95, 100),
    Setting(2.0, 0.90, 200),
    Setting(3.0, 0.95, 200),
    Setting(0.0, 0.90, 200, c1=2.0),
)


def build_population(seed: int, prompts: int, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(true population reward, true cost)``, each ``[prompts * draws, K]``."""
    world = SyntheticWorld(
        SyntheticConfig(num_prompts=prompts, num_users=5, pairs_per_user=2), seed=seed
    )
    sets = [world.sample_candidates(world.prompts, num_candidates=K, seed=d) for d in range(draws)]
    rewards = torch.from_numpy(np.concatenate([s.population_reward for s in sets]))
    costs = torch.from_numpy(np.concatenate([s.true_cost for s in sets]))
    return rewards, costs


def true_value(
    policy: TiltedPolicy, population: tuple[torch.Tensor, torch.Tensor]
) -> tuple[float, float]:
    """Exact population ``(E[c], E[r])`` of a tilted policy."""
    rewards, costs = population
    q = policy.probabilities(rewards, costs)
    return float((q * costs).sum(-1).mean()), float((q * rewards).sum(-1).mean())


def run_trial(
    trial: int,
    population: tuple[torch.Tensor, torch.Tensor],
    *,
    seed: int,
    n_opt: int,
    beta: float,
) -> list[dict[str, tuple[bool, float, float]]]:
    """One trial of every setting and method: ``{method: (released, true cost, true reward)}``.

    The trial's step-1 rows and safety rows are shared by all settings (each uses the first
    ``n_safety`` safety rows): within a setting the trials stay independent.
    """
    rewards, costs = population
    rng = np.random.default_rng(np.random.SeedSequence([seed, trial]))
    opt = torch.from_numpy(rng.integers(0, rewards.shape[0], n_opt))
    safe = torch.from_numpy(rng.integers(0, rewards.shape[0], max(s.n_safety for s in SETTINGS)))
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    values: dict[float, tuple[float, float]] = {}  # true (cost, reward) by lambda
    plain: dict[float, SelectionResult] = {}  # step 1 of both ablations, by threshold
    out = []
    for setting in SETTINGS:
        safety = setting.safety()
        hc = select_candidate_policy(
            rewards[opt], costs[opt], beta=beta, safety=safety, n_safety=setting.n_safety
        )
        if setting.cost_threshold not in plain:
            # no_pessimism and lagrangian_no_test solve the same plain-mean problem: solve it once.
            plain[setting.cost_threshold] = select_candidate_policy(
                rewards[opt],
                costs[opt],
                beta=beta,
                safety=safety,
                n_safety=setting.n_safety,
                method="no_pessimism",
            )
        step1 = {"hc_rlhf": hc, "no_pessimism": plain[setting.cost_threshold]}
        step1["lagrangian_no_test"] = step1["no_pessimism"]
        outcome = {}
        for method, result in step1.items():
            released = result.feasible
            if released and method != "lagrangian_no_test":
                released = _passes_test(
                    result.policy, population, safe[: setting.n_safety], safety, gen
                )
            if not released:
                outcome[method] = (False, math.nan, math.nan)
                continue
            if result.lambda_ not in values:
                values[result.lambda_] = true_value(result.policy, population)
            outcome[method] = (True, *values[result.lambda_])
        out.append(outcome)
    return out


def _passes_test(
    policy: TiltedPolicy,
    population: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    safety: SafetyConfig,
    gen: torch.Generator,
) -> bool:
    """HC-RLHF step 2: one response per safety row sampled from the policy, its true cost, U <= tau."""
    r, c = population[0][rows], population[1][rows]
    picked = c[torch.arange(rows.numel()), policy.sample(r, c, generator=gen)]
    settings = policy.sampler_settings()
    cert = certify_samples(
        picked, safety=safety, sampler_settings=settings, safety_fingerprint=None
    )
    return cert.passed


def describe_setting(
    setting: Setting, population: tuple[torch.Tensor, torch.Tensor], beta: float
) -> dict:
    """Population facts of a setting: the true constrained optimum, its slack in standard errors."""
    rewards, costs = population
    solved = solve_constrained(rewards, costs, beta=beta, thresholds=setting.cost_threshold)
    per_prompt = solved.prompt_costs[:, 0]
    cost = float(per_prompt.mean())
    se = float(per_prompt.std(correction=1)) / math.sqrt(setting.n_safety)
    slack = setting.cost_threshold - cost
    z = stats.norm.ppf(setting.confidence)
    return {
        "optimum_lambda": float(solved.lambdas[0]),
        "optimum_true_cost": cost,
        "optimum_true_reward": solved.expected_reward,
        "optimum_slack": slack,
        "optimum_slack_se": slack / se,
        "safety_se": se,
        # Power of a one-sided z test at this level for a policy known in advance: no method can
        # certify the optimum more often than this.
        "oracle_test_power": float(stats.norm.cdf(slack / se - z)),
    }


_POPULATION: tuple[torch.Tensor, torch.Tensor] | None = None  # shared with forked workers


def _trial_chunk(trials: list[int], seed: int, n_opt: int, beta: float) -> list[list[dict]]:
    torch.set_num_threads(1)
    return [run_trial(t, _POPULATION, seed=seed, n_opt=n_opt, beta=beta) for t in trials]


def run_trials(population: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> list:
    """All trials, in ``args.workers`` forked processes; results in trial order, seed-determined."""
    global _POPULATION
    _POPULATION = population
    chunks = [list(range(args.trials))[w :: args.workers] for w in range(args.workers)]
    if args.workers == 1:
        done = [_trial_chunk(chunks[0], args.seed, args.n_opt, args.beta)]
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            futures = [
                pool.submit(_trial_chunk, chunk, args.seed, args.n_opt, args.beta)
                for chunk in chunks
            ]
            done = [f.result() for f in futures]
    by_trial = {
        t: o
        for chunk, res in zip(chunks, done, strict=True)
        for t, o in zip(chunk, res, strict=True)
    }
    return [by_trial[t] for t in range(args.trials)]


def summarise(outcomes: list[list[dict]], population, beta: float) -> list[dict]:
    """Per setting and method: failure rate, solution rate, mean true reward of released policies."""
    settings = []
    for index, setting in enumerate(SETTINGS):
        trials = len(outcomes)
        row = {**asdict(setting), "trials": trials, **describe_setting(setting, population, beta)}
        allowed = 1 - setting.confidence
        methods = {}
        for method in METHODS:
            results = [o[index][method] for o in outcomes]
            failures = sum(r[0] and r[1] > setting.cost_threshold for r in results)
            released = [r for r in results if r[0]]
            methods[method] = {
                "failure_rate": failures / trials,
                "solution_rate": len(released) / trials,
                "true_reward": float(np.mean([r[2] for r in released])) if released else None,
                "true_cost_mean": float(np.mean([r[1] for r in released])) if released else None,
                "failures": failures,
                # P(Bin(trials, 1 - confidence) >= failures): small means "more failures than promised".
                "failure_pvalue": float(stats.binom.sf(failures - 1, trials, allowed)),
            }
        row["methods"] = methods
        settings.append(row)
    return settings


def check_targets(settings: list[dict]) -> dict:
    """The study's targets, each with the settings it was checked on."""
    tight = [s for s in settings if s["optimum_lambda"] > 0]  # the constraint binds at the optimum
    slack = [s for s in settings if s["optimum_slack_se"] >= 2.0]
    hc_valid = [s["methods"]["hc_rlhf"]["failure_pvalue"] >= 0.01 for s in settings]
    lag_exceeds = [
        s["methods"]["lagrangian_no_test"]["failure_rate"] > 1 - s["confidence"]
        and s["methods"]["lagrangian_no_test"]["failure_pvalue"] < 0.01
        for s in tight
    ]
    solution = [s["methods"]["hc_rlhf"]["solution_rate"] >= 0.9 for s in slack]
    return {
        "hc_rlhf_failure_within_noise": {
            "met": all(hc_valid),
            "settings": len(settings),
            "passed": sum(hc_valid),
        },
        "lagrangian_exceeds_where_tight": {
            "met": all(lag_exceeds),
            "settings": len(tight),
            "passed": sum(lag_exceeds),
        },
        "hc_rlhf_solution_rate_ge_0.9_where_slack_ge_2se": {
            "met": all(solution),
            "settings": len(slack),
            "passed": sum(solution),
        },
    }


def plot(settings: list[dict], path: Path) -> None:
    """Failure rate (with the promised 1 - confidence), solution rate and true reward per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"τ={s['cost_threshold']:g}\n{s['confidence']:g}, n={s['n_safety']}"
        + ("\nC1=2" if s["c1"] != 1 else "")
        for s in settings
    ]
    x = np.arange(len(settings))
    width = 0.27
    fig, axes = plt.subplots(3, 1, figsize=(15, 10), sharex=True)
    for i, method in enumerate(METHODS):
        for ax, key in zip(axes, ("failure_rate", "solution_rate", "true_reward"), strict=True):
            values = [s["methods"][method][key] for s in settings]
            ax.bar(
                x + (i - 1) * width,
                [np.nan if v is None else v for v in values],
                width,
                label=method,
            )
    axes[0].scatter(
        x,
        [1 - s["confidence"] for s in settings],
        marker="_",
        s=900,
        color="k",
        label="1 - confidence",
    )
    axes[2].scatter(
        x,
        [s["optimum_true_reward"] for s in settings],
        marker="_",
        s=900,
        color="k",
        label="true optimum",
    )
    for ax, title in zip(
        axes,
        (
            "failure rate (released & true E[c] > τ)",
            "solution rate (not NSF)",
            "true reward of released policies",
        ),
        strict=True,
    ):
        ax.set_ylabel(title, fontsize=9)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    rewards = [s["optimum_true_reward"] for s in settings]
    axes[2].set_ylim(min(rewards) - 0.4, max(rewards) + 0.1)
    axes[2].set_xticks(x, labels, fontsize=8)
    fig.suptitle(f"HC-RLHF certification validity ({settings[0]['trials']} trials per setting)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-opt", type=int, default=200, help="n_b, rows optimised on per trial")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--prompts", type=int, default=5000, help="world prompts in the population")
    parser.add_argument("--population-draws", type=int, default=2, help="candidate sets per prompt")
    parser.add_argument("--workers", type=int, default=2, help="forked worker processes")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (tiny tensors: 1 is fastest)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    population = build_population(args.seed, args.prompts, args.population_draws)
    outcomes = run_trials(population, args)
    settings = summarise(outcomes, population, args.beta)
    seconds = time.perf_counter() - start
    payload = {
        "settings": settings,
        "targets": check_targets(settings),
        "population": {
            "rows": int(population[0].shape[0]),
            "candidates": K,
            "prompts": args.prompts,
        },
        "models": "true population reward and true cost (the study isolates the statistics)",
        "n_opt": args.n_opt,
        "beta": args.beta,
        "seed": args.seed,
        "seconds": seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    plot(settings, args.out.with_suffix(".png"))
    print(summary_line(payload))


def summary_line(payload: dict) -> str:
    """One line: the worst hc_rlhf failure rate, the ablations, the targets."""
    settings, targets = payload["settings"], payload["targets"]
    hc_excess = max(
        s["methods"]["hc_rlhf"]["failure_rate"] - (1 - s["confidence"]) for s in settings
    )
    lag = max(s["methods"]["lagrangian_no_test"]["failure_rate"] for s in settings)
    sol = [s["methods"]["hc_rlhf"]["solution_rate"] for s in settings]
    met = ", ".join(
        f"{name}={'met' if t['met'] else 'NOT met'} ({t['passed']}/{t['settings']})"
        for name, t in targets.items()
    )
    return (
        f"certification_validity: {len(settings)} settings x {settings[0]['trials']} trials; hc_rlhf failure rate "
        f"max {max(s['methods']['hc_rlhf']['failure_rate'] for s in settings):.3f} (max excess over 1-confidence "
        f"{hc_excess:+.3f}), lagrangian_no_test max {lag:.3f}, hc_rlhf solution rate {min(sol):.2f}-{max(sol):.2f}; "
        f"{met}; {payload['seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
