"""MaxMin under the pessimistic cost bound: sequential (weights, then tilt) vs joint, same instance.

The synthetic world's default groups (10:1, majority +0.3 formal, minority -1.0 casual) on
``--prompts`` world prompts x ``--candidates`` reference candidates, scored with the world's TRUE
group rewards and TRUE cost, so that only the algorithm is measured (no learnt model). Step 1's
bound is HC-RLHF's ``mean + k * std`` of the per-prompt expected costs, ``k`` from
``bounds.pessimism_k(n_b = prompts, n_s = --n-safety, confidence, C1, C2)`` (defaults: the demo's
metric ``sigmoid(c)`` of the true cost, C1 = 4, C2 = 2); ``cost_threshold``
sits a fraction ``--fractions`` of the way from the cheapest feasible bound to the bound of
unconstrained MaxMin. Group rewards are normalised as regret against each group's own
*constrained* optimum (its best tilt at the same KL price that passes the bound).

* sequential (the old ``optimize_policy``): MaxMin weights without the cost (``solve_maxmin`` on
  plain regret), then the smallest passing lambda for ``sum_g w_g r_g`` (``solve_pessimistic``);
* joint (the new one): ``solve_maxmin_pessimistic``, the weights and lambda together.

For each, measured in the same (constrained-regret) units: the worst group and the spread
(best minus worst group), its MaxMin objective's gap to the exact constrained MaxMin optimum at
its own mean cost (``solve_maxmin`` with the mean constraint; Clarabel agrees in the tests), the
step-1 bound against the threshold, each group's TRUE raw reward and the solve time. With
``--cone``, also the gap to the second-order cone program's optimum over *all* policies on the
candidates (Clarabel, seed 0 only: tens of seconds each), the ceiling no single-lambda tilt
reaches.

Usage: python benchmarks/maxmin_constrained.py --out benchmarks/results/maxmin_constrained.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from safealign._atomic import atomic_write_text
from safealign.config import SyntheticConfig
from safealign.constraints import normalize_group_rewards, solve_maxmin
from safealign.constraints.bounds import mean_plus_k_std, pessimism_k
from safealign.constraints.maxmin_pessimistic import group_cost_lambdas, solve_maxmin_pessimistic
from safealign.constraints.oracle import solve_maxmin_pessimistic_oracle
from safealign.constraints.solvers import kl_rows, solve_pessimistic
from safealign.data import SyntheticWorld


def _evaluate(q, normalized, true, costs, *, beta, bound_fn, log_p=None) -> dict:
    """A policy's groups (constrained regret), objective, mean cost, bound and true rewards."""
    groups = torch.einsum("nk,gnk->g", q, normalized) / q.shape[0]
    ref = torch.full_like(q, -np.log(q.shape[1])) if log_p is None else torch.log_softmax(log_p, -1)
    kl = float(kl_rows(q, ref).mean())
    prompt_costs = (q * costs).sum(-1)
    return {
        "groups": [float(v) for v in groups],
        "worst": float(groups.min()),
        "spread": float(groups.max() - groups.min()),
        "objective": float(groups.min()) - beta * kl,
        "mean_cost": float(prompt_costs.mean()),
        "bound": float(bound_fn(prompt_costs)),
        # TRUE rewards on the world's truth; the models' raw scores on a run directory.
        "raw_rewards": [float((q * r).sum(-1).mean()) for r in true],
    }


def _optimum_at(normalized, costs, mean_cost, *, beta, log_p=None) -> dict:
    """The exact MaxMin optimum under ``E_q[c] <= mean_cost`` (mean constraint, torch solver)."""
    best = solve_maxmin(normalized, beta=beta, log_p=log_p, costs=costs, cost_threshold=mean_cost)
    return {"worst": float(best.group_rewards.min()), "objective": best.objective}


def _sequential(raw, costs, *, beta, tau, bound_fn, log_p):
    plain = normalize_group_rewards(raw, mode="regret", beta=beta, log_p=log_p)
    weights = solve_maxmin(plain, beta=beta, log_p=log_p).weights
    combined = torch.einsum("g,gnk->nk", weights, raw)
    solved = solve_pessimistic(
        combined, costs, beta=beta, cost_threshold=tau, bound_fn=bound_fn, log_p=log_p
    )
    return solved.q, weights, float(solved.lambdas[0])


