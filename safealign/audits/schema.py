"""The report's JSON Schema (``report.schema.json``, shipped in the package), checks against it,
and the reading of a schema-1 report as schema 2. The cross-field rules are
:mod:`safealign.audits.checks`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

from safealign.audits._problem import Problem
from safealign.errors import DataError

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "load_schema",
    "schema_problems",
    "upgrade_v1",
    "validate_report",
]

SCHEMA_VERSION = 2
SCHEMA_NAME = "report.schema.json"


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
