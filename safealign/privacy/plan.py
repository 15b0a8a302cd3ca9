"""The training plan: sample rate, steps and calibrated noise, fixed before any data is touched.

A plan is a function of the training set's *size* (public, as the sampling rate reveals it) and
the config alone, so it can be computed and reserved in the ledger (:mod:`.release`) before a
single private record is read; :mod:`.dp_sgd` then runs exactly the planned mechanism.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from safealign.config import ModelConfig
from safealign.privacy.accounting import Mechanism, calibrate_noise, check_target_delta


@dataclass(frozen=True)
class TrainingPlan:
    """The schedule fixed before any data is touched (and reserved in the ledger).

    Attributes:
        private: False for the explicitly non-private mode (``target_epsilon: null``).
        num_units: Privacy units (pairs, or users) in the training data.
        sample_rate: Poisson sampling rate q of each unit per step.
        steps: Optimizer steps planned.
        noise_multiplier: σ calibrated to the target ε for this schedule (None if non-private).
        expected_batch_size: q · num_units, the divisor of the noisy gradient sum.
        calibration_steps: The last of ``steps``, spent on the cost model's DP calibration
            (:mod:`safealign.privacy.calibration`) rather than on training.
    """

    private: bool
    num_units: int
    sample_rate: float
    steps: int
    noise_multiplier: float | None
    expected_batch_size: float
    calibration_steps: int = 0

    @property
    def mechanism(self) -> Mechanism | None:
        if not self.private:
            return None
        return Mechanism(self.noise_multiplier, self.sample_rate, self.steps)


# Calibration is a pure function of its arguments and takes seconds under PRV: remember it.
_calibrate = functools.lru_cache(maxsize=128)(calibrate_noise)


def plan_training(
    num_units: int, config: ModelConfig, *, calibration: bool = False
) -> TrainingPlan:
    """Sample rate, step count and calibrated noise for ``config`` on ``num_units`` units.

    With ``calibration`` (a private cost model with safety labels: ``calibration.calibrates``)
    ``train.calibration_epochs`` more epochs of steps are planned, and σ covers them too.
    """
    train, privacy = config.train, config.privacy
    sample_rate = min(1.0, train.batch_size / num_units)
    per_epoch = max(1, round(num_units / train.batch_size))
    steps = train.epochs * per_epoch
    if privacy.target_epsilon is None:
        return TrainingPlan(False, num_units, sample_rate, steps, None, sample_rate * num_units)
    calibration_steps = train.calibration_epochs * per_epoch if calibration else 0
    steps += calibration_steps
    check_target_delta(privacy.target_delta, num_units)
    sigma = _calibrate(
        target_epsilon=privacy.target_epsilon,
        target_delta=privacy.target_delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=privacy.accountant,
    )
    return TrainingPlan(
        True, num_units, sample_rate, steps, sigma, sample_rate * num_units, calibration_steps
    )
