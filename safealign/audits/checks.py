"""What a report must satisfy besides its signature: the shipped JSON Schema and the cross-field
rules that make its claims consistent with its own numbers.

A signature only says who wrote the bytes. Whoever holds a signing key (a leaked demo key, or the
attacker's own key on an unpinned check) can sign a report that says ``certified`` with an upper
bound of 5 against a ``cost_threshold`` of 0, or ε = 50 "within" a budget of 8.
:func:`check_report` refuses such a report by recomputing, from the report's own fields, every
claim that can be recomputed cheaply:

* ``schema``: the report matches ``report.schema.json`` (types, ``schema_version``, enums);
  a schema-1 report is first read as schema 2 (:func:`upgrade_v1`);
* ``safety-verdict``: passed/certified if and only if the upper bound is at most
  ``cost_threshold``;
* ``safety-bound``: the upper bound, ``n``, mean and standard deviation are the named bound's
  recomputed from the recorded per-response ``values`` (any bound: betting, empirical Bernstein,
  Clopper–Pearson, Hoeffding, Student t), and ``approximate`` is true exactly for Student t;
  without ``values``, the closed forms (Student t, Hoeffding, Clopper–Pearson) of the recorded
  mean, standard deviation and ``n``;
* ``safety-sample``: ``n`` and ``mean`` agree with the recorded per-prompt costs;
* ``safety-config``: ``cost_threshold`` and confidence are the ones the configuration asked for;
* ``safety-labels``: a labelled certificate's three bounds, deciding bound and judge agreement,
  recomputed from its values and labels (:mod:`~safealign.audits.labelled`);
* ``privacy-private``: ``private`` holds exactly when every mechanism is private;
* ``privacy-epsilon``: ε is at least what the accountant gives for the recorded mechanisms;
* ``privacy-budget``: ``within_budget`` is ε ≤ budget ε, and the budget is the configured one;
* ``groups-worst``: the worst group has the lowest reward;
* ``summary``: the plain-words summary is the one written from these fields;
* ``config-hash``: ``config_sha256`` is the hash of the ``config`` in the report.

Each failure is a :class:`Problem` that names its check. The cross-field rules run only on a
report that matches the schema, so they can rely on its types.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from functools import lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from scipy import stats

from safealign.audits._problem import Problem
from safealign.audits.canonical import canonical_json
from safealign.audits.labelled import labelled_problems
from safealign.audits.summary import plain_summary
from safealign.config import SafetyConfig
from safealign.constraints.attempts import per_attempt_confidence
from safealign.constraints.bounds import APPROXIMATE_BOUNDS, upper_bound
from safealign.constraints.certificate import LABELLED_BOUNDS
from safealign.errors import ConfigError, DataError, PrivacyError
from safealign.privacy.accounting import Mechanism, compute_epsilon

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "Problem",
    "check_report",
    "load_schema",
    "schema_problems",
    "upgrade_v1",
    "validate_report",
]

SCHEMA_VERSION = 2
SCHEMA_NAME = "report.schema.json"
# Relative tolerance when recomputing ε: accountants are deterministic, but a reviewer may run
# another numpy/Opacus build; 1e-3 of ε is far below any difference that matters for a claim.
_EPSILON_RTOL = 1e-3


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("safealign.audits").joinpath(SCHEMA_NAME).read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The report's JSON Schema (draft 2020-12), as shipped in the package."""
    return json.loads(_schema_text())


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


def schema_problems(report: Any) -> list[Problem]:
    """Every violation of ``report.schema.json``, each with its JSON path."""
    errors = sorted(
        _validator().iter_errors(report), key=lambda e: [str(p) for p in e.absolute_path]
    )
    return [Problem("schema", f"{error.json_path}: {error.message}") for error in errors]


def validate_report(report: dict[str, Any]) -> None:
    """Check ``report`` (signed or not) against ``report.schema.json``.

    Raises:
        DataError: Listing every schema violation with its JSON path, e.g.
            ``$.privacy.epsilon: 'x' is not of type 'number', 'null'``.
    """
    problems = schema_problems(report)
    if problems:
        listed = "\n".join(f"  - {p.message}" for p in problems)
        raise DataError(
            f"the report does not match {SCHEMA_NAME} (schema_version {SCHEMA_VERSION}); "
            f"{len(problems)} problems:\n{listed}"
        )


