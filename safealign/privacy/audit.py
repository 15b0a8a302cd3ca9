"""Empirical privacy audit in one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

Insert m canary pairs, each included in training independently with probability ½; train once;
score every canary by its margin ``r(x, chosen) − r(x, rejected)`` (a member was trained to rank
its ``chosen`` first); guess "in" for the k₊ highest margins and "out" for the k₋ lowest. With v
correct out of r = k₊ + k₋ guesses, an (ε, δ)-DP training run satisfies (their Theorem 5.2)

    P[v correct] ≤ P[Bin(r, e^ε / (1 + e^ε)) ≥ v] + 2·m·δ·α(ε),

so ε_lower is the largest ε whose p-value stays below ``1 − confidence``: ε ≥ ε_lower with that
confidence. A correct DP run must give ε_lower ≤ ε; a run with the noise switched off must give a
clearly larger ε_lower (the test that the audit itself can fail). The bound is a *lower* bound:
a small ε_lower does not prove privacy, a large one disproves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from safealign.config import ModelConfig
from safealign.data.records import PairDataset, PreferencePair
from safealign.models.backbones import tiny_vocabulary
from safealign.models.pairs import encode_pairs
from safealign.models.scalar import build_scoring_model
from safealign.privacy.accounting import Mechanism, compute_epsilon
from safealign.privacy.dp_sgd import privacy_units, run_dp_sgd
from safealign.privacy.plan import TrainingPlan, plan_training


def audit_p_value(
    num_canaries: int, guesses: int, correct: int, *, epsilon: float, target_delta: float
) -> float:
    """P-value of ``correct`` right guesses out of ``guesses`` under (ε, δ)-DP (Algorithm 3 of the paper)."""
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    tail = stats.binom.sf(correct - 1, guesses, q)  # P[Bin(r, q) >= v]
    alpha, running = 0.0, 0.0
    for i in range(1, correct + 1):  # the δ term: worst case over how δ mass shifts guesses
        running += stats.binom.pmf(correct - i, guesses, q)
        alpha = max(alpha, running / i)
    return min(1.0, tail + alpha * target_delta * 2 * num_canaries)


def epsilon_lower_bound(
    num_canaries: int, guesses: int, correct: int, *, target_delta: float, confidence: float = 0.95
) -> float:
    """Largest ε whose p-value is below ``1 − confidence`` (0 when even ε = 0 is not rejected)."""
    if not 0 <= correct <= guesses <= num_canaries:
        raise ValueError(
            f"need 0 <= correct ({correct}) <= guesses ({guesses}) <= canaries ({num_canaries})"
        )
    level = 1.0 - confidence
    low, high = 0.0, 1.0
    if (
        audit_p_value(num_canaries, guesses, correct, epsilon=0.0, target_delta=target_delta)
        >= level
    ):
        return 0.0
    while (
        audit_p_value(num_canaries, guesses, correct, epsilon=high, target_delta=target_delta)
        < level
    ):
        high += 1.0
        if high > 100:
            return high
    for _ in range(40):  # bisection: p-value is increasing in ε
        mid = (low + high) / 2
        if (
            audit_p_value(num_canaries, guesses, correct, epsilon=mid, target_delta=target_delta)
            < level
        ):
            low = mid
        else:
            high = mid
    return low


def make_canaries(
    num_canaries: int, *, seed: int, words_per_text: int = 8
) -> tuple[PreferencePair, ...]:
    """Canary pairs of random words from the public tiny vocabulary: unlike any real record, so a
    model that memorises one reveals it, which is what a worst-case audit needs."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA0D17]))
    vocab = [w for w in tiny_vocabulary() if w.isalpha()]
    out = []
    for i in range(num_canaries):
        texts = [" ".join(rng.choice(vocab, size=words_per_text)) for _ in range(3)]
        out.append(
            PreferencePair(prompt=f"canary {i}: {texts[0]}", chosen=texts[1], rejected=texts[2])
        )
    return tuple(out)


