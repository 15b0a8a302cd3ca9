"""The cross-field rules of a report's ``privacy`` section (:mod:`safealign.audits.checks`):
private flags, ε recomputed from the mechanisms, and the budget.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any

from safealign.audits._problem import Problem
from safealign.errors import ConfigError, PrivacyError
from safealign.privacy.accounting import Mechanism, compute_epsilon

# Relative tolerance when recomputing ε: accountants are deterministic, but a reviewer may run
# another numpy/Opacus build; 1e-3 of ε is far below any difference that matters for a claim.
_EPSILON_RTOL = 1e-3


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