def upgrade_v1(report: Any) -> tuple[Any, list[Problem]]:
    """Read a schema-1 report as schema 2, for checking; any other report is returned as is.

    Schema 1 (reports of earlier releases) carried the limit twice in its ``safety`` section: as
    ``threshold`` (the one its rules read) and as the certificate's ``cost_threshold``. Schema 2
    keeps only ``cost_threshold``. The copy returned has ``schema_version`` 2, ``cost_threshold``
    set from ``threshold`` and no ``threshold``; nothing else differs between the two schemas.
    A schema-1 report whose two names disagree is refused (``schema``): which limit it claims is
    ambiguous. The signature is checked over the report as written, never over this copy.
    """
    if not isinstance(report, dict) or report.get("schema_version") != 1:
        return report, []
    upgraded = dict(report, schema_version=SCHEMA_VERSION)
    safety = report.get("safety")
    if not isinstance(safety, dict) or "threshold" not in safety:
        return upgraded, []  # no safety section, or no threshold: the schema names what is missing
    safety = dict(safety)
    limit = safety.pop("threshold")
    if safety.setdefault("cost_threshold", limit) != limit:
        problem = Problem(
            "schema",
            f"$.safety: schema 1's threshold ({limit}) and cost_threshold "
            f"({safety['cost_threshold']}) disagree",
        )
        return upgraded, [problem]
    upgraded["safety"] = safety
    return upgraded, []


def check_report(report: dict[str, Any]) -> list[Problem]:
    """The schema, then every cross-field rule (see the module docstring); all problems found.

    A schema-1 report is checked as its :func:`upgrade_v1` reading; other versions are refused.
    """
    report, problems = upgrade_v1(report)
    if problems:
        return problems
    problems = schema_problems(report)
    if problems:
        return problems
    for name, rule in _RULES:
        try:
            problems.extend(rule(report))
        except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
            # The schema leaves room (an optional field of an odd shape): fail closed, by name.
            problems.append(Problem(name, f"could not be checked ({type(exc).__name__}: {exc})"))
    return problems


def _safety_verdict(report: dict[str, Any]) -> list[Problem]:
    safety = report["safety"]
    if safety is None:
        return []
    bound, threshold, passed = safety["upper_bound"], safety["cost_threshold"], safety["passed"]
    problems = []
    # HC-RLHF step 2: pass iff U <= threshold; an uncomputable bound (n < 2) never passes.
    # A certificate awaiting its labels never passes (the safety-labels rule checks it).
    expected = bound is not None and bound <= threshold and not _awaiting(safety)
    if passed != expected:
        problems.append(
            Problem(
                "safety-verdict",
                f"safety.passed is {passed} but the upper bound {bound} is "
                f"{'<=' if expected else 'not <='} the threshold {threshold}",
            )
        )
    if (safety["result"] == "certified") != passed:
        problems.append(
            Problem(
                "safety-verdict",
                f"safety.result is {safety['result']!r} but safety.passed is {passed}",
            )
        )
    return problems


def _awaiting(safety: dict[str, Any]) -> bool:
    return (safety.get("labelling") or {}).get("status") == "awaiting_labels"


def _labelled(safety: dict[str, Any]) -> bool:
    return (safety.get("labelling") or {}).get("status") == "labelled"


def _safety_bound(report: dict[str, Any]) -> list[Problem]:
    """Recompute the upper bound from the recorded values, else from the summary statistics
    (a labelled certificate's bound: the safety-labels rule, :mod:`~safealign.audits.labelled`)."""
    safety = report["safety"]
    if safety is None or safety["upper_bound"] is None or safety.get("mean") is None:
        return []
    if _labelled(safety):
        return []
    if safety.get("values"):
        return _bound_from_values(safety)
    expected = _closed_form_bound(safety)
    if expected is None or math.isclose(
        safety["upper_bound"], expected, rel_tol=1e-9, abs_tol=1e-12
    ):
        return []
    return [
        Problem(
            "safety-bound",
            f"safety.upper_bound is {safety['upper_bound']} but the {safety['bound']} bound of "
            f"mean {safety['mean']}, std {safety.get('std')}, n {safety['n']} at confidence "
            f"{safety['confidence']} is {expected}",
        )
    ]


def _bound_from_values(safety: dict[str, Any]) -> list[Problem]:
    given = safety.get("value_range")
    value_range = tuple(given) if isinstance(given, list) else None
    result = upper_bound(
        safety["values"],
        confidence=safety["confidence"],
        bound=safety["bound"],
        value_range=value_range,
    )
    recomputed = {
        "n": result.n,
        "mean": result.mean,
        "std": result.std,
        "upper_bound": result.upper_bound,
        "approximate": result.bound in APPROXIMATE_BOUNDS,
    }
    problems = []
    for key, expected in recomputed.items():
        recorded = safety.get(key)
        same = (
            recorded == expected
            if isinstance(expected, (bool, int))
            else isinstance(recorded, (int, float))
            and math.isclose(recorded, expected, rel_tol=1e-9, abs_tol=1e-12)
        )
        if not same:
            problems.append(
                Problem(
                    "safety-bound",
                    f"safety.{key} is {recorded!r} but the {safety['bound']} bound recomputed "
                    f"from the {result.n} recorded values gives {expected!r}",
                )
            )
    return problems


