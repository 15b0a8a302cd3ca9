"""DP calibration in the large of a cost model: one shift ``b`` of the cost, fitted with DP-SGD.

Why: when clipping binds, DP-SGD stops averaging gradients and lets each unit *vote* with a
direction of norm at most ``max_grad_norm``. For the cost model's classification term that vote
does not shrink as a safe response's predicted cost falls, so the many safe responses keep pushing
every cost down and the few unsafe ones cannot hold it: a DP cost model drifts toward "everything
is safe". In the demo's world (seed 4) the trained model predicted an unsafe rate of 0.11 where the
labels had 0.31, and a mean cost of -0.75 for responses whose true cost averaged +5.4. The safety
test then certified a policy whose true expected cost was above the threshold.

The fix: after training, freeze the model and fit ``cost ← cost + b`` on the training pairs' safety
labels by DP gradient descent on the same classification loss (per pair, the mean over its
labelled responses of ``-log σ(s_y·(c_y + b))``). Its gradient in ``b`` is a mean of
``σ(c + b) - y`` over at most two responses, so a pair's gradient is at most 1 in norm (a user's, at
most their number of pairs) and clipping at ``max_grad_norm ≥ 1`` never binds for pair-level
privacy: the noisy step is unbiased. Each step samples units with the plan's rate q and adds
``N(0, σ²·max_grad_norm²)`` with the plan's σ, so the calibration steps are further steps of the
same subsampled Gaussian mechanism; :func:`safealign.privacy.plan.plan_training` counts them in
the planned steps and calibrates σ for the total.

The step size is ``4`` (the reciprocal of the loss's largest curvature in ``b``, ``σ(1-σ) ≤ ¼``),
so gradient descent cannot overshoot; the result is the average of the second half of the iterates
(Polyak averaging), which halves the variance that Poisson sampling adds. The model's scores on the
training responses are computed once, without gradients, and leave this module only through the
noisy steps. The batches and the noise are secret (:mod:`safealign.privacy.secret`), never drawn
from the published seed: with a seeded generator anyone holding the data but one record could
replay the fit and read membership off the released shift. Calibration runs only after the last
training step, so a crash before it releases nothing, and one during it leaves no shift behind.
"""

from __future__ import annotations

import numpy as np
import torch

from safealign.config import ModelConfig
from safealign.data.records import PairDataset
from safealign.models.scalar import ScoringModel
from safealign.privacy.secret import secret_generator

STEP_SIZE = 4.0


def calibrates_run(kind: str, pairs: PairDataset, config: ModelConfig) -> bool:
    """Whether a run calibrates: a private cost model, ``train.calibration_epochs > 0`` and some
    safety labels (``safer`` annotations alone fix differences of costs, not their level)."""
    labelled = any(p.chosen_safe is not None or p.rejected_safe is not None for p in pairs)
    private = config.privacy.target_epsilon is not None
    return kind == "cost" and private and config.train.calibration_epochs > 0 and labelled


def fit_shift(
    costs: torch.Tensor,
    unsafe: torch.Tensor,
    weights: torch.Tensor,
    units: torch.Tensor,
    num_units: int,
    *,
    sample_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    steps: int,
) -> float:
    """The DP shift ``b`` (module doc) from ``[P, 2]`` costs, unsafe labels and label weights
    (:func:`labelled_costs`); ``units`` ``[P]`` maps pairs to privacy units. Sampling and noise
    are secret, so two calls on the same data release independent shifts."""
    generator = secret_generator()
    expected_batch = sample_rate * num_units
    shift, iterates = 0.0, []
    for _ in range(steps):
        sampled = torch.rand(num_units, generator=generator, dtype=torch.float64) < sample_rate
        per_pair = ((torch.sigmoid(costs + shift) - unsafe) * weights).sum(1)
        per_unit = torch.zeros(num_units, dtype=torch.float64).index_add_(0, units, per_pair)
        clipped = per_unit * (max_grad_norm / per_unit.abs().clamp_min(1e-12)).clamp(max=1.0)
        noise = (
            noise_multiplier
            * max_grad_norm
            * torch.randn(1, generator=generator, dtype=torch.float64)
        )
        shift -= STEP_SIZE * float((clipped[sampled].sum() + noise) / expected_batch)
        iterates.append(shift)
    return float(np.mean(iterates[len(iterates) // 2 :])) if iterates else 0.0


def apply_shift(scoring: ScoringModel, shift: float) -> None:
    """Add ``shift`` to every score: to the head's bias, so the saved model carries it."""
    with torch.no_grad():
        scoring.model.head.bias.add_(shift)


def labelled_costs(
    scoring: ScoringModel, pairs: PairDataset
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[P, 2]`` costs, unsafe labels and weights (1/labelled responses of the pair, or 0)."""
    prompts = [p.prompt for p in pairs]
    costs = torch.stack(
        [
            scoring.score(prompts, [p.chosen for p in pairs]),
            scoring.score(prompts, [p.rejected for p in pairs]),
        ],
        dim=1,
    ).double()
    known = torch.tensor(
        [[p.chosen_safe is not None, p.rejected_safe is not None] for p in pairs],
        dtype=torch.float64,
    )
    unsafe = torch.tensor(
        [[p.chosen_safe is False, p.rejected_safe is False] for p in pairs], dtype=torch.float64
    )
    weights = known / known.sum(1, keepdim=True).clamp_min(1.0)
    return costs, unsafe, weights
