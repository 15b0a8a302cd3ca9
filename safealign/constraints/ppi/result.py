"""The label-rectified bound as a result, with the assumptions its guarantee rests on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from safealign.constraints.bounds import BoundResult


@dataclass(frozen=True)
class RectifiedBound:
    """A label-rectified upper confidence bound on ``theta = E[label]``.

    Attributes:
        method: ``"ppi_joint"`` (finite-sample, the default: one test without replacement, no
            union bound), ``"ppi_stratified"`` (finite-sample, 0/1 labels: an exact test within
            two strata by prediction), ``"ppi_betting"`` (finite-sample, two betting bounds and
            a union bound) or ``"ppi_clt"`` (PPI++'s normal approximation).
        target: ``"unsafe_rate"`` (0/1 labels) or ``"expected_cost"`` (labels in ``value_range``).
        confidence: ``1 - delta``.
        upper_bound: ``U``: ``theta <= U`` with probability at least ``confidence`` (exactly for
            ``ppi_joint``, ``ppi_stratified`` and ``ppi_betting``, approximately for ``ppi_clt``).
        estimate: The PPI point estimate of ``theta``.
        weight_rule: ``"declared"``, ``"tuned"`` (predictable), ``"plug_in"`` (PPI++ on all data)
            or ``"none"`` (``ppi_stratified``: no weight).
        weights: The weight ``lam`` of each labelled response, in draw order.
        n_predictions: ``N``, scored responses.
        n_labels: ``m``, labelled responses.
        prediction_bound: The bound on ``E[f]`` (``ppi_betting`` only; None when ``lam = 0`` is
            declared).
        rectifier_bound: The bound on the rectifier's mean (``ppi_betting`` only).
        value_range: ``[a, b]``, the declared range of labels and predictions.
        approximate: True for ``ppi_clt``.
        assumptions: The conditions under which the guarantee holds, in words.
        population_bound: ``ppi_joint`` and ``ppi_stratified`` only: an upper bound, at the same
            confidence, on the mean label of the ``N`` scored responses themselves (a
            finite-population bound; it needs no i.i.d. prompts).
        offsets: ``ppi_joint`` only: the intercept ``c_j`` of each labelled response's
            recalibration ``c_j + lam_j f_j``, in draw order (0 for a declared weight).
        strata: ``ppi_stratified`` only: per stratum (low, high prediction) the ``sizes``
            ``N_h``, ``labelled`` counts ``m_h`` and ``unsafe`` labelled counts ``x_h``.
    """

    method: str
    target: str
    confidence: float
    upper_bound: float
    estimate: float
    weight_rule: str
    weights: tuple[float, ...]
    n_predictions: int
    n_labels: int
    prediction_bound: BoundResult | None
    rectifier_bound: BoundResult | None
    value_range: tuple[float, float]
    approximate: bool
    assumptions: tuple[str, ...]
    population_bound: float | None = None
    offsets: tuple[float, ...] = ()
    strata: dict[str, list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["weights"] = list(self.weights)
        data["value_range"] = list(self.value_range)
        data["assumptions"] = list(self.assumptions)
        data["offsets"] = list(self.offsets)
        return data


def _assumptions(rule: str, value_range: tuple[float, float]) -> tuple[str, ...]:
    base = (
        "the safety prompts are i.i.d. draws from the deployment prompt distribution, one "
        "response each, used once; theta is the mean trusted label of such a response",
        "the labelled responses are a uniformly random subset drawn with fresh randomness "
        "independent of every response, score and label (recorded indices)",
        f"labels and predictions lie in the declared range {list(value_range)}",
    )
    joint = (
        "one test over the N scored responses: a betting martingale on the labels drawn "
        "without replacement, with every prediction known, Fisher-combined with the exact law "
        "of the N responses' own mean given theta; no union bound: valid for any distribution "
        "in the range and any cost model"
    )
    by_rule = {
        "joint_declared": f"the weight was declared before the data; {joint}",
        "joint_tuned": "the recalibration c_j + lam_j f_j of each labelled response depends on "
        f"earlier labels and the predictions only (predictable); {joint}",
        "declared": "the weight was declared before the data; betting bounds on E[f] (all "
        "responses) and on the rectifier (labelled), combined by a union bound: valid for any "
        "distribution in the range and any cost model",
        "tuned": "the weight of each labelled response depends on earlier labels only "
        "(predictable); betting bound on E[f] (unlabelled responses) and a supermartingale "
        "betting bound on the rectifier, union bound: valid for any distribution in the range "
        "and any cost model",
        "stratified": "two strata of the N scored responses by the cost model's prediction "
        "alone (no label seen); an exact test of the labels drawn without replacement within "
        "each stratum, maximised over every allocation of unsafe responses to the strata, "
        "combined with the exact binomial law of the N responses' unsafe count given theta "
        "(weighted Stouffer with each z clipped at 0, fixed weights): valid for any distribution "
        "and any cost model",
        "clt": "APPROXIMATE: PPI++'s normal approximation (central limit theorem), not a "
        "finite-sample guarantee; it can under-cover on rare unsafe labels",
    }
    return (*base, by_rule[rule])