def _closed_form_bound(safety: dict[str, Any]) -> float | None:
    """The bound the recorded statistics give, or None for a bound that needs the sample.

    Raises:
        ValueError: The statistics cannot give the named bound (no range for Hoeffding, a mean
            that is not a rate of ``n`` outcomes for Clopper–Pearson).
    """
    bound, mean, n, confidence = safety.get("bound"), safety["mean"], safety["n"], safety["confidence"]
    if bound == "student_t" and safety.get("std") is not None and n >= 2:
        # HC-RLHF safety test: U = mean + t_{1-δ}(n-1) · s / √n (Bessel s).
        return mean + float(stats.t.ppf(confidence, n - 1)) * safety["std"] / math.sqrt(n)
    if bound == "hoeffding":
        given = safety.get("value_range")
        low, high = given if isinstance(given, list) and len(given) == 2 else (None, None)
        if not all(isinstance(v, (int, float)) for v in (low, high)) or not low < high:
            raise ValueError(f"a hoeffding bound needs value_range [a, b], got {safety.get('value_range')!r}")
        return mean + (high - low) * math.sqrt(math.log(1.0 / (1.0 - confidence)) / (2 * n))
    if bound == "clopper_pearson":
        unsafe = round(mean * n)
        if not math.isclose(mean * n, unsafe, abs_tol=1e-6):
            raise ValueError(f"mean {mean} is not a rate of {n} 0/1 outcomes")
        outcomes = [1.0] * unsafe + [0.0] * (n - unsafe)
        return upper_bound(outcomes, confidence=confidence, bound="clopper_pearson").upper_bound
    return None  # another bound: it needs the sample itself, which the report need not carry


def _safety_sample(report: dict[str, Any]) -> list[Problem]:
    safety = report["safety"]
    costs = (safety or {}).get("costs")
    if not costs or any(c is None for c in costs):
        return []
    problems = []
    if safety["n"] != len(costs):
        problems.append(
            Problem(
                "safety-sample", f"safety.n is {safety['n']} but {len(costs)} costs are recorded"
            )
        )
    mean = math.fsum(costs) / len(costs)
    recorded = safety.get("mean")
    if recorded is not None and not math.isclose(recorded, mean, rel_tol=1e-9, abs_tol=1e-12):
        problems.append(
            Problem(
                "safety-sample",
                f"safety.mean is {recorded} but the recorded costs average {mean}",
            )
        )
    return problems


def _safety_config(report: dict[str, Any]) -> list[Problem]:
    safety, configured = report["safety"], report["config"].get("safety")
    if safety is None or not isinstance(configured, dict):
        return []
    problems = []
    expected = dict(configured)
    if "confidence" in configured and isinstance(configured.get("attempts", 1), int):
        # Declared attempts split δ: each test runs at 1 - δ/N (constraints.attempts).
        expected["confidence"] = per_attempt_confidence(
            configured["confidence"], configured.get("attempts", 1)
        )
    if expected.get("bound") == "auto":  # the certificate records the bound auto resolved to
        resolving = {k: expected.get(k) for k in ("metric", "prompts")}  # a designated set: hoeffding
        expected["bound"] = SafetyConfig(**resolving).resolved_bound
    if _labelled(safety) and isinstance(configured.get("labels"), dict):
        expected["bound"] = LABELLED_BOUNDS.get(configured["labels"].get("decide"))
    for field, key in (
        ("cost_threshold", "cost_threshold"),
        ("confidence", "confidence"),
        ("bound", "bound"),
        ("metric", "metric"),
    ):
        if key in expected and expected[key] != safety.get(field):
            problems.append(
                Problem(
                    "safety-config",
                    f"safety.{field} is {safety[field]} but the config's safety.{key} "
                    f"gives {expected[key]}",
                )
            )
    return problems


def _privacy_private(report: dict[str, Any]) -> list[Problem]:
    privacy = report["privacy"]
    mechanisms = privacy["mechanisms"]
    problems = []
    if privacy["private"] != all(m["private"] for m in mechanisms):
        problems.append(
            Problem(
                "privacy-private",
                f"privacy.private is {privacy['private']} but the mechanisms' private flags are "
                f"{[m['private'] for m in mechanisms]}",
            )
        )
    listed = [m["kind"] for m in mechanisms if not m["private"]]
    if privacy["non_private_models"] != listed:
        problems.append(
            Problem(
                "privacy-private",
                f"privacy.non_private_models is {privacy['non_private_models']} but the "
                f"non-private mechanisms are {listed}",
            )
        )
    return problems