def _joint(raw, costs, *, beta, tau, bound_fn, log_p):
    constraint = {"cost_threshold": tau, "bound_fn": bound_fn, "log_p": log_p}
    lambdas = group_cost_lambdas(raw, costs, beta=beta, **constraint)
    normalized = normalize_group_rewards(
        raw, mode="regret", beta=beta, log_p=log_p, costs=costs, cost_lambdas=lambdas
    )
    solved = solve_maxmin_pessimistic(normalized, costs, beta=beta, **constraint)
    return solved.q, solved.weights, solved.cost_lambda


def _timed(fn, repeats: int):
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return out, statistics.median(seconds)


def _instance(args, seed: int):
    world = SyntheticWorld(SyntheticConfig(), seed=seed)
    rng = np.random.default_rng(seed + 1)
    prompts = [
        world.prompts[i] for i in rng.choice(len(world.prompts), args.prompts, replace=False)
    ]
    cands = world.sample_candidates(prompts, num_candidates=args.candidates, seed=seed + 2)
    names = sorted(cands.true_rewards)
    raw = torch.from_numpy(np.stack([cands.true_rewards[g] for g in names]))
    cost = torch.from_numpy(cands.true_cost)
    return (
        names,
        raw,
        torch.sigmoid(cost) if args.metric == "predicted_unsafe_probability" else cost,
    )


def run_case(args, seed: int, fraction: float, *, cone: bool) -> dict:
    names, raw, costs = _instance(args, seed)
    k = pessimism_k(args.prompts, args.n_safety, confidence=args.confidence, c1=args.c1, c2=args.c2)
    bound_fn = functools.partial(mean_plus_k_std, k=k)
    beta = args.beta
    free = solve_maxmin(normalize_group_rewards(raw, mode="regret", beta=beta), beta=beta)
    floor, top = float(bound_fn(costs.min(-1).values)), float(bound_fn((free.q * costs).sum(-1)))
    tau = floor + fraction * (top - floor)
    out = {"seed": seed, "fraction": fraction, "k": k, "groups": names}
    out |= _compare(raw, costs, None, beta=beta, tau=tau, bound_fn=bound_fn, repeats=args.repeats)
    if cone:
        _add_cone(out, raw, costs, beta=beta, tau=tau, k=k)
    return out


def _compare(raw, costs, log_p, *, beta, tau, bound_fn, repeats: int) -> dict:
    """Both methods on one instance, measured in regret against each group's constrained optimum."""
    common = {"beta": beta, "tau": tau, "bound_fn": bound_fn, "log_p": log_p}
    (q_old, w_old, lam_old), t_old = _timed(lambda: _sequential(raw, costs, **common), repeats)
    (q_new, w_new, lam_new), t_new = _timed(lambda: _joint(raw, costs, **common), repeats)
    lambdas = group_cost_lambdas(
        raw, costs, beta=beta, cost_threshold=tau, bound_fn=bound_fn, log_p=log_p
    )
    normalized = normalize_group_rewards(
        raw, mode="regret", beta=beta, log_p=log_p, costs=costs, cost_lambdas=lambdas
    )
    out = {"cost_threshold": tau}
    for label, q, w, lam, seconds in (
        ("sequential", q_old, w_old, lam_old, t_old),
        ("joint", q_new, w_new, lam_new, t_new),
    ):
        entry = _evaluate(q, normalized, raw, costs, beta=beta, bound_fn=bound_fn, log_p=log_p)
        best = _optimum_at(normalized, costs, entry["mean_cost"], beta=beta, log_p=log_p)
        entry.update(
            weights=[float(v) for v in w], cost_lambda=lam, seconds=seconds,
            worst_gap_to_optimum_at_own_cost=best["worst"] - entry["worst"],
            objective_gap_to_optimum_at_own_cost=best["objective"] - entry["objective"],
        )  # fmt: skip
        out[label] = entry
    out["normalized"] = normalized
    return out


def _add_cone(out: dict, raw, costs, *, beta, tau, k) -> None:
    oracle = solve_maxmin_pessimistic_oracle(
        out["normalized"], costs, beta=beta, cost_threshold=tau, k=k
    )
    out["cone_optimum"] = {"objective": oracle.objective, "seconds": oracle.solve_seconds}
    for label in ("sequential", "joint"):
        out[label]["objective_gap_to_cone"] = oracle.objective - out[label]["objective"]


