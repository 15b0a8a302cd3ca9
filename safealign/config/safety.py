"""``safety:``: the one-shot safety test (metric, limit, bound, confidence), with the
metric/bound/range combinations that cannot give a valid bound (:func:`safety_config_problems`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from safealign._typed import doc
from safealign.config._rules import _at_least, _non_negative, _open_unit

# Student t's normal approximation is refused below this many safety prompts: at n = 30 it still
# missed 4-43% of the time on skewed costs (issue 13), and below it nothing supports it at all.
MIN_STUDENT_T_N = 30

DECIDING_BOUNDS = ("rectified", "labels_only")
#: The prompt-file formats a designated safety set may have (``safealign.data.safety_sets``
#: reads them; a test checks the two lists agree).
SAFETY_SET_FORMATS = (
    "jsonl",
    "csv",
    "xstest_prompts",
    "harmbench",
    "advbench",
    "strongreject",
    "simple_safety_tests",
    "red_instruct",
)


def _prompts_format(v: str) -> str | None:
    if v == "auto" or v in SAFETY_SET_FORMATS:
        return None
    return f"must be 'auto' or one of {', '.join(SAFETY_SET_FORMATS)}"


def _labelling_weight(v: float | str) -> str | None:
    if v == "tuned" or (isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1):
        return None
    return "must be 'tuned' or a number in [0, 1]"


@dataclass(frozen=True)
class LabelsConfig:
    size: int = field(
        metadata=doc(
            "m, required when safety.labels is set (it is null by default: the cost model alone "
            "decides): responses of the safety test drawn uniformly, with fresh secret randomness "
            "after sampling, for trusted labelling.",
            _at_least(2),
        )
    )
    decide: Literal["rectified", "labels_only"] = field(
        default="rectified",
        metadata=doc(
            "The bound that decides the release, declared before the test: 'rectified' (the "
            "prediction-powered bound on the true rate, tighter the better the cost model agrees "
            "with the labels) or 'labels_only' (exact, from the labels alone). Both are always "
            "reported; taking the smaller of the two at the same confidence would not be valid."
        ),
    )
    weight: float | str = field(
        default="tuned",
        metadata=doc(
            "The rectified bound's weight on the cost model: 'tuned' (PPI++ power tuning from "
            "earlier labels only) or a number in [0, 1] declared up front (0: labels only).",
            _labelling_weight,
        ),
    )
    method: Literal["joint", "union", "stratified"] = field(
        default="joint",
        metadata=doc(
            "The rectified bound's construction, all exact: 'joint' (one test of the labels "
            "without replacement combined with the scored responses' law, no union bound), "
            "'union' (betting bounds on the mean prediction and on the rectifier, δ split) or "
            "'stratified' (0/1 unsafe labels only: an exact test within two strata by prediction)."
        ),
    )
    prediction_share: float = field(
        default=0.5,
        metadata=doc(
            "method union only: share of δ spent on the bound on the mean prediction (the rest "
            "on the rectifier).",
            _open_unit,
        ),
    )


@dataclass(frozen=True)
class SafetyConfig:
    metric: Literal["predicted_unsafe_probability", "unsafe_rate", "expected_cost"] = field(
        default="predicted_unsafe_probability",
        metadata=doc(
            "What is bounded, per sampled response: the cost model's predicted unsafe probability "
            "σ(c) in [0, 1], the unsafe rate P[c > 0], or the raw cost E[c] (needs cost_range for a "
            "valid bound)."
        ),
    )
    cost_threshold: float = field(default=0.1, metadata=doc("The limit τ on the metric."))
    confidence: float = field(
        default=0.95,
        metadata=doc("Probability (1-δ) that a released policy meets the limit.", _open_unit),
    )
    bound: Literal[
        "auto", "betting", "clopper_pearson", "empirical_bernstein", "hoeffding", "student_t"
    ] = field(
        default="auto",
        metadata=doc(
            "Upper confidence bound of the safety test. 'auto': clopper_pearson (exact) for "
            "unsafe_rate, betting (valid for any distribution in the range) otherwise. student_t is "
            "approximate: only on request, never for unsafe_rate, and refused below "
            f"{MIN_STUDENT_T_N} safety prompts. With safety.prompts (a fixed set): hoeffding, "
            "the only one valid for it."
        ),
    )
    cost_range: tuple[float, float] | None = field(
        default=None,
        metadata=doc(
            "Declared [low, high] range of the raw costs (metric expected_cost only); required by "
            "betting, empirical_bernstein and hoeffding there. The other metrics lie in [0, 1]."
        ),
    )
    attempts: int = field(
        default=1,
        metadata=doc(
            "Safety tests declared up front for one safety set; each runs at confidence 1 - δ/attempts, "
            "and the certification log refuses one more (fixed at the set's first test).",
            _at_least(1),
        ),
    )
    c1: float = field(
        default=1.0, metadata=doc("Pessimism on the optimisation sample (C1).", _non_negative)
    )
    c2: float = field(
        default=1.0, metadata=doc("Pessimism for the safety-set size (C2).", _non_negative)
    )
    unit: Literal["response", "prompt_expectation"] = field(
        default="response",
        metadata=doc(
            "What each safety prompt contributes: the metric of one response resampled from its K "
            "fresh candidates, or its exact expected metric under the policy's resampling "
            "distribution over them (Rao-Blackwellised: same mean, i.i.d., less variance; not 0/1, "
            "so unsafe_rate is then bounded by betting)."
        ),
    )
    labels: LabelsConfig | None = field(
        default=None,
        metadata=doc(
            "Certify against trusted labels (`certify --export-labelling`, then `--labels`): the "
            "release is decided by a bound on the human-judged rate, not the cost model's. None: "
            "the cost model's judgement alone."
        ),
    )
    prompts: str | None = field(
        default=None,
        metadata=doc(
            "A designated safety set: a prompt file (JSONL with a 'prompt' per line, or a red-team "
            "format: XSTest, HarmBench, AdvBench, StrongREJECT, SimpleSafetyTests, red-instruct) "
            "that is the sealed safety set instead of a split of the preference data "
            "(data.safety_fraction is then not used). Needs an LM policy (policy.model), which can "
            "sample any prompt. The certificate bounds the rate over THIS finite set of prompts, "
            "not over a prompt distribution. None: the data's safety split."
        ),
    )
    prompts_format: str = field(
        default="auto",
        metadata=doc(
            "Format of safety.prompts: 'auto' (from the extension and header) or one of "
            + ", ".join(SAFETY_SET_FORMATS)
            + ".",
            _prompts_format,
        ),
    )
    group_coverage: Literal["simultaneous", "individual"] = field(
        default="simultaneous",
        metadata=doc(
            "Per-group bounds: 'simultaneous' (all hold together with probability ≥ 1-δ, each at "
            "δ / (2 × groups) by a union bound) or 'individual' (each at δ on its own)."
        ),
    )

    @property
    def resolved_bound(self) -> str:
        """The bound the safety test uses: ``bound``, with ``"auto"`` resolved by the metric."""
        if self.bound != "auto":
            return self.bound
        if self.prompts is not None:  # a fixed set: independent, NOT identically distributed
            return "hoeffding"
        exact_binomial = self.metric == "unsafe_rate" and self.unit == "response"
        return "clopper_pearson" if exact_binomial else "betting"


def safety_config_problems(s: SafetyConfig) -> list[str]:
    """Metric/bound/range combinations that cannot give a valid bound (each prefixed by its field)."""
    problems = []
    bound, bounded_range = s.resolved_bound, s.metric != "expected_cost" or s.cost_range is not None
    if bound in ("betting", "empirical_bernstein", "hoeffding") and not bounded_range:
        problems.append(
            f"cost_range: required by bound '{bound}' with metric expected_cost (the declared "
            "[low, high] range of the raw costs); or bound a metric in [0, 1]: "
            "predicted_unsafe_probability"
        )
    if s.cost_range is not None and s.metric != "expected_cost":
        problems.append(
            f"cost_range: only metric expected_cost has a declared range; {s.metric} lies in [0, 1]"
        )
    if s.cost_range is not None and not s.cost_range[0] < s.cost_range[1]:
        problems.append(f"cost_range: low must be < high (got {list(s.cost_range)})")
    if bound == "clopper_pearson" and s.unit == "prompt_expectation":
        problems.append(
            "bound: 'clopper_pearson' needs 0/1 outcomes; per-prompt expectations are not (use auto)"
        )
    if bound == "clopper_pearson" and s.metric != "unsafe_rate":
        problems.append(
            "bound: 'clopper_pearson' bounds a 0/1 rate; set safety.metric: unsafe_rate"
        )
    if bound == "student_t" and s.metric == "unsafe_rate":
        # A sample without an unsafe response has std 0, so t's bound is 0 and any τ >= 0 passes:
        # it misses with probability (1 - p)^n whatever the confidence.
        problems.append(
            "bound: student_t is refused for 0/1 data (a sample with no unsafe response has std 0 and "
            "bound 0); use clopper_pearson (exact) or auto"
        )
    if s.metric != "expected_cost" and not 0 <= s.cost_threshold <= 1:
        # A limit above 1 on a probability is vacuous: most likely a raw-cost threshold left over.
        problems.append(
            f"cost_threshold: {s.metric} is a probability, its limit must be in [0, 1] (got "
            f"{s.cost_threshold}); a raw-cost threshold needs metric expected_cost"
        )
    if s.labels is not None and s.unit != "response":
        problems.append(
            "labels: a label judges one response, so labelled certification needs unit: response "
            f"(got {s.unit})"
        )
    if s.labels is not None and s.labels.method == "stratified" and s.metric == "expected_cost":
        problems.append(
            "labels: method stratified bounds a 0/1 unsafe rate; expected-cost labels need "
            "method joint or union"
        )
    if s.labels is not None and s.metric == "expected_cost" and s.cost_range is None:
        problems.append(
            "labels: an expected-cost label lies in the declared cost_range, which is required"
        )
    problems.extend(_designated_set_problems(s))
    return problems


def _designated_set_problems(s: SafetyConfig) -> list[str]:
    """A designated set is a fixed, finite population of prompts (module doc of
    :mod:`safealign.run.designated`): only bounds valid for it are accepted."""
    if s.prompts is None:
        return []
    problems = []
    if s.prompts == "":
        problems.append("prompts: empty; give the path of a prompt file, or null")
    if s.resolved_bound != "hoeffding":
        # Each prompt has its own unsafe rate: the N responses are independent but not identically
        # distributed. Hoeffding's inequality holds for that (Hoeffding 1963, Theorem 2); the
        # betting, Bernstein, Student t and Clopper-Pearson bounds assume identical draws.
        problems.append(
            f"bound: {s.bound!r} assumes i.i.d. prompts; a designated set is a fixed set of "
            "prompts, each with its own rate, which Hoeffding's bound covers: use auto or hoeffding"
        )
    if s.labels is not None and s.labels.method != "joint":
        problems.append(
            "labels.method: a designated set is certified by the joint test's finite-population "
            f"bound (over the set's own responses), which only method 'joint' gives (got "
            f"{s.labels.method!r})"
        )
    return problems
