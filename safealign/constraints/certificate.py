"""The result of the HC-RLHF safety test (:mod:`~safealign.constraints.hc_rlhf`): a
:class:`Certificate` or an NSF verdict, its JSON form, and the verdict of no test."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from safealign._atomic import atomic_write_text
from safealign.config import SafetyConfig
from safealign.errors import DataError

CERTIFIED, NSF = "certified", "NSF"
#: A labelled certificate's top-level ``bound``: the bound ``safety.labels.decide`` declared.
LABELLED_BOUNDS = {"rectified": "label_rectified", "labels_only": "labels_only"}
UNTESTED = "selection"  # Certificate.source when step 1 found no policy and no test ran


@dataclass(frozen=True)
class Certificate:
    """Result of the HC-RLHF safety test: a certificate, or an NSF verdict (never an exception).

    Attributes:
        metric: ``"predicted_unsafe_probability"`` (``E[sigmoid(c)]``), ``"unsafe_rate"``
            (``P[c > 0]``) or ``"expected_cost"`` (``E[c]``).
        cost_threshold: ``tau``.
        confidence: ``1 - delta``: the probability the guarantee promises.
        bound: The bound used (``safety.bound`` with ``"auto"`` resolved), one of ``bounds.BOUNDS``.
        n: Safety prompts used, one sampled response each (0: no test ran, see ``reason``).
        mean: Mean of the per-response metric (None when no test ran).
        std: Its standard deviation (Bessel; None when no test ran).
        upper_bound: ``U``, the one-sided upper confidence bound on the metric (None when no
            test ran).
        passed: ``U <= tau``.
        result: ``"certified"`` or ``"NSF"``.
        sampler_settings: The exact deployment settings the responses were sampled with.
        safety_fingerprint: SHA-256 fingerprint of the safety split, if known.
        assumptions: The conditions under which the guarantee holds, in words.
        value_range: The declared range of the per-response metric, if any.
        source: ``"policy"`` (sampled by :func:`certify`), ``"samples"`` (brought by the user) or
            ``"selection"`` (no test ran: step 1 found no policy; :func:`untested_certificate`).
        groups: With groups, each group's cost upper bound and reward lower bound from the same
            sample (:func:`group_bounds.certify_group_samples`); None without (and then absent
            from :meth:`to_dict`). Informational: ``passed`` is the population test's alone.
        quantity: What is bounded, in words with its units (e.g. "the cost model's predicted
            unsafe rate (mean of sigmoid(cost), a probability in [0, 1])").
        approximate: True when the bound's coverage rests on an approximation (``student_t``).
        values: The per-response metric values, in sampling order: anyone can recompute ``mean``,
            ``std`` and ``upper_bound`` from them (the verifier's ``safety-bound`` check does).
        reason: Why no test ran (``source="selection"`` only; absent from :meth:`to_dict` else).
        attempts: The certification log's record of this test (the declared split and every
            test on the set), set by :func:`~safealign.constraints.attempts.logged_test`; absent
            from :meth:`to_dict` while None.
        labelling: With trusted labels (``safety.labels``), the labelled subset and, once the
            labels are read, the three bounds and which one decided (``run.labelling``); absent
            from :meth:`to_dict` while None.
        safety_set: A designated safety set (``safety.prompts``): its file name, format, size,
            SHA-256 and fingerprint (:mod:`~safealign.constraints.designated`); absent from
            :meth:`to_dict` while None (the data's safety split).
    """

    metric: str
    cost_threshold: float
    confidence: float
    bound: str
    n: int
    mean: float | None
    std: float | None
    upper_bound: float | None
    passed: bool
    result: str
    sampler_settings: dict[str, Any]
    safety_fingerprint: str | None
    assumptions: tuple[str, ...]
    value_range: tuple[float, float] | None = None
    source: str = "samples"
    groups: dict[str, Any] | None = None
    quantity: str = ""
    approximate: bool = True
    values: tuple[float, ...] = ()
    reason: str | None = None
    attempts: dict[str, Any] | None = None
    labelling: dict[str, Any] | None = None
    safety_set: dict[str, Any] | None = None

    @property
    def tested(self) -> bool:
        """False for step 1's NSF, where no safety test ran (``source="selection"``)."""
        return self.source != UNTESTED

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: the file and report form (the only place a certificate is a dict).

        ``groups``, ``reason``, ``attempts`` and ``labelling`` are absent while None; a certificate of no test
        has no ``quantity``, ``approximate`` or ``values`` (nothing was measured).
        """
        data = asdict(self)
        data["assumptions"] = list(self.assumptions)
        data["values"] = list(self.values)
        data["value_range"] = None if self.value_range is None else list(self.value_range)
        for name in ("groups", "reason", "attempts", "labelling", "safety_set"):
            if data[name] is None:
                del data[name]
        if not self.tested:
            for name in ("quantity", "approximate", "values"):
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Certificate:
        """The certificate :meth:`to_dict` wrote (e.g. ``certificate.json`` read back).

        Raises:
            DataError: a field is missing or unknown.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DataError(f"not a certificate: unknown fields {', '.join(unknown)}")
        values = dict(data)
        values["assumptions"] = tuple(values.get("assumptions", ()))
        values["values"] = tuple(values.get("values", ()))
        if values.get("value_range") is not None:
            values["value_range"] = tuple(values["value_range"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise DataError(f"not a certificate: {exc}") from None


def untested_certificate(
    safety: SafetyConfig, *, reason: str, safety_fingerprint: str | None
) -> Certificate:
    """NSF without a test: step 1 found no policy meeting the pessimistic bound, so nothing is
    released and the safety prompts stay unused (``source="selection"``, ``n = 0``)."""
    return Certificate(
        metric=safety.metric,
        cost_threshold=safety.cost_threshold,
        confidence=safety.confidence,
        bound=safety.resolved_bound,
        n=0,
        mean=None,
        std=None,
        upper_bound=None,
        passed=False,
        result=NSF,
        sampler_settings={},
        safety_fingerprint=safety_fingerprint,
        assumptions=(
            "No policy met the pessimistic step-1 bound on the candidate prompts; the safety "
            "test was not run and nothing was released.",
        ),
        source=UNTESTED,
        reason=reason,
    )


def quantity_words(metric: str, value_range: tuple[float, float] | None = None) -> str:
    """What a certificate bounds, in words with its units (also the report headline's words)."""
    if metric == "predicted_unsafe_probability":
        return "the cost model's predicted unsafe rate (mean of sigmoid(cost), a probability in [0, 1])"
    if metric == "unsafe_rate":
        return "the rate of responses the cost model scores unsafe (cost > 0; a fraction in [0, 1])"
    if value_range is None:
        return "the mean cost-model score (raw cost units, unbounded)"
    return f"the mean cost-model score clipped to {list(value_range)} (raw cost units)"


def write_certificate(certificate: Certificate, path: str | Path) -> Path:
    """Write ``certificate`` as sorted, indented JSON, atomically."""
    text = json.dumps(certificate.to_dict(), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n")