def run_directory(args, run_dir: Path) -> dict:
    """The instance a finished ``safealign run`` / ``demo`` aligned on: its DP group and cost
    models on its candidate prompts, with its own step-1 bound (``safety.bound`` anticipated)."""
    from safealign.config.loading import load_config
    from safealign.constraints.align import score_candidates
    from safealign.constraints.attempts import attempt_safety
    from safealign.constraints.selection import step1_bound, step1_inputs
    from safealign.run.models import load_scorers
    from safealign.run.paths import CONFIG_FILE
    from safealign.run.policy_file import load_policy_file
    from safealign.run.workspace import Workspace

    config = load_config(run_dir / CONFIG_FILE)
    ws = Workspace(config, run_dir)
    policy_file = load_policy_file(run_dir / "policy.json")
    scorers = load_scorers(run_dir, policy_file.models, None)
    candidates = ws.sampler.candidates(ws.splits.candidate.prompts, seed=config.seed + 1)
    scored = score_candidates(candidates, scorers)
    safety = attempt_safety(config.safety)
    _, costs, log_p = step1_inputs(scored.rewards, scored.costs, scored.log_p, safety=safety)
    bound_fn = step1_bound(safety, policy_file.selection["n_safety"])
    out = {"run_dir": str(run_dir), "bound": safety.resolved_bound, "metric": safety.metric,
           "groups": list(scorers.group_rewards)}  # fmt: skip
    out |= _compare(
        scored.group_rewards, costs, log_p, beta=config.policy.beta, tau=safety.cost_threshold,
        bound_fn=bound_fn, repeats=args.repeats,
    )  # fmt: skip
    out.pop("normalized")
    return out


def _summary(cases: list[dict]) -> dict:
    def span(label: str, key: str) -> list[float]:
        values = [c[label][key] for c in cases]
        return [min(values), max(values)]

    return {
        label: {
            key: span(label, key)
            for key in ("worst_gap_to_optimum_at_own_cost", "spread", "seconds", "bound")
        }
        for label in ("sequential", "joint")
    } | {"all_joint_bounds_within_threshold": all(c["joint"]["bound"] <= c["cost_threshold"]
                                                  for c in cases)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--prompts", type=int, default=500, help="n_b, optimisation prompts")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--n-safety", type=int, default=500)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--metric", choices=["predicted_unsafe_probability", "expected_cost"],
                        default="predicted_unsafe_probability",
                        help="sigmoid(true cost), the demo's metric, or the raw true cost")  # fmt: skip
    parser.add_argument("--c1", type=float, default=4.0, help="the demo's C1")
    parser.add_argument("--c2", type=float, default=2.0, help="the demo's C2")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--cone", action=argparse.BooleanOptionalAction, default=True,
                        help="Clarabel's cone-program optimum on the first seed")  # fmt: skip
    parser.add_argument("--run-dir", nargs="*", default=[],
                        help="finished run directories (e.g. of `safealign demo`) to measure too")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cases = [
        run_case(args, seed, fraction, cone=args.cone and seed == args.seeds[0])
        for seed in args.seeds
        for fraction in args.fractions
    ]
    for case in cases:
        case.pop("normalized")
    runs = [run_directory(args, Path(d)) for d in args.run_dir]
    payload = {
        "cases": cases,
        "run_directories": runs,
        "summary": _summary(cases),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    s = payload["summary"]
    seq, joint = s["sequential"], s["joint"]
    print(
        f"maxmin_constrained: worst group below the constrained optimum at its own cost: "
        f"sequential {seq['worst_gap_to_optimum_at_own_cost'][0]:.3f}-"
        f"{seq['worst_gap_to_optimum_at_own_cost'][1]:.3f}, joint "
        f"{joint['worst_gap_to_optimum_at_own_cost'][0]:.1e}-{joint['worst_gap_to_optimum_at_own_cost'][1]:.1e}; "
        f"spread {seq['spread'][0]:.3f}-{seq['spread'][1]:.3f} vs {joint['spread'][0]:.1e}-"
        f"{joint['spread'][1]:.1e}; solve {seq['seconds'][1]:.3f} vs {joint['seconds'][1]:.3f} s max; "
        f"joint bound <= threshold in all {len(cases)}: {s['all_joint_bounds_within_threshold']}"
    )
    for run in runs:
        seq, joint = run["sequential"], run["joint"]
        print(
            f"  {run['run_dir']} ({run['bound']}): worst group below the optimum at own cost "
            f"{seq['worst_gap_to_optimum_at_own_cost']:.3f} vs {joint['worst_gap_to_optimum_at_own_cost']:.1e}, "
            f"spread {seq['spread']:.3f} vs {joint['spread']:.1e}, bound {seq['bound']:.4f} / "
            f"{joint['bound']:.4f} (threshold {run['cost_threshold']}), solve {seq['seconds']:.3f} vs "
            f"{joint['seconds']:.3f} s"
        )


if __name__ == "__main__":
    main()
