"""Bookkeeping of the DP-SGD loop (:mod:`.dp_sgd`): checkpoint and resume, and the progress bar.

A checkpoint holds the step count, the trainable weights, the optimizer's state and the schedule
it was made for. It holds no random generator: a private run's sampler and noise are secret
(:mod:`safealign.privacy.secret`) and must never reach a file, so a resumed run draws fresh
secret ones. That is the same mechanism: each step's Poisson sample and noise are independent of
every other step's, so steps k+1..T with fresh draws have exactly the distribution they would
have had in the uninterrupted run (the accountant composes T identical steps either way). A
non-private run's sampler follows the seed and is fast-forwarded past the steps already taken,
so its resume is still exactly the uninterrupted run.

Checkpoints are read with ``torch.load(weights_only=True)``: a run directory may come from
someone else, and a pickle can run any code; the payload is tensors, numbers, strings and dicts.
"""

from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from safealign._atomic import atomic_write_bytes
from safealign.config import ModelConfig
from safealign.errors import DataError
from safealign.models.scalar import Kind
from safealign.privacy.accounting import Mechanism, compute_epsilon
from safealign.privacy.plan import TrainingPlan

CHECKPOINT_KEYS = frozenset({"step", "trainable", "optimizer", "plan"})


@dataclass
class LoopState:
    """Steps taken, the Poisson sampler and the noise generator (None when non-private).

    The generators live only in memory (module doc): never saved, never restored.
    """

    step: int
    sampler: torch.Generator
    noise: torch.Generator | None


def save_checkpoint(
    path: Path,
    state: LoopState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: TrainingPlan,
) -> None:
    """Write the loop's state to ``path`` (atomically: a crash leaves the previous one intact)."""
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    payload = {  # CHECKPOINT_KEYS
        "step": state.step,
        "trainable": trainable,
        "optimizer": optimizer.state_dict(),
        "plan": plan.__dict__,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, unpickled with ``weights_only=True`` (no code runs).

    Raises:
        DataError: the file is not a checkpoint safealign wrote (e.g. a pickle that would run
            code, or a truncated file).
    """
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise DataError(
            f"refused to load checkpoint: it is not one safealign wrote ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); only tensors, numbers, "
            "strings and dicts are accepted, so no code in it was run. Delete it to train from "
            "the start",
            path=str(path),
        ) from exc
    if not isinstance(payload, dict) or not payload.keys() >= CHECKPOINT_KEYS:
        raise DataError(
            "refused to load checkpoint: it lacks step, trainable, optimizer or plan; "
            "delete it to train from the start",
            path=str(path),
        )
    return payload


def checkpoint_step(path: Path) -> int:
    """Steps taken by the run that wrote the checkpoint at ``path`` (read safely)."""
    return int(load_checkpoint(path)["step"])


def sweep_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files a killed :func:`save_checkpoint` left beside ``path``.

    :func:`safealign._atomic.atomic_write_bytes` writes to ``.NAME.<16 hex>.tmp`` and renames;
    a process killed before the rename leaves that file behind, one per crash. Only the run
    that owns ``path`` calls this, before it writes again, so no live writer's file is removed.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{16}}\.tmp")
    stale = [p for p in path.parent.glob(f".{path.name}.*.tmp") if pattern.fullmatch(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def restore_checkpoint(
    path: Path,
    state: LoopState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: TrainingPlan,
) -> None:
    """Load ``path`` into ``state``, the trainable weights and the optimizer (module doc).

    Raises:
        DataError: the file is not a safealign checkpoint, or was made for another schedule.
    """
    payload = load_checkpoint(path)
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
    if not plan.private:  # the seeded sampler: skip the draws of the steps already taken
        for _ in range(state.step):
            torch.rand(plan.num_units, generator=state.sampler)


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
