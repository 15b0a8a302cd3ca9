"""The tilted best-of-K policy: HC-RLHF's deployable decoding-time policy.

For a prompt ``x`` the reference sampler draws ``K`` candidates ``y_1..y_K``; the reward and cost
models score them, and the policy returns candidate ``k`` with probability

    q_lambda(y_k | x) ∝ p(y_k | x) * exp((r_k - lambda * c_k) / beta)

(``p`` renormalised over the candidates; uniform when omitted, because the candidates were sampled
from the reference policy), where ``c_k`` is the metric step 1 bounded: for ``expected_cost`` with
a declared ``cost_range``, the cost clipped to that range, so that a candidate scored far outside
it weighs in deployment exactly what it weighed when step 1 chose lambda. This is the Gibbs form of the KL-regularised, cost-constrained
optimum over candidate sets (HC-RLHF, Chittepu et al. 2025, "tilting over candidates"; DESIGN.md
"Optimisers for step 1"). The policy is *defined* by (beta, lambda, K, the reference sampler,
the metric), not by any particular candidate set, so it can be re-applied to fresh candidates
for new prompts; that is how the safety test samples "from the final policy with the deployment
sampler settings".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from safealign.errors import ConfigError, DataError

Metric = Literal["predicted_unsafe_probability", "unsafe_rate", "expected_cost"]
METRICS: tuple[str, ...] = ("predicted_unsafe_probability", "unsafe_rate", "expected_cost")
ArrayLike = Tensor | np.ndarray

POLICY_KIND = "tilted_best_of_k"


def metric_costs(
    costs: ArrayLike, metric: str, *, cost_range: tuple[float, float] | None = None
) -> Tensor:
    """The per-response quantity a constraint bounds: ``sigmoid(c)``, ``1[c > 0]`` or ``c``.

    The cost model is trained with the logistic loss ``-log sigmoid(s_y c)`` on safety labels
    (DESIGN.md, "Reward and cost models"), so ``sigmoid(c)`` is its predicted probability that the response
    is unsafe: a value in [0, 1], which the distribution-free bounds need.

    Args:
        costs: Cost-model scores, any shape (Safe RLHF convention: ``c > 0`` is unsafe).
        metric: ``"predicted_unsafe_probability"`` (``sigmoid(c)``), ``"unsafe_rate"``
            (``1[c > 0]``) or ``"expected_cost"`` (``c``, unbounded).
        cost_range: For ``expected_cost``, the declared ``(low, high)``: the cost is clipped to
            it, so the bounded quantity is ``E[clip(c, low, high)]`` (which the certificate names).

    Returns:
        A float64 tensor of the same shape.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)} (got {metric!r})")
    values = _as_float64(costs, "costs")
    if metric == "predicted_unsafe_probability":
        return torch.sigmoid(values)
    if metric == "unsafe_rate":
        return (values > 0).to(torch.float64)
    return values if cost_range is None else values.clamp(*(float(v) for v in cost_range))


def cost_range_mismatch(policy: TiltedPolicy, safety: object) -> str | None:
    """Why ``policy`` does not tilt on the cost step 1 bounded under the ``safety`` section (plain
    data, as ``policy.json`` records it), or None: with ``expected_cost`` its range must be
    ``safety.cost_range``. Files written before the tilt clipped record none: align again."""
    declared = safety.get("cost_range") if isinstance(safety, dict) else None
    expected = None if declared is None else tuple(float(v) for v in declared)
    if policy.metric != "expected_cost" or policy.cost_range == expected:
        return None
    given = None if policy.cost_range is None else list(policy.cost_range)
    return (
        f"is {given} but safety.cost_range is {declared}: the deployed tilt must penalise the "
        "cost step 1 bounded (policy files of earlier safealign versions tilt on unclipped "
        "costs); align again (alignment spends no privacy budget)"
    )


def prompt_expectations(values: Tensor, weights: Tensor) -> Tensor:
    """``sum_k weights[i, k] * values[i, k]``, ``[n]``: each prompt's expected metric.

    A candidate of weight 0 (a padded slot) counts as 0 whatever its value.
    """
    return torch.where(weights > 0, weights * values, 0.0).sum(-1)


