"""The sections of an audit report: privacy, safety, groups and splits, as canonical-JSON data.

Each builder takes what the earlier stages produce (typed :class:`PrivacyReceipt` and
:class:`Certificate` results, or their ``to_dict()`` plain data; the ledger's ``BudgetSummary``,
MaxMin group results) and returns the section exactly as it is signed: the report is where a
result becomes a dict. Inputs are checked here, with every problem named, because a
report that misstates a guarantee is worse than no report.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from safealign.audits.inventory import outside_guarantee
from safealign.constraints.hc_rlhf import Certificate
from safealign.errors import ConfigError, DataError
from safealign.privacy.accounting import Mechanism, compute_epsilon, naive_epsilon_sum
from safealign.privacy.training import PrivacyReceipt

__all__ = [
    "groups_section",
    "json_safe",
    "privacy_section",
    "safety_section",
    "splits_section",
]

_RECEIPT_KEYS = (
    "kind",
    "private",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "max_grad_norm",
    "target_delta",
    "privacy_unit",
    "dataset_fingerprint",
)
_CERTIFICATE_KEYS = (
    "metric",
    "cost_threshold",
    "confidence",
    "n",
    "upper_bound",
    "passed",
    "result",
)
# Inputs the DP guarantee does not cover: they are treated as public (DESIGN.md, "Privacy").
_PUBLIC_INPUTS = (
    "candidate prompts (used to optimise the policy)",
    "safety prompts (used once, for the safety test)",
    "the reference policy and the responses sampled from it",
    "pretrained backbones",
)


def json_safe(value: Any, where: str = "$") -> Any:
    """Convert ``value`` to plain canonical-JSON data: NaN and infinities become ``None``.

    Tuples become lists, numpy scalars and arrays become Python numbers and lists, paths and
    dates become strings, dataclasses become dicts; non-``str`` keys are converted with ``str``.

    Raises:
        DataError: On a value with no JSON meaning, naming its location (e.g. ``$.extra.x``).
    """
    if value is None:
        return None
    # Subclasses (numpy.float64, IntEnum, ...) become the plain type, so equality and
    # serialisation cannot depend on where a number came from.
    if isinstance(value, str):
        return str.__str__(value)  # the characters, even for a str-Enum
    if isinstance(value, (bool, int)):
        return bool(value) if isinstance(value, bool) else int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return json_safe(value.tolist(), where)
    raise DataError(
        f"{where} has type {type(value).__name__}, which has no JSON form; convert it first"
    )


def _receipt_mechanism(receipt: dict[str, Any], index: int) -> Mechanism | None:
    missing = [key for key in _RECEIPT_KEYS if key not in receipt]
    if missing:
        raise DataError(
            f"receipts[{index}] lacks {', '.join(missing)} (got keys: {', '.join(sorted(receipt))});"
            " pass PrivacyReceipt.to_dict()"
        )
    if not receipt["private"] or not receipt["steps"]:
        return None
    try:
        return Mechanism(receipt["noise_multiplier"], receipt["sample_rate"], receipt["steps"])
    except ConfigError as exc:
        raise DataError(f"receipts[{index}] ({receipt['kind']}): {exc}") from exc


@lru_cache(maxsize=64)
def _epsilon(
    mechanisms: tuple[Mechanism, ...], delta: float, accountant: str
) -> tuple[float, str, str | None]:
    """Composed ε (cached: a pure function, and PRV takes ~0.1 s a call)."""
    result = compute_epsilon(mechanisms, target_delta=delta, accountant=accountant)
    return result.epsilon, result.accountant, result.fallback_reason


@lru_cache(maxsize=64)
def _naive_sum(mechanisms: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    return naive_epsilon_sum(mechanisms, target_delta=delta, accountant=accountant)


def _choose_accountant(receipts: Sequence[dict[str, Any]], ledger: dict[str, Any] | None) -> str:
    if ledger and ledger.get("accountant") in ("prv", "rdp"):
        return ledger["accountant"]
    private = [r for r in receipts if r["private"]]
    # RDP only when every run asked for it; a run that fell back from PRV asked for PRV.
    if private and all(
        r.get("accountant") == "rdp" and not r.get("accountant_fallback") for r in private
    ):
        return "rdp"
    return "prv"


def _budget(
    ledger: dict[str, Any] | None, config: dict[str, Any], receipts: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    if ledger is not None:
        budget = {"epsilon": ledger.get("budget_epsilon"), "delta": ledger.get("budget_delta")}
        source = "ledger"
    elif isinstance(config.get("budget"), Mapping):
        budget = {
            "epsilon": config["budget"].get("epsilon"),
            "delta": config["budget"].get("delta"),
        }
        source = "config"
    else:
        budget, source = {"epsilon": None, "delta": None}, None
    if budget["delta"] is None and receipts:
        budget["delta"] = max(r["target_delta"] for r in receipts)
    return {**json_safe(budget), "source": source}


def _mechanism_entry(
    receipt: dict[str, Any], mechanism: Mechanism | None, epsilon: float | None
) -> dict[str, Any]:
    keys = ("kind", "private", "noise_multiplier", "sample_rate", "steps", "max_grad_norm")
    entry = {key: receipt[key] for key in keys}
    entry.update(
        epsilon=epsilon,
        receipt_epsilon=receipt.get("epsilon"),
        receipt_target_delta=receipt["target_delta"],
        accountant=receipt.get("accountant"),
        accountant_fallback=receipt.get("accountant_fallback"),
        privacy_unit=receipt["privacy_unit"],
        num_units=receipt.get("num_units"),
        num_pairs=receipt.get("num_pairs"),
        dataset_fingerprint=receipt["dataset_fingerprint"],
        backbone=receipt.get("backbone"),
    )
    if mechanism is None and receipt["private"]:
        entry["epsilon"] = 0.0  # a private run that took no step released nothing
    return json_safe(entry)


def privacy_section(
    receipts: Sequence[PrivacyReceipt | Mapping[str, Any]],
    *,
    ledger: dict[str, Any] | None,
    splits: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, Any]:
    """The privacy section: every released mechanism composed in one accountant.

    Each receipt is one mechanism the ledger charged (a model's DP-SGD run, one release of group
    models, EM's noisy cluster sizes), so composing them gives the ledger's ε for this run,
    count noise included, never less. Reward, cost and group models are all trained on the same
    training pairs, so their mechanisms compose *sequentially*: all histories go into one
    accountant
    (:func:`~safealign.privacy.accounting.compute_epsilon`), at the budget's δ. Composing every
    receipt, whatever its dataset fingerprint, is always a valid upper bound. δ is the budget's
    (ledger, else config), else the largest receipt ``target_delta``. If any model was
    trained without DP, there is no guarantee at all: ``epsilon`` is ``None`` and ``private``
    False.

    Args:
        receipts: The :class:`PrivacyReceipt` (or its ``to_dict()``) of every mechanism charged
            on the private data; a typed receipt gives its own ``mechanism``.
        ledger: The dataset's ``BudgetSummary`` as a dict, or ``None`` without a ledger.
        splits: ``{"fingerprints": {...}, "sizes": {...}}`` of the data splits.
        config: The run's resolved config (for the budget when there is no ledger).

    Returns:
        The section dict (canonical-JSON safe).
    """
    mechanisms = [
        r.mechanism if isinstance(r, PrivacyReceipt) else _receipt_mechanism(r, i)
        for i, r in enumerate(receipts)
    ]
    receipts = [r.to_dict() if isinstance(r, PrivacyReceipt) else dict(r) for r in receipts]
    budget = _budget(ledger, config, receipts)
    # Without receipts or a budget nothing was spent: (0, δ) holds for any δ; 1e-5 is shown.
    delta = budget["delta"] if budget["delta"] is not None else 1e-5
    accountant = _choose_accountant(receipts, ledger)
    spending = [m for m in mechanisms if m is not None]
    private = all(r["private"] for r in receipts)
    alone = [_epsilon((m,), delta, accountant)[0] if m else None for m in mechanisms]
    epsilon = naive = fallback = None
    if private:
        epsilon, accountant, fallback = _epsilon(tuple(spending), delta, accountant)
        naive = _naive_sum(tuple(spending), delta, accountant)
    within = None if epsilon is None or budget["epsilon"] is None else epsilon <= budget["epsilon"]
    return json_safe(
        {
            "private": private,
            "epsilon": epsilon,
            "delta": delta if private else None,
            "accountant": accountant,
            "accountant_fallback": fallback,
            "naive_sum_epsilon": naive,
            "within_budget": within,
            "non_private_models": [r["kind"] for r in receipts if not r["private"]],
            "warning": None if private else _NON_PRIVATE_WARNING,
            "budget": budget,
            "ledger": _ledger_entry(ledger),
            "mechanisms": [
                _mechanism_entry(r, m, e)
                for r, m, e in zip(receipts, mechanisms, alone, strict=True)
            ],
            "scope": _scope(receipts, splits),
            "outside_guarantee": outside_guarantee(config),
        }
    )


_NON_PRIVATE_WARNING = (
    "NON-PRIVATE: at least one model was trained without differential privacy. There is NO "
    "privacy guarantee for the training data; do not publish these models or this policy as private."
)


def _ledger_entry(ledger: dict[str, Any] | None) -> dict[str, Any] | None:
    if ledger is None:
        return None
    keys = ("fingerprint", "name", "epsilon", "committed_epsilon", "naive_epsilon", "accountant")
    entry = {key: ledger.get(key) for key in keys}
    entry["fallback_reason"] = ledger.get("fallback_reason")
    entry["num_releases"] = len(ledger.get("releases") or ())
    return json_safe(entry)


def _scope(receipts: Sequence[dict[str, Any]], splits: dict[str, Any]) -> dict[str, Any]:
    fingerprints = sorted({r["dataset_fingerprint"] for r in receipts})
    units = sorted({r["privacy_unit"] for r in receipts})
    split_prints = splits.get("fingerprints", {})
    train = split_prints.get("train")
    notes = []
    if train is not None and fingerprints and train not in fingerprints:
        notes.append(
            f"the models were trained on {', '.join(fingerprints)}, not on the training split "
            f"{train}; the guarantee covers the data the models were trained on"
        )
    return {
        "protected": (
            "each record of the training split of the source dataset: one privacy unit "
            f"({' / '.join(units) or 'pair'}) may be added or removed and every released "
            "field that the release inventory (safealign.audits.inventory) classifies as a DP "
            "output or post-processing changes in distribution by at most (epsilon, delta); "
            "fields it declares public are public by assumption, and those listed under "
            "outside_guarantee are not covered"
        ),
        "privacy_unit": " / ".join(units) or None,
        "dataset_fingerprints": fingerprints,
        "train_split_fingerprint": train,
        "public_inputs": list(_PUBLIC_INPUTS),
        "not_protected_splits": {
            name: fp for name, fp in sorted(split_prints.items()) if name != "train"
        },
        "post_processing": (
            "the policy, the safety certificate and this report only post-process the DP-trained "
            "models and public inputs, so they spend no further privacy budget"
        ),
        "notes": notes,
    }


def safety_section(certificate: Certificate | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The safety section: the HC-RLHF certificate, checked for internal consistency.

    A failed certification (NSF) is a result, reported like a pass. The certificate's own
    fields are kept (``mean``, ``std``, ``bound``, ``sampler_settings``, ``costs``, ...).

    Raises:
        DataError: If a required field is missing, ``result`` is not ``certified``/``NSF``, or
            ``passed`` disagrees with ``result``.
    """
    if certificate is None:
        return None
    if isinstance(certificate, Certificate):
        certificate = certificate.to_dict()
    safety = json_safe(dict(certificate), "$.safety")
    missing = [key for key in _CERTIFICATE_KEYS if key not in safety]
    if missing:
        raise DataError(
            f"the certificate lacks {', '.join(missing)} (got keys: {', '.join(sorted(safety))})"
        )
    if safety["result"] not in ("certified", "NSF"):
        raise DataError(
            f"certificate result must be 'certified' or 'NSF' (got {safety['result']!r})"
        )
    if bool(safety["passed"]) != (safety["result"] == "certified"):
        raise DataError(
            f"the certificate says passed={safety['passed']!r} but result={safety['result']!r}; "
            "a report must not contradict its certificate"
        )
    safety.setdefault("assumptions", [])
    return safety


def groups_section(groups: dict[str, Any] | None) -> dict[str, Any] | None:
    """The groups section ``{"worst_group": name, "groups": {name: {...}}}``.

    Args:
        groups: ``{name: {"size", "reward", "reward_ci", ...}, "worst_group": name}``; the worst
            group is taken as the lowest ``reward`` when not given.
    """
    if not groups:
        return None
    members = {k: v for k, v in json_safe(dict(groups), "$.groups").items() if k != "worst_group"}
    for name, entry in members.items():
        if not isinstance(entry, dict) or "reward" not in entry:
            raise DataError(f"group {name!r} must be a dict with a 'reward' (got {entry!r})")
    worst = groups.get("worst_group")
    if worst is None:
        scored = [(e["reward"], n) for n, e in members.items() if e["reward"] is not None]
        worst = min(scored)[1] if scored else None
    elif worst not in members:
        raise DataError(f"worst_group {worst!r} is not one of the groups {sorted(members)}")
    return {"worst_group": worst, "groups": members}


def splits_section(splits: dict[str, Any]) -> dict[str, Any]:
    """The splits section ``{"fingerprints": {split: sha256}, "sizes": {split: {...}}}``."""
    if not isinstance(splits, Mapping) or not isinstance(splits.get("fingerprints"), Mapping):
        raise DataError(
            "splits must be {'fingerprints': Splits.fingerprints(), 'sizes': Splits.sizes()} "
            f"(got {splits!r})"
        )
    return json_safe({"fingerprints": splits["fingerprints"], "sizes": splits.get("sizes", {})})
