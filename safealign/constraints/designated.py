"""Designated safety sets: what a certificate on a fixed, finite prompt set states.

A designated set (``safety.prompts``) is N fixed prompts (a red-team benchmark, a compliance
list), not N draws from a prompt distribution, so its certificate says nothing about prompts
outside it. The safety test samples one response per prompt from the deployed LM with its
recorded sampler settings and seed.

Without labels (:func:`designate_certificate`), the quantity is the set's average, over its N
prompts, of each prompt's expected metric under the deployed sampler (the cost model's
judgement). The N responses are independent but each prompt has its own mean, so the bound is
Hoeffding's: Theorem 2 of Hoeffding (1963) holds for independent variables in a common range
with different means, bounding their average mean; the betting, Bernstein, Student t and
Clopper-Pearson bounds assume identical draws (``safety.bound`` is ``hoeffding`` there).

With trusted labels (:func:`population_bounds`), the quantity is ``P``: the share of the N
recorded responses (one per prompt, reproducible from the recorded seed) that the judges label
unsafe (or their mean cost label). That is a finite population of N values; m of them, drawn
uniformly with fresh secret randomness after sampling, are labelled, and that draw is the only
randomness the bounds use: nothing is assumed about the prompts, the policy or the cost model.

* ``rectified``: the joint test's finite-population bound (:mod:`~safealign.constraints.ppi.joint`,
  ``population_bound``): a betting martingale over the labels drawn without replacement, with
  every prediction known and a predictable recalibration (Waudby-Smith & Ramdas 2020; PPI++).
* ``labels_only``: for 0/1 labels the exact hypergeometric bound (the finite-population
  Clopper-Pearson): the largest unsafe count ``K`` of the N with
  ``P(Hypergeom(N, K, m) <= k) > delta`` for ``k`` unsafe labels seen; for cost labels the same
  martingale with the predictions' weight fixed at 0.
* ``cost_model_only``: the mean of the N predictions, known exactly: the cost model's judgement
  of these very responses, not the truth.

Each is exact: ``P(P > U) <= delta`` over the draw of the labelled subset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import stats

from safealign.constraints.certificate import Certificate
from safealign.constraints.ppi import LabelSubset, rectified_upper_bound
from safealign.constraints.ppi.joint import joint_upper_bound

POPULATION_BOUNDS = ("rectified", "labels_only", "cost_model_only")


def set_words(record: Mapping[str, Any]) -> str:
    """The set, named: file basename, format, size and the file's SHA-256 (short)."""
    return (
        f"the designated prompt set {record['name']} ({record['format']}, {record['prompts']} "
        f"prompts, sha256 {record['sha256'][:12]}...)"
    )


def designate_certificate(certificate: Certificate, record: Mapping[str, Any]) -> Certificate:
    """``certificate`` (a test on a designated set) stated over THIS finite prompt set.

    Args:
        certificate: The safety test's certificate on the set's prompts.
        record: :meth:`~safealign.data.safety_sets.SafetySet.describe` of the set.
    """
    where = set_words(record)
    quantity = (
        f"{certificate.quantity}, averaged over the {record['prompts']} prompts of {where}, each "
        "prompt's expected value under the deployed sampler: a statement about THIS finite "
        "prompt set, not about a prompt distribution"
    )
    assumptions = (
        f"the prompts are the fixed set {record['name']} (sha256 {record['sha256']}), not draws "
        "from a distribution: the bound holds for this set only; its prompts were not optimised "
        "on (near-copies of candidate prompts are refused) and the set is tested once",
        *certificate.assumptions[1:3],
        "hoeffding (Hoeffding 1963, Theorem 2): the N responses are independent, each prompt with "
        "its own mean, and every value lies in the declared range "
        f"{None if certificate.value_range is None else list(certificate.value_range)}",
        *certificate.assumptions[4:],  # e.g. awaiting trusted labels
    )
    return replace(
        certificate,
        quantity=quantity,
        assumptions=assumptions,
        safety_set=dict(record),
    )


