"""Retest shopping: how often a policy that should never pass is certified, with and without the log.

The attack of issue 13 (finding 3): a policy whose true value is just above tau is re-aligned and
re-tested on the *same* safety prompts up to R times, with fresh responses each time, until one
test passes. Per trial a safety set of ``n_s`` prompts is drawn once (each prompt has its own
latent unsafe tendency, so retests share the prompts' luck); every retry draws fresh responses.
Three regimes, each calling the library (``attempts.CertificationLog`` on a scratch SQLite file,
``attempts.attempt_safety``, ``hc_rlhf.certify_samples``):

* ``no log`` (the behaviour before the log): every retry runs at delta; passed if any passes;
* ``log, 1 declared`` (the default): the log refuses retries 2..R (``IsolationError``);
* ``log, R declared``: ``safety.attempts: R``, each test at delta / R (union bound).

Worlds: ``unsafe_rate`` with Clopper-Pearson (prompt p_j ~ Beta(1, 19), responses Bernoulli(p_j))
and ``predicted_unsafe_probability`` with betting (prompt a_j ~ N(-3, 1.5), response score
a_j + N(0, 1.5)). tau is the true mean minus 0.002: a pass is a false pass.

Usage: nice python benchmarks/retest_shopping.py --trials 2000 --out benchmarks/results/retest_shopping.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import integrate, special, stats

from safealign._atomic import atomic_write_text
from safealign.config import SafetyConfig
from safealign.constraints.attempts import CertificationLog, attempt_safety
from safealign.constraints.bounded_means import betting_upper_bounds
from safealign.constraints.hc_rlhf import certify_samples
from safealign.errors import IsolationError

RETRIES = (1, 5, 20)
REGIMES = ("no log", "log, 1 declared", "log, R declared")


def _scores(world: str, rng: np.random.Generator, n: int, retries: int) -> np.ndarray:
    """Cost scores ``[retries, n]``: one safety set of n prompts, fresh responses per retry."""
    if world == "unsafe_rate":
        p = rng.beta(1.0, 19.0, n)
        return np.where(rng.random((retries, n)) < p, 1.0, -1.0)  # sign = unsafe
    a = rng.normal(-3.0, 1.5, n)
    return a + rng.normal(0.0, 1.5, (retries, n))


def _truth(world: str) -> float:
    if world == "unsafe_rate":
        return 1.0 / 20.0
    marginal = stats.norm(-3.0, 1.5 * math.sqrt(2.0))
    return integrate.quad(lambda c: special.expit(c) * marginal.pdf(c), -40, 40, limit=200)[0]


def _bounds(world: str, scores: np.ndarray, confidence: float) -> np.ndarray:
    """The default bound of every row of ``scores`` ``[T, n]`` (batched; checked in :func:`shop`)."""
    if world == "unsafe_rate":
        n, k = scores.shape[1], (scores > 0).sum(axis=1)
        return np.where(k >= n, 1.0, stats.beta.ppf(confidence, k + 1, np.maximum(n - k, 1)))
    return betting_upper_bounds(special.expit(scores), confidence=confidence, low=0.0, high=1.0)


def shop(
    world: str, n_safety: int, delta: float, trials: int, seed: int, log_dir: Path
) -> list[dict]:
    """False-pass rate of each regime and R on ``world``."""
    tau = _truth(world) - 0.002
    rows = []
    for retries in RETRIES:
        log = CertificationLog(log_dir / f"{world}-{n_safety}-{delta}-{retries}.sqlite")
        rng = np.random.default_rng([seed, retries, n_safety])
        scores = np.stack([_scores(world, rng, n_safety, retries) for _ in range(trials)])
        passes, refused = dict.fromkeys(REGIMES, 0), 0
        for regime in REGIMES:
            declared = retries if regime == "log, R declared" else 1
            safety = attempt_safety(
                SafetyConfig(
                    metric=world, cost_threshold=tau, confidence=1 - delta, attempts=declared
                )
            )
            flat = scores.reshape(trials * retries, n_safety)
            passed = (_bounds(world, flat, safety.confidence) <= tau).reshape(trials, retries)
            for attempt in range(retries):  # the batched bounds are the library's
                cert = certify_samples(
                    scores[0, attempt], safety=safety, sampler_settings={}, safety_fingerprint=None
                )
                assert cert.passed == passed[0, attempt], (world, regime, attempt)
            for trial in range(trials):
                allowed = retries
                if regime != "no log":  # ask the log before every attempt, as `certify` does
                    for attempt in range(retries):
                        try:
                            log.begin(f"{regime}/{trial}", declared=declared, policy=str(attempt),
                                      bound=safety.resolved_bound, confidence=safety.confidence)  # fmt: skip
                        except IsolationError:
                            allowed, refused = attempt, refused + (retries - attempt)
                            break
                passes[regime] += bool(passed[trial, :allowed].any())
        for regime, count in passes.items():
            rows.append({
                "world": world, "n_safety": n_safety, "delta": delta, "retries": retries,
                "regime": regime, "false_pass_rate": count / trials,
                "pvalue": float(stats.binom.sf(count - 1, trials, delta)),
            })  # fmt: skip
        rows[-2]["refused_retests"] = refused
    return rows


def _fields(config: SafetyConfig) -> dict:
    return {k: getattr(config, k) for k in config.__dataclass_fields__}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--n-safety", type=int, default=100)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # The log's SQLite file on tmpfs where there is one (only the speed differs).
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as scratch:
        rows = [
            row
            for world in ("unsafe_rate", "predicted_unsafe_probability")
            for row in shop(world, args.n_safety, args.delta, args.trials, args.seed, Path(scratch))
        ]
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    payload["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['world']:30s} R={row['retries']:2d} {row['regime']:16s} false pass {row['false_pass_rate']:.4f} (p {row['pvalue']:.3f})"
        )
    print(f"{payload['seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
