"""Bookkeeping of the DP-SGD loop (:mod:`.dp_sgd`): checkpoint and resume, and the progress bar.

A checkpoint holds everything that decides the rest of the run: the step count, both random
generators (Poisson sampling and noise), the trainable weights, the optimizer's state and the
schedule it was made for, so a resumed run takes exactly the steps the uninterrupted one would have.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from safealign._atomic import atomic_write_bytes
from safealign.config import ModelConfig
from safealign.errors import DataError
from safealign.models.scalar import Kind
from safealign.privacy.accounting import Mechanism, compute_epsilon

if TYPE_CHECKING:  # dp_sgd imports this module
    from safealign.privacy.dp_sgd import TrainingPlan


@dataclass
class LoopState:
    """Steps taken and the generators of the Poisson sampler and of the noise."""

    step: int
    sampler: torch.Generator
    noise: torch.Generator


def save_checkpoint(
    path: Path,
    state: LoopState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: TrainingPlan,
) -> None:
    """Write the loop's state to ``path`` (atomically: a crash leaves the previous one intact)."""
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    payload = {
        "step": state.step,
        "sampler": state.sampler.get_state(),
        "noise": state.noise.get_state(),
        "trainable": trainable,
        "optimizer": optimizer.state_dict(),
        "plan": plan.__dict__,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def restore_checkpoint(
    path: Path,
    state: LoopState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: TrainingPlan,
) -> None:
    """Load ``path`` into ``state``, the trainable weights and the optimizer.

    Raises:
        DataError: the checkpoint was made for another schedule.
    """
    payload = torch.load(path, weights_only=False)
    if payload["plan"] != plan.__dict__:
        raise DataError(
            f"checkpoint was made for a different schedule ({payload['plan']}, now {plan.__dict__}); "
            "resume with the same data and config, or delete the checkpoint",
            path=str(path),
        )
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in payload["trainable"].items():
            named[name].copy_(value)
    optimizer.load_state_dict(payload["optimizer"])
    state.step = payload["step"]
    state.sampler.set_state(payload["sampler"])
    state.noise.set_state(payload["noise"])


class Progress:
    """The progress bar (shown by rank 0 only) with the loss and the ε spent so far."""

    def __init__(
        self, plan: TrainingPlan, config: ModelConfig, kind: Kind, *, initial: int, show: bool
    ) -> None:
        label = f"{kind} model" + (
            f" (DP, σ={plan.noise_multiplier:.3g})" if plan.private else " (NON-PRIVATE)"
        )
        self.bar = tqdm(
            total=plan.steps, initial=initial, desc=label, disable=not show, leave=False
        )
        self.plan, self.privacy, self.show = plan, config.privacy, show
        self.epsilon = "0" if plan.private else "inf (non-private)"
        self.loss = "-"
        self.every = max(1, plan.steps // 5)  # PRV accounting takes ~0.3 s: refresh ε 5 times

    def update(self, step: int, loss: float) -> None:
        self.bar.update(1)
        plan = self.plan
        if self.show and plan.private and (step % self.every == 0 or step == plan.steps):
            spent = compute_epsilon(
                Mechanism(plan.noise_multiplier, plan.sample_rate, step),
                target_delta=self.privacy.target_delta,
                accountant=self.privacy.accountant,
            )
            self.epsilon = f"{spent.epsilon:.3f}"
        if loss == loss:  # an empty Poisson batch has no loss (NaN): keep the last one shown
            self.loss = f"{loss:.4f}"
        self.bar.set_postfix(loss=self.loss, eps=self.epsilon)

    def close(self) -> None:
        self.bar.close()