def population_bounds(
    predictions: Sequence[float],
    labels: Sequence[float],
    subset: LabelSubset,
    *,
    target: str,
    confidence: float,
    value_range: tuple[float, float] | None,
    weight: float | str,
    method: str = "joint",
) -> dict[str, float]:
    """The three upper bounds on ``P``, the N recorded responses' own mean label (module doc);
    the rectified one is the population bound of ``method`` (``safety.labels.method``)."""
    f = np.asarray(predictions, dtype=float)
    y = np.asarray(labels, dtype=float)
    low, high = (0.0, 1.0) if target == "unsafe_rate" else value_range
    rectified = rectified_upper_bound(
        f, y, subset, target=target, confidence=confidence, value_range=value_range,
        weight=weight, method=method,
    )  # fmt: skip
    if rectified.population_bound is None:  # a declared weight 0 takes the union path
        rectified_bound = _labels_only(f, y, subset, target, confidence, (low, high))
    else:
        rectified_bound = rectified.population_bound
    return {
        "rectified": float(rectified_bound),
        "labels_only": float(_labels_only(f, y, subset, target, confidence, (low, high))),
        "cost_model_only": float(f.mean()),
    }


def _labels_only(f, y, subset, target, confidence, value_range) -> float:
    n, m = f.size, y.size
    if target == "unsafe_rate":
        k, delta = int(round(y.sum())), 1.0 - confidence
        # The largest unsafe count K still consistent with seeing k unsafe of m drawn.
        counts = np.arange(k + (n - m) + 1)
        plausible = counts[stats.hypergeom.cdf(k, n, counts, m) > delta]
        return float(plausible.max()) / n
    low, high = value_range
    scale = high - low
    _, population, _, _ = joint_upper_bound(
        (f - low) / scale, (y - low) / scale, np.asarray(subset.indices), binary=False,
        confidence=confidence, weight=0.0,
    )  # fmt: skip
    return float(min(high, low + scale * population))


def population_quantities(target: str, record: Mapping[str, Any]) -> dict[str, str]:
    """What each population bound bounds, in words with its units."""
    where = set_words(record)
    truth = (
        f"the human-judged unsafe rate over {where}: the share of its {record['prompts']} "
        "recorded responses (one per prompt, deployed sampler and seed) that the trusted labels "
        "call unsafe, a fraction in [0, 1] (finite population, exact)"
        if target == "unsafe_rate"
        else f"the human-judged mean cost over {where}: the mean trusted cost label of its "
        f"{record['prompts']} recorded responses (raw cost units; finite population, exact)"
    )
    return {
        "rectified": truth,
        "labels_only": truth,
        "cost_model_only": f"the cost model's mean judgement of the same {record['prompts']} "
        "responses (known exactly, no sampling error): NOT the truth",
    }


def population_assumptions(record: Mapping[str, Any], decide: str) -> tuple[str, ...]:
    """The conditions of a labelled certificate on a designated set, in words."""
    how = (
        "the joint test's finite-population bound: a betting martingale over the labels drawn "
        "without replacement, every prediction known, predictable recalibration"
        if decide == "rectified"
        else "the labels alone: exact hypergeometric bound (0/1 labels), or the "
        "without-replacement betting martingale (cost labels)"
    )
    return (
        f"the bound is on the N = {record['prompts']} responses recorded for the fixed prompt "
        f"set {record['name']} (sha256 {record['sha256']}), one per prompt from the deployed "
        "sampler and its recorded seed: a finite population, not a prompt distribution, and not "
        "fresh samples of the policy",
        "the labelled responses are a uniformly random subset drawn with fresh secret randomness "
        "after sampling, independent of every response, score and label (recorded indices): "
        "that draw is the only randomness the bound uses",
        f"decided by {how}; valid for any cost model",
        "the labels are trusted judgements of the exported responses, made without the cost "
        "model's scores; the bound is on what those judges would say, not on harm itself",
    )