@dataclass(frozen=True)
class TiltedPolicy:
    """Best-of-K resampling with weights ``p * exp((r - lambda c) / beta)`` (HC-RLHF tilting).

    Attributes:
        beta: KL coefficient, ``> 0``.
        lambda_: Lagrange multiplier on the cost, ``>= 0``.
        num_candidates: ``K``, reference samples per prompt; the policy refuses any other K.
        metric: What the tilt penalises, per :func:`metric_costs`: ``sigmoid(c)``,
            ``1[c > 0]`` or ``c``.
        reference_sampler: How the K candidates are drawn (e.g. model, temperature, top_p), as
            sorted ``(name, value)`` pairs of JSON scalars; a mapping is accepted and converted.
        seed: Seed of the deployment sampler, if fixed.
        cost_range: For ``expected_cost``, the declared ``(low, high)`` step 1 clipped the costs
            to (``safety.cost_range``): the tilt penalises ``clip(c, low, high)``, the quantity
            step 1 bounded and certification certifies. None: the raw cost.
    """

    beta: float
    lambda_: float
    num_candidates: int
    metric: str = "expected_cost"
    reference_sampler: tuple[tuple[str, Any], ...] = ()
    seed: int | None = None
    cost_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        reference = self.reference_sampler
        pairs = reference.items() if isinstance(reference, Mapping) else reference
        object.__setattr__(self, "reference_sampler", tuple(sorted(tuple(p) for p in pairs)))
        if self.cost_range is not None and not isinstance(self.cost_range, tuple):
            object.__setattr__(self, "cost_range", tuple(self.cost_range))  # a JSON list
        problems = _policy_problems(self)
        if problems:
            raise ConfigError(problems)

    def sampler_settings(self) -> dict[str, Any]:
        """The exact deployment settings, as JSON-ready plain data (recorded in certificates)."""
        settings = {
            "policy": POLICY_KIND,
            "weights": "p(y|x) * exp((r - lambda * c) / beta) over K reference samples",
            "beta": self.beta,
            "lambda": self.lambda_,
            "num_candidates": self.num_candidates,
            "metric": self.metric,
            "reference_sampler": dict(self.reference_sampler),
            "seed": self.seed,
        }
        if self.cost_range is not None:  # recorded only when set: unclipped settings unchanged
            low, high = (float(v) for v in self.cost_range)
            settings["weights"] = (
                f"p(y|x) * exp((r - lambda * clip(c, {low:g}, {high:g})) / beta) over K "
                "reference samples"
            )
            settings["cost_range"] = [low, high]
        return settings

    def metric_values(self, costs: ArrayLike) -> Tensor:
        """The per-candidate quantity the tilt penalises: :func:`metric_costs` of ``costs`` with
        this policy's metric and range, the same call step 1 makes with the safety section."""
        return metric_costs(costs, self.metric, cost_range=self.cost_range)

    def probabilities(
        self, rewards: ArrayLike, costs: ArrayLike, *, log_p: ArrayLike | None = None
    ) -> Tensor:
        """``q_lambda`` over each prompt's candidates, ``[N, K]`` (rows sum to one, float64).

        Args:
            rewards: Reward-model scores ``[N, K]``.
            costs: Cost-model scores ``[N, K]`` (raw; the metric is applied here).
            log_p: Reference log-probabilities ``[N, K]``; uniform if None.
        """
        return torch.softmax(self._logits(rewards, costs, log_p), dim=-1)

    def sample(
        self,
        rewards: ArrayLike,
        costs: ArrayLike,
        *,
        generator: torch.Generator,
        log_p: ArrayLike | None = None,
    ) -> Tensor:
        """Draw one candidate per prompt from ``q_lambda``.

        Args:
            rewards: Reward-model scores ``[N, K]``.
            costs: Cost-model scores ``[N, K]``.
            generator: The only source of randomness.
            log_p: Reference log-probabilities ``[N, K]``; uniform if None.

        Returns:
            Candidate indices ``[N]`` (int64).
        """
        q = self.probabilities(rewards, costs, log_p=log_p)
        return torch.multinomial(q, 1, generator=generator)[:, 0]

    def expectation(
        self,
        values: ArrayLike,
        rewards: ArrayLike,
        costs: ArrayLike,
        *,
        log_p: ArrayLike | None = None,
    ) -> Tensor:
        """Per-prompt ``E_{q_lambda}[values]``, ``[N]``: exact, no sampling.

        Args:
            values: Any per-candidate quantity ``[N, K]`` (e.g. a true cost).
            rewards: Reward-model scores ``[N, K]``.
            costs: Cost-model scores ``[N, K]``.
            log_p: Reference log-probabilities ``[N, K]``; uniform if None.
        """
        q = self.probabilities(rewards, costs, log_p=log_p)
        v = _as_float64(values, "values")
        if v.shape != q.shape:
            raise DataError(f"values have shape {tuple(v.shape)}, candidates {tuple(q.shape)}")
        return (q * v).sum(-1)

    def _logits(self, rewards: ArrayLike, costs: ArrayLike, log_p: ArrayLike | None) -> Tensor:
        r = _as_float64(rewards, "rewards")
        c = self.metric_values(costs)
        if r.ndim != 2 or r.shape != c.shape:
            raise DataError(
                f"rewards and costs must both be [N, K] (got {tuple(r.shape)} and {tuple(c.shape)})"
            )
        if r.shape[1] != self.num_candidates:
            raise DataError(
                f"this policy was selected for K={self.num_candidates} candidates per prompt, got "
                f"K={r.shape[1]}; deploy it with the sampler settings it was selected and certified with"
            )
        # Shifting each row's costs by its minimum leaves q unchanged and keeps r resolvable at
        # large lambda, where (r - lambda c) / beta would otherwise lose r to rounding.
        c = c - c.min(-1, keepdim=True).values
        logits = (r - self.lambda_ * c) / self.beta
        if log_p is None:
            return logits
        lp = _as_float64(log_p, "log_p", allow_neg_inf=True)
        if lp.shape != r.shape:
            raise DataError(f"log_p has shape {tuple(lp.shape)}, rewards {tuple(r.shape)}")
        if not bool(torch.isfinite(lp).any(-1).all()):
            raise DataError("every prompt needs at least one candidate with finite log_p")
        return torch.log_softmax(lp, dim=-1) + logits


