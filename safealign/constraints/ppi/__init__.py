"""Label-rectified (prediction-powered) upper bounds on the TRUE unsafe rate or expected cost.

The safety test samples one response per safety prompt and scores all ``N`` of them with the cost
model: predictions ``f_i`` in a known range ``[a, b]`` (a predicted unsafe probability in [0, 1],
or a cost clipped to the declared cost range). A uniformly random subset of ``m`` of them
(:func:`draw_label_subset`) gets trusted labels ``Y_j`` (0/1 unsafe, or a cost in ``[a, b]``).
The target is ``theta = E[Y]``, the human-judged unsafe rate (or expected cost) of a response of
the policy to a prompt from the safety prompts' distribution. Prediction-powered inference
(Angelopoulos et al., Science 2023; PPI++ with a power-tuning weight, Angelopoulos, Duchi & Zrnic
2023) writes ``theta = lam * E[f] + E[Y - lam * f]``: the first term is measured on all ``N``
responses, the second, the *rectifier*, on the ``m`` labelled ones.

What is guaranteed (:func:`rectified_upper_bound`, not approximate). Assume the ``N`` (prompt,
response, label) triples are i.i.d. (prompts i.i.d., one response each, a label a fixed or
random function of the pair) and the subset is drawn independently of every value (fresh
randomness, :func:`draw_label_subset`), in a uniformly random order.

The default, ``method="joint"`` (:mod:`.joint` has the proof), makes one test of each ``theta``
and needs no bound on ``E[f]``: every prediction is known, so given the ``N`` responses the only
unknown is their own mean label ``P``. A betting martingale on the labels drawn *without
replacement* (Waudby-Smith & Ramdas 2020) gives a p-value for each hypothesised ``P``, with a
recalibration ``c_j + lam_j f_j`` of each labelled response's prediction fitted on earlier
labels only (PPI++'s power tuning, made predictable); the exact law of ``N P`` given ``theta``
(binomial for 0/1 labels, Hoeffding's bound for costs) gives another; Fisher's product test
combines them at ``delta`` with no split, and ``theta`` is kept if some ``P`` survives.
``P(theta > U) <= delta`` for any distribution in the range and any cost model; the same test
bounds ``P`` itself (``population_bound``), which needs no i.i.d. prompts at all.

``method="stratified"`` (0/1 labels only; :mod:`.stratified` has the proof) splits the ``N``
scored responses into two strata by prediction alone and tests each hypothesised ``P`` exactly:
the labelled counts per stratum are hypergeometric given the responses, and the p-value is the
largest tail over every allocation of the unsafe responses to the strata; a weighted Stouffer
combination (each z clipped at 0, fixed weights) joins it to the exact binomial law of ``N P``
given ``theta``. Measured about as wide as the labels-only bound (the maximum over allocations
gives back most of what stratifying gains), far narrower than ``joint`` with a weak model.

``method="union"`` is the earlier construction, kept as an option. With ``delta = 1 - confidence``
split as ``delta_A = prediction_share * delta`` and ``delta_B = delta - delta_A`` (both declared):

* ``weight=lam`` declared in [0, 1] (before seeing data): ``U_A`` is the betting bound
  (:mod:`~safealign.constraints.bounded_means`) on ``E[f]`` from all ``N`` predictions at
  ``delta_A``, ``U_B`` the betting bound on the mean of ``R_j = Y_j - lam f_j`` (range
  ``[a - lam b, b - lam a]``) at ``delta_B``, and ``U = min(b, lam U_A + U_B)``. If
  ``theta > U`` then ``E[f] > U_A`` or ``E[R] > U_B`` (``lam >= 0``), so
  ``P(theta > U) <= delta_A + delta_B = delta`` by a union bound: no independence between the two
  terms is needed. ``lam = 0`` spends all of ``delta`` on the labels and is the labels-only bound.
* ``weight="tuned"`` (PPI++'s power tuning, made predictable): ``c = U_A`` is the betting bound
  on ``E[f]`` from the ``N - m`` *unlabelled* predictions at ``delta_A``, so it is independent of
  the labelled triples. The labelled ones are taken in draw order; ``lam_j`` in [0, 1] is chosen
  from ``c``, the unlabelled predictions and the labelled triples *before* ``j`` only, and
  ``Z_j = Y_j - lam_j (f_j - c)``. Given the past, ``E[Z_j] = theta + lam_j (c - E[f])``, which
  is ``>= theta`` on the event ``E[f] <= c``. The betting capital ``prod_j (1 + b_j (t - Z_j))``
  at ``t = theta`` (predictable bets ``b_j >= 0``) is then a non-negative supermartingale, so by
  Ville's inequality the betting bound ``U_B`` on the ``Z_j`` (range ``[a - (b - c), b + c - a]``)
  is below ``theta`` with probability at most ``delta_B`` (Waudby-Smith & Ramdas 2024; their
  argument needs only these conditional means, not identically distributed values).
  ``P(theta > min(b, U_B)) <= delta_A + delta_B = delta``. All labels serve both the tuning and
  the bound; the weight adapts to the model's quality without a held-out fold.

Both hold whatever the cost model's quality (a useless model only widens the bound) and without
any approximation. :func:`approximate_rectified_upper_bound` is PPI++'s asymptotic bound (a
normal approximation, as in the paper): opt-in, marked ``approximate``. Beside the rectified bound
:func:`label_rectified_bounds` reports the labels-only exact bound (Clopper-Pearson for 0/1
labels, betting for costs) and the cost-model-only bound, which bounds ``E[f]``, the cost
model's judgement, not ``theta``.

The code: :mod:`.subset` draws the labelled subset, :mod:`.finite` holds the finite-sample bound
(and the labels-only one both methods give at a declared weight 0), :mod:`.joint` the joint
test, :mod:`.stratified` the post-stratified exact test, :mod:`.clt` PPI++'s approximation,
:mod:`.labelled` the three bounds side by side; :mod:`.result` the result type and its stated
assumptions, :mod:`._checks` the input checks they share. Every name is importable from here.
"""

from safealign.constraints.ppi._checks import (
    METHOD_VERSIONS,
    METHODS,
    TARGETS,
    Target,
    check_method_version,
)
from safealign.constraints.ppi.clt import approximate_rectified_upper_bound
from safealign.constraints.ppi.finite import (
    TUNING_WARMUP,
    labels_only_upper_bound,
    rectified_upper_bound,
    unlabelled_needed,
)
from safealign.constraints.ppi.labelled import (
    LabelledBounds,
    cost_model_only_upper_bound,
    label_rectified_bounds,
)
from safealign.constraints.ppi.result import RectifiedBound
from safealign.constraints.ppi.subset import LabelSubset, draw_label_subset

__all__ = [
    "METHODS",
    "METHOD_VERSIONS",
    "TARGETS",
    "TUNING_WARMUP",
    "LabelSubset",
    "LabelledBounds",
    "RectifiedBound",
    "Target",
    "approximate_rectified_upper_bound",
    "check_method_version",
    "cost_model_only_upper_bound",
    "draw_label_subset",
    "label_rectified_bounds",
    "labels_only_upper_bound",
    "rectified_upper_bound",
    "unlabelled_needed",
]