@dataclass(frozen=True)
class AuditResult:
    """Outcome of a one-run audit.

    Attributes:
        epsilon_lower: Empirical lower bound on ε at ``confidence``.
        epsilon: The accountant's ε for the audited run (None when the noise was switched off).
        noise_multiplier: σ of the run (0.0 when switched off).
        num_canaries / guesses / correct: m, r and v of the audit.
        confidence: Confidence of the lower bound.
        steps / sample_rate: The run's schedule.
    """

    epsilon_lower: float
    epsilon: float | None
    noise_multiplier: float
    num_canaries: int
    guesses: int
    correct: int
    confidence: float
    steps: int
    sample_rate: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class AuditSetup:
    """The audited run, fixed before training: data with the included canaries, and its plan."""

    train: PairDataset
    canaries: tuple[PreferencePair, ...]
    included: np.ndarray
    plan: TrainingPlan


def prepare_audit(
    pairs: PairDataset,
    *,
    config: ModelConfig,
    seed: int,
    num_canaries: int = 256,
    noise_off: bool = False,
) -> AuditSetup:
    """Draw the canaries and their Bernoulli(½) inclusion, and plan the run on the result.

    ``noise_off`` keeps clipping and sampling but adds no noise: the run is then *not* private,
    which is exactly what the audit must detect.
    """
    canaries = make_canaries(num_canaries, seed=seed)
    included = (
        np.random.default_rng(np.random.SeedSequence([seed, 0x1C])).random(num_canaries) < 0.5
    )
    kept = tuple(c for c, keep in zip(canaries, included, strict=True) if keep)
    train = PairDataset(pairs.pairs + kept, name=f"{pairs.name}+canaries")
    _, num_units = privacy_units(train, config.privacy.privacy_unit)
    plan = plan_training(num_units, config)
    if noise_off:
        plan = replace(plan, noise_multiplier=0.0)
    return AuditSetup(train, canaries, included, plan)


def run_privacy_audit(
    setup: AuditSetup,
    *,
    config: ModelConfig,
    seed: int,
    guess_fraction: float = 0.4,
    confidence: float = 0.95,
    progress: bool = True,
) -> AuditResult:
    """Train a reward model once on ``setup.train`` and audit it with the canaries."""
    scoring = build_scoring_model(config, kind="reward", seed=seed)
    units, _ = privacy_units(setup.train, config.privacy.privacy_unit)
    plan = setup.plan
    run_dp_sgd(
        scoring,
        encode_pairs(scoring, setup.train),
        units,
        plan,
        config=config,
        kind="reward",
        seed=seed,
        progress=progress,
    )
    canaries = setup.canaries
    prompts = [c.prompt for c in canaries]
    margins = (
        scoring.score(prompts, [c.chosen for c in canaries])
        - scoring.score(prompts, [c.rejected for c in canaries])
    ).numpy()
    correct, guesses = _score_guesses(margins, setup.included, guess_fraction)
    epsilon = None
    if plan.private and plan.noise_multiplier:
        epsilon = compute_epsilon(
            Mechanism(plan.noise_multiplier, plan.sample_rate, plan.steps),
            target_delta=config.privacy.target_delta,
            accountant=config.privacy.accountant,
        ).epsilon
    lower = epsilon_lower_bound(
        len(canaries),
        guesses,
        correct,
        target_delta=config.privacy.target_delta,
        confidence=confidence,
    )
    return AuditResult(
        lower,
        epsilon,
        float(plan.noise_multiplier or 0.0),
        len(canaries),
        guesses,
        correct,
        confidence,
        plan.steps,
        plan.sample_rate,
    )


def _score_guesses(
    margins: np.ndarray, included: np.ndarray, guess_fraction: float
) -> tuple[int, int]:
    """Guess "in" for the top half of the r most extreme margins, "out" for the bottom half."""
    k = max(1, int(guess_fraction * len(margins) / 2))
    order = np.argsort(margins, kind="stable")
    guessed_out, guessed_in = order[:k], order[-k:]
    correct = int(included[guessed_in].sum() + (~included[guessed_out]).sum())
    return correct, 2 * k