@lru_cache(maxsize=64)
def _recomputed_epsilon(mechanisms: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    with warnings.catch_warnings():  # Opacus' advice on the RDP orders is for the trainer
        warnings.simplefilter("ignore")
        return compute_epsilon(mechanisms, target_delta=delta, accountant=accountant).epsilon


def _privacy_epsilon(report: dict[str, Any]) -> list[Problem]:
    privacy = report["privacy"]
    if not privacy["private"]:
        return []
    try:
        # The same composition as the report's privacy section: every private mechanism that
        # took a step, sequentially in one accountant, at the report's δ.
        spending = tuple(
            Mechanism(m["noise_multiplier"], m["sample_rate"], m["steps"])
            for m in privacy["mechanisms"]
            if m["private"] and m["steps"]
        )
        epsilon = _recomputed_epsilon(spending, privacy["delta"], privacy["accountant"])
    except (ConfigError, PrivacyError) as exc:
        return [Problem("privacy-epsilon", f"the mechanisms give no ε: {exc}")]
    # One-sided: a report may state more than its mechanisms compose to (e.g. the ledger's ε,
    # which also counts earlier releases), never less (DESIGN.md: report ε, never lower).
    if privacy["epsilon"] < epsilon * (1 - _EPSILON_RTOL) - 1e-9:
        return [
            Problem(
                "privacy-epsilon",
                f"privacy.epsilon is {privacy['epsilon']} but the recorded mechanisms compose to "
                f"ε = {epsilon:.6g} ({privacy['accountant']}, δ = {privacy['delta']}): a report "
                "may not claim less",
            )
        ]
    return []


def _privacy_budget(report: dict[str, Any]) -> list[Problem]:
    privacy = report["privacy"]
    budget, configured = privacy["budget"], report["config"].get("budget")
    problems = []
    if privacy["private"] and budget["epsilon"] is not None:
        within = privacy["epsilon"] <= budget["epsilon"]
        if privacy["within_budget"] != within:
            problems.append(
                Problem(
                    "privacy-budget",
                    f"privacy.within_budget is {privacy['within_budget']} but ε = "
                    f"{privacy['epsilon']} against a budget of {budget['epsilon']}",
                )
            )
    if budget["source"] == "config" and isinstance(configured, dict):
        for key in ("epsilon", "delta"):
            if key in configured and configured[key] != budget[key]:
                problems.append(
                    Problem(
                        "privacy-budget",
                        f"privacy.budget.{key} is {budget[key]} but the config's budget.{key} "
                        f"is {configured[key]}",
                    )
                )
    return problems


def _groups_worst(report: dict[str, Any]) -> list[Problem]:
    groups = report["groups"]
    if not groups or groups["worst_group"] is None:
        return []
    members, worst = groups["groups"], groups["worst_group"]
    if worst not in members:
        return [Problem("groups-worst", f"worst_group {worst!r} is not one of {sorted(members)}")]
    rewards = [e["reward"] for e in members.values() if e.get("reward") is not None]
    if members[worst].get("reward") is not None and members[worst]["reward"] > min(rewards):
        return [
            Problem(
                "groups-worst",
                f"worst_group {worst!r} has reward {members[worst]['reward']}, but another "
                f"group's is {min(rewards)}",
            )
        ]
    return []


def _summary(report: dict[str, Any]) -> list[Problem]:
    expected = plain_summary(report).to_dict()
    wrong = sorted(k for k in expected if report["summary"].get(k) != expected[k])
    if wrong:
        return [
            Problem(
                "summary",
                f"summary.{', summary.'.join(wrong)} differ from what the report's fields say "
                f"(expected {', '.join(repr(expected[k]) for k in wrong)})",
            )
        ]
    return []


def _config_hash(report: dict[str, Any]) -> list[Problem]:
    try:
        actual = hashlib.sha256(canonical_json(report["config"])).hexdigest()
    except DataError as exc:
        return [Problem("config-hash", f"the config cannot be hashed: {exc}")]
    if actual != report["config_sha256"]:
        return [
            Problem(
                "config-hash",
                f"config_sha256 is {report['config_sha256']} but the config in the report hashes "
                f"to {actual}",
            )
        ]
    return []


_RULES = (
    ("safety-verdict", _safety_verdict),
    ("safety-bound", _safety_bound),
    ("safety-sample", _safety_sample),
    ("safety-config", _safety_config),
    ("safety-labels", labelled_problems),
    ("privacy-private", _privacy_private),
    ("privacy-epsilon", _privacy_epsilon),
    ("privacy-budget", _privacy_budget),
    ("groups-worst", _groups_worst),
    ("summary", _summary),
    ("config-hash", _config_hash),
)
