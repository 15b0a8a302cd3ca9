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

The safety rules live in ``_checks_safety``, the privacy rules in ``_checks_privacy`` and the
schema in :mod:`safealign.audits.schema`; this module runs them all. Each failure is a
:class:`Problem` that names its check. The cross-field rules run only on a
report that matches the schema, so they can rely on its types.
"""

from __future__ import annotations

import hashlib
from typing import Any

from safealign.audits._checks_privacy import _privacy_budget, _privacy_epsilon, _privacy_private
from safealign.audits._checks_safety import (
    _safety_bound,
    _safety_config,
    _safety_sample,
    _safety_verdict,
)
from safealign.audits._problem import Problem
from safealign.audits.canonical import canonical_json
from safealign.audits.labelled import labelled_problems
from safealign.audits.schema import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    load_schema,
    schema_problems,
    upgrade_v1,
    validate_report,
)
from safealign.audits.summary import plain_summary
from safealign.errors import DataError

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