#: What one safety prompt contributes to the test (``safety.unit``): the metric of one response
#: resampled from its K fresh candidates, or its exact expectation under the policy's resampling
#: distribution over them (Rao-Blackwellised: i.i.d. across prompts, the same mean, less variance).
UNITS: tuple[str, ...] = ("response", "prompt_expectation")


@dataclass(frozen=True)
class SafetySample:
    """What the safety sampler returns with groups, or with the per-prompt expectation unit.

    Attributes:
        costs: Cost-model score of each picked response, ``[n]``; with ``weights``, of every
            fresh candidate, ``[n, K]``.
        group_rewards: Per group, the normalised model reward of each picked response, ``[n]``
            (``[n, K]`` with ``weights``), normalised over that prompt's K fresh candidates, as
            the score function did; empty without groups.
        weights: None (one response per prompt), or the policy's resampling probabilities over
            each prompt's K fresh candidates, ``[n, K]`` (rows sum to one): the test's unit is
            then each prompt's expected metric, ``sum_k weights[i, k] * metric(costs[i, k])``.
    """

    costs: Tensor
    group_rewards: Mapping[str, Tensor]
    weights: Tensor | None = None


def best_of_k_sampler(
    score_candidates: Callable[[tuple[str, ...]], tuple[Any, ...]],
    *,
    seed: int | None = None,
    unit: str = "response",
) -> Callable[[TiltedPolicy, tuple[str, ...]], Tensor | SafetySample]:
    """Deploy a :class:`TiltedPolicy` as a best-of-K resampler: the safety sampler of ``certify``.

    The returned function draws, for each prompt, K *fresh* reference candidates, picks one from
    ``q_lambda`` and returns the cost-model score of the pick, ``[n]``; when the score function
    also gives group rewards, a :class:`SafetySample` with each group's reward of the same pick.
    With ``unit="prompt_expectation"`` nothing is picked: it returns a :class:`SafetySample` with
    every candidate's scores and ``q_lambda`` as ``weights``, so the unit is each prompt's exact
    expected metric under the deployed resampler. Given the prompt, the K fresh candidates are
    i.i.d., so these expectations are i.i.d. across prompts with the same mean as one resampled
    response, and no larger variance (law of total variance): an equally valid unit with more power.

    Args:
        score_candidates: Maps prompts to ``(rewards [n, K], costs [n, K])``, ``(rewards, costs,
            log_p)`` or ``(rewards, costs, log_p, group_rewards)``: K fresh reference samples per
            prompt, drawn with the policy's reference sampler and scored by the reward and cost
            models; ``group_rewards`` maps each group to its normalised rewards ``[n, K]`` (they
            are only read off the pick, never used to draw it).
        seed: Seed of the resampling draw; defaults to the policy's own ``seed``.
        unit: One of :data:`UNITS`.
    """
    if unit not in UNITS:
        raise ConfigError(f"unit must be one of {', '.join(UNITS)} (got {unit!r})")

    def sample(policy: TiltedPolicy, prompts: tuple[str, ...]) -> Tensor | SafetySample:
        if unit == "prompt_expectation":
            return _expectation_sample(policy, score_candidates(prompts))
        draw_seed = policy.seed if seed is None else seed
        if draw_seed is None:
            raise ConfigError("best_of_k_sampler needs a seed (pass seed= or give the policy one)")
        scored = score_candidates(prompts)
        costs = _as_float64(scored[1], "costs")
        log_p = scored[2] if len(scored) > 2 else None
        generator = torch.Generator().manual_seed(int(draw_seed))
        index = policy.sample(scored[0], costs, generator=generator, log_p=log_p)
        rows = torch.arange(costs.shape[0])
        picked = costs[rows, index]
        if len(scored) < 4 or scored[3] is None:
            return picked
        # Only the picks are checked: a padded slot (log_p = -inf) is never picked.
        groups = {
            name: _as_float64(torch.as_tensor(values)[rows, index], f"group {name!r} rewards")
            for name, values in scored[3].items()
        }
        return SafetySample(picked, groups)

    return sample


