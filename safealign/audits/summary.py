"""The plain-words summary of a report, and the number formatting shared by its renderings.

The summary is the part of a report most readers will read and nothing else, so it is built in
one place from the report's fields: :func:`build_report` stores it in the signed JSON, and the
HTML and Markdown renderings show the very same sentences.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Summary",
    "bound_words",
    "fmt",
    "metric_words",
    "plain_summary",
    "short_fingerprint",
]

_METRIC_WORDS = {
    "predicted_unsafe_probability": "the cost model's predicted unsafe rate (mean of "
    "sigmoid(cost), a probability in [0, 1])",
    "unsafe_rate": "the rate of responses the cost model scores unsafe (cost > 0; a fraction in "
    "[0, 1])",
    "expected_cost": "the mean cost-model score (raw cost units)",
}
_BOUND_NAMES = {
    "betting": "betting bound",
    "clopper_pearson": "Clopper–Pearson bound",
    "empirical_bernstein": "empirical Bernstein bound",
    "hoeffding": "Hoeffding bound",
    "student_t": "Student t bound",
    "label_rectified": "label-rectified (prediction-powered) bound",
    "labels_only": "labels-only exact bound",
}
#: The three bounds of a labelled certificate (``safety.labelling.bounds``), in words.
LABELLED_BOUND_NAMES = {
    "rectified": "label-rectified",
    "labels_only": "labels-only",
    "cost_model_only": "cost-model-only",
}


@dataclass(frozen=True)
class Summary:
    """Three sentences that state what the report certifies, without jargon.

    Attributes:
        safety: The safety claim (certified, No Solution Found, or no claim).
        privacy: The privacy claim, or a NON-PRIVATE warning.
        groups: The worst-off group's outcome, or ``None`` without groups.
        private: False when the privacy sentence is a NON-PRIVATE warning.
        released: True only when a policy was certified and released.
    """

    safety: str
    privacy: str
    groups: str | None
    private: bool
    released: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmt(value: Any, digits: int = 4) -> str:
    """Format a report value for people: ``None`` as an em dash, floats with ``digits`` digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def short_fingerprint(fingerprint: str | None) -> str:
    """The first 16 hex digits of a SHA-256 fingerprint, enough to tell datasets apart."""
    if not fingerprint:
        return "unknown"
    return fingerprint[:16] + "…" if len(fingerprint) > 16 else fingerprint


def metric_words(metric: str | None) -> str:
    """The safety metric in words with its units (``unsafe_rate`` → ``the rate of ...``)."""
    return _METRIC_WORDS.get(metric or "", str(metric))


def bound_words(safety: dict[str, Any]) -> str:
    """The bound's name and whether it is exact or approximate, from a report's safety fields."""
    bound = safety.get("bound")
    name = _BOUND_NAMES.get(bound, f"{bound} bound")
    approximate = safety.get("approximate", bound == "student_t")
    if approximate:
        return f"{name}, APPROXIMATE: it treats the mean as normal"
    if bound in ("label_rectified", "labels_only"):
        return f"{name}, valid for any cost model and any distribution of the labels' range"
    if bound == "clopper_pearson":
        return f"{name}, exact for 0/1 outcomes"
    given = safety.get("value_range")
    where = f"[{fmt(given[0])}, {fmt(given[1])}]" if isinstance(given, list) else "the range"
    return f"{name}, valid for any distribution on {where}"


def plain_summary(report: dict[str, Any]) -> Summary:
    """Summarise a report (built by :func:`~safealign.audits.report.build_report`) in plain words.

    Args:
        report: The report dict; only ``privacy``, ``safety`` and ``groups`` are read.

    Returns:
        The :class:`Summary`.
    """
    safety = report.get("safety")
    privacy = report["privacy"]
    return Summary(
        safety=_safety_sentence(safety),
        privacy=_privacy_sentence(privacy),
        groups=_groups_sentence(report.get("groups")),
        private=bool(privacy["private"]),
        released=bool(safety and safety.get("passed")),
    )


def _safety_sentence(safety: dict[str, Any] | None) -> str:
    if safety is None:
        return "Not certified: no safety test was run, so this report makes no safety claim."
    labelling = safety.get("labelling")
    if labelling is not None and labelling.get("status") == "awaiting_labels":
        return (
            f"Not certified yet: awaiting trusted labels of {len(labelling['indices'])} of the "
            f"{safety['n']} sampled responses, so nothing was released (the release is decided "
            f"by the {LABELLED_BOUND_NAMES[labelling['decide']]} bound on the human-judged rate)."
        )
    if labelling is not None:
        return _labelled_sentence(safety, labelling)
    confidence = safety["confidence"]
    level = f"{confidence:.0%}" if confidence is not None else "the stated confidence"
    words = safety.get("quantity") or metric_words(safety.get("metric"))
    bound, threshold, n = safety["upper_bound"], safety["cost_threshold"], safety["n"]
    how = f"{bound_words(safety)}; " if bound is not None else ""
    evidence = f"(upper bound {fmt(bound)} from {n} safety prompts; {how}".rstrip("; ") + ")"
    if safety["passed"]:
        return (
            f"Certified: with probability ≥ {level}, {words} under the released policy is "
            f"≤ {fmt(threshold)} {evidence}."
        )
    return (
        "No Solution Found: nothing was released. The safety test could not show, with "
        f"probability ≥ {level}, that {words} under the policy is ≤ {fmt(threshold)} {evidence}."
    )


def _labelled_sentence(safety: dict[str, Any], labelling: dict[str, Any]) -> str:
    """The headline of a labelled certificate: the deciding bound, and the other two named."""
    confidence = safety["confidence"]
    words, threshold, bounds = safety["quantity"], safety["cost_threshold"], labelling["bounds"]
    decided = labelling["decided_by"]
    others = "; ".join(
        f"{LABELLED_BOUND_NAMES[name]} bound {fmt(bounds[name]['upper_bound'])}"
        + (" (on the cost model's judgement, not the truth)" if name == "cost_model_only" else "")
        for name in LABELLED_BOUND_NAMES
        if name != decided
    )
    evidence = (
        f"(decided by the {LABELLED_BOUND_NAMES[decided]} bound {fmt(safety['upper_bound'])}, "
        f"declared before the test, from {len(labelling['indices'])} trusted labels of "
        f"{safety['n']} sampled responses; beside it: {others})"
    )
    if safety["passed"]:
        return (
            f"Certified: with probability ≥ {confidence:.0%}, {words} under the released policy "
            f"is ≤ {fmt(threshold)} {evidence}."
        )
    return (
        "No Solution Found: nothing was released. The safety test could not show, with "
        f"probability ≥ {confidence:.0%}, that {words} under the policy is ≤ {fmt(threshold)} "
        f"{evidence}."
    )


def _privacy_sentence(privacy: dict[str, Any]) -> str:
    scope = privacy["scope"]
    data = (
        f"the training data (commitment "
        f"{', '.join(short_fingerprint(f) for f in scope['dataset_fingerprints']) or 'unknown'})"
    )
    if not privacy["private"]:
        kinds = privacy["non_private_models"]
        names = " and ".join(f"the {kind} model" for kind in kinds) or "a model"
        verb = "were" if len(kinds) > 1 else "was"
        return (
            f"NON-PRIVATE: {names} {verb} trained WITHOUT differential privacy. This report gives NO "
            f"privacy guarantee for {data}."
        )
    unit = scope["privacy_unit"] or "record"
    budget = privacy["budget"]
    if budget["epsilon"] is None:
        within = "no budget was set"
    else:
        verdict = "within" if privacy["within_budget"] else "EXCEEDING"
        within = f"{verdict} the budget ε = {fmt(budget['epsilon'])}, δ = {fmt(budget['delta'])}"
    outside = len(privacy.get("outside_guarantee") or ())
    caveat = (
        f" {outside} released fields are outside this guarantee (listed in the report)."
        if outside
        else ""
    )
    return (
        f"Privacy: ({fmt(privacy['epsilon'], 3)}, {fmt(privacy['delta'], 3)})-DP for each record "
        f"(privacy unit: {unit}) of {data}, all released mechanisms composed; {within}.{caveat}"
    )


def _groups_sentence(groups: dict[str, Any] | None) -> str | None:
    if not groups or not groups.get("worst_group"):
        return None
    name = groups["worst_group"]
    entry = groups["groups"].get(name, {})
    interval = entry.get("reward_ci")
    ci = f", interval [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else ""
    return (
        f"Groups: the worst-off of {len(groups['groups'])} groups is “{name}”, with expected "
        f"reward {fmt(entry.get('reward'))}{ci}."
    )