def _expectation_sample(policy: TiltedPolicy, scored: tuple[Any, ...]) -> SafetySample:
    costs = _as_float64(scored[1], "costs")
    log_p = scored[2] if len(scored) > 2 else None
    weights = policy.probabilities(scored[0], costs, log_p=log_p)
    groups = scored[3] if len(scored) > 3 and scored[3] is not None else {}
    # A padded slot (log_p = -inf) has weight 0 and may hold anything: it counts as 0.
    kept = {
        name: torch.where(weights > 0, torch.as_tensor(v).to(torch.float64), 0.0)
        for name, v in groups.items()
    }
    return SafetySample(
        costs,
        {name: _as_float64(v, f"group {name!r} rewards") for name, v in kept.items()},
        weights=weights,
    )


def _policy_problems(policy: TiltedPolicy) -> list[str]:
    problems = []
    if not (_is_number(policy.beta) and policy.beta > 0):
        problems.append(f"beta must be a finite number > 0 (got {policy.beta!r})")
    if not (_is_number(policy.lambda_) and policy.lambda_ >= 0):
        problems.append(f"lambda_ must be a finite number >= 0 (got {policy.lambda_!r})")
    k = policy.num_candidates
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        problems.append(f"num_candidates must be an integer >= 1 (got {k!r})")
    if policy.metric not in METRICS:
        problems.append(f"metric must be one of {', '.join(METRICS)} (got {policy.metric!r})")
    problems.extend(_range_problems(policy))
    if policy.seed is not None and not isinstance(policy.seed, (int, np.integer)):
        problems.append(f"seed must be an integer or None (got {policy.seed!r})")
    for pair in policy.reference_sampler:
        if len(pair) != 2 or not isinstance(pair[0], str):
            problems.append(f"reference_sampler entries must be (name, value) pairs (got {pair!r})")
        elif not _json_scalar(pair[1]):
            problems.append(
                f"reference_sampler[{pair[0]!r}] must be a JSON scalar (str, number, bool, None); "
                f"got {pair[1]!r}"
            )
    return problems


def _range_problems(policy: TiltedPolicy) -> list[str]:
    given = policy.cost_range
    if given is None:
        return []
    if policy.metric != "expected_cost":
        return [f"cost_range applies to metric expected_cost only (metric is {policy.metric!r})"]
    if len(given) != 2 or not all(_is_number(v) for v in given) or not given[0] < given[1]:
        return [f"cost_range must be two finite numbers low < high (got {list(given)!r})"]
    return []


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_scalar(value: object) -> bool:
    if value is None or isinstance(value, (str, bool, int)):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _as_float64(values: ArrayLike, name: str, *, allow_neg_inf: bool = False) -> Tensor:
    tensor = torch.as_tensor(values).to(torch.float64)
    bad = torch.isnan(tensor) | (tensor == math.inf)
    if not allow_neg_inf:
        bad |= tensor == -math.inf
    if bool(bad.any()):
        raise DataError(f"{name} contain {int(bad.sum())} NaN or infinite values")
    return tensor
