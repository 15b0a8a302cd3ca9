"""DP-SGD for reward and cost models with per-pair (or per-user) clipping.

The trap (DESIGN.md): a pair is two sequences. Flattening ``[P, 2, L]`` to ``[2P, L]`` makes
Opacus compute one gradient per *sequence*, and clipping those would let one pair contribute two
clipped gradients: the per-pair sensitivity silently doubles. Two ways out, by ``grad_sample_mode``:

- ``hooks`` / ``functorch`` (pattern A): keep the flattening and, after ``backward()`` and before
  ``optimizer.step()``, fold each ``grad_sample`` from rows to privacy units:
  ``g_u = (U / R) · Σ_{rows r of unit u} grad_sample[r]``. The factor undoes Opacus'
  ``loss_reduction="mean"`` rescaling (it multiplies by the R rows it saw; our loss is a mean over
  U units), so ``g_u`` is exactly the gradient of unit u's summed loss. DPOptimizer then clips
  each ``g_u`` to ``max_grad_norm``. Pair- or user-level units.
- ``ghost`` (pattern B; ghost clipping, Li et al., ICLR 2022): Opacus takes each row's gradient
  norm from activations and backprops in a first backward pass and the sum of clipped row
  gradients in a second, never materialising per-row gradients, so there is nothing to fold.
  Instead one row *is* one pair (:mod:`safealign.models.paired`: both sequences side by side
  under a block-diagonal attention mask, scored in one forward). Pair-level units only (a user
  spans several rows); the backbone must pass :func:`~safealign.models.paired.check_pair_layout`.

Either way the optimizer adds ``N(0, σ²·max_grad_norm²)`` to the sum of clipped unit gradients
and divides by the expected number of units per batch. ``tests/privacy/test_dp_sgd.py`` checks
the clipped gradients of both patterns against a pair-by-pair reference.

Sampling is Poisson over units (each unit joins a step independently with probability q), which
is what the subsampled-Gaussian accountant assumes; an empty batch still takes a noisy step.
Under DP both the sampling and the noise are secret (:mod:`safealign.privacy.secret`): drawn
from the OS CSPRNG, never from the published ``seed``, so a private run is not reproducible
from what it releases. The noise uses Opacus' floating-point-safe Gaussian (``secure_mode``:
the sum of four draws, Jin et al. 2022 / Holohan et al. 2021), so the low bits of a released
float do not leak the noise. It costs five Gaussian draws per trainable weight instead of one
(measured on CPU: +0.09 ms per step for 3k weights, +46 ms for 1M), a few percent of a step
here, so it is always on. A non-private run samples from the seed and stays reproducible.

A frozen backbone (``head`` set) trains on :class:`~safealign.models.pairs.EmbeddedPairs`: the
module Opacus wraps is then the head alone, fed the cached pooled states ``[2P, H]`` (pattern A,
the same fold) or ``[P, 2, H]`` (ghost: one row per pair, no attention to isolate), so per-sample
gradients are one head-sized tensor per row.

Under ``torchrun`` the same step runs on W processes with Opacus' DPDDP and the distributed DP
optimizers: every rank draws the same batch and takes a share of it, and noise is added once, on
rank 0 (:mod:`safealign.privacy.distributed` explains why this is the same mechanism).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from opacus import GradSampleModule
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import (
    DistributedDPOptimizer,
    DistributedDPOptimizerFastGradientClipping,
    DPOptimizer,
    DPOptimizerFastGradientClipping,
)
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

from safealign.config import ModelConfig
from safealign.data.records import PairDataset
from safealign.errors import ConfigError, DataError
from safealign.models.paired import check_pair_layout, paired_scores
from safealign.models.pairs import EmbeddedPairs, EncodedPairs, PairLoss, pair_loss
from safealign.models.scalar import Kind, ScalarModel, ScoringModel
from safealign.privacy.distributed import (
    Ranks,
    current_ranks,
    reduce_plain_grads,
    share_of_batch,
    sum_over_ranks,
)
from safealign.privacy.loop import (
    LoopState,
    Progress,
    restore_checkpoint,
    save_checkpoint,
    sweep_stale_temps,
)
from safealign.privacy.plan import TrainingPlan
from safealign.privacy.secret import secret_generator, shared_secret_generator

# Opacus' floating-point-safe Gaussian (module doc). Measured step time on CPU, one thread,
# median of 40 steps: x1.05 (feature head, 2.9k weights), x1.06 (tiny LoRA, 2.1k), x1.10 (tiny,
# full fine-tune, 42k); the noise alone grows from 13.5 to 60 ms for 1M weights.
SECURE_NOISE = True


def privacy_units(pairs: PairDataset, unit: str) -> tuple[torch.Tensor, int]:
    """Unit index ``[P]`` of each pair and the number of units (pair-level or user-level DP).

    Raises:
        DataError: user-level privacy on pairs without ``user_id``.
    """
    if unit == "pair":
        return torch.arange(len(pairs)), len(pairs)
    missing = sum(p.user_id is None for p in pairs)
    if missing:
        raise DataError(
            f"privacy_unit 'user' needs a user_id on every pair; {missing} of {len(pairs)} have none "
            "(use privacy_unit: pair, or add user ids)",
            path=pairs.name,
        )
    index = {u: i for i, u in enumerate(pairs.user_ids)}
    return torch.tensor([index[p.user_id] for p in pairs]), len(index)


def pair_losses(
    model: torch.nn.Module, batch: EncodedPairs | EmbeddedPairs, kind: Kind
) -> torch.Tensor:
    """Per-pair losses ``[P]``: one forward over the ``[2P, L]`` rows (``[2P, H]`` embeddings,
    through the head alone, in head mode)."""
    if isinstance(batch, EmbeddedPairs):
        pairs, _, width = batch.embeddings.shape
        scores = model(batch.embeddings.reshape(2 * pairs, width)).view(pairs, 2)
        return pair_loss(scores, batch.unsafe, batch.unsafer, kind=kind)
    pairs, _, length = batch.input_ids.shape
    scores = model(
        input_ids=batch.input_ids.reshape(2 * pairs, length),
        attention_mask=batch.attention_mask.reshape(2 * pairs, length),
    ).view(pairs, 2)
    return pair_loss(scores, batch.unsafe, batch.unsafer, kind=kind)


def fold_grad_samples(
    params: list[torch.nn.Parameter], row_units: torch.Tensor, num_units: int
) -> None:
    """Replace each ``p.grad_sample`` ``[R, ...]`` by per-unit sums ``[U, ...]`` (see module doc).

    ``row_units[r]`` is the unit (0..U-1) of row r; the ``U / R`` factor undoes Opacus' mean
    rescaling so the result is the gradient of each unit's summed loss.
    """
    rows = row_units.numel()
    for p in params:
        gs = p.grad_sample
        if isinstance(gs, list):  # a layer called twice per step: never in our forward
            raise RuntimeError("a layer ran twice in one step; per-unit gradients would be wrong")
        folded = torch.zeros((num_units, *gs.shape[1:]), dtype=gs.dtype, device=gs.device)
        folded.index_add_(0, row_units.to(gs.device), gs)
        p.grad_sample = folded * (num_units / rows)


def _empty_grad_samples(params: list[torch.nn.Parameter]) -> None:
    """An empty Poisson batch: zero units, but the step (and its noise) still happens."""
    for p in params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def _make_private(
    model: torch.nn.Module,
    inner: torch.optim.Optimizer,
    plan: TrainingPlan,
    config: ModelConfig,
    noise: torch.Generator | None,
    ranks: Ranks,
) -> tuple[GradSampleModule | GradSampleModuleFastGradientClipping, DPOptimizer]:
    """Per-sample-gradient (or ghost-norm) module and DP optimizer, one process or distributed."""
    privacy = config.privacy
    ghost = privacy.grad_sample_mode == "ghost"
    if ranks.distributed:
        # Opacus' own order (make_private on a DPDDP module): GradSampleModule(DPDDP(model)).
        # DPDDP only broadcasts rank 0's weights; the distributed optimizers all-reduce the
        # clipped, noised sums, so no gradient is exchanged before clipping.
        model = DPDDP(model)
    if ghost:
        # Per-row gradient norms from each layer's activations and backprops (no grad_sample),
        # then a second backward of Σ_i min(1, C/‖g_i‖)·loss_i, which leaves Σ_i clip(g_i) in
        # p.grad; the optimizer only adds noise and divides.
        module = GradSampleModuleFastGradientClipping(
            model,
            batch_first=True,
            loss_reduction="mean",
            max_grad_norm=privacy.max_grad_norm,
            use_ghost_clipping=True,
        )
        single, distributed = (
            DPOptimizerFastGradientClipping,
            DistributedDPOptimizerFastGradientClipping,
        )
    else:
        module = GradSampleModule(
            model,
            batch_first=True,
            loss_reduction="mean",
            force_functorch=privacy.grad_sample_mode == "functorch",
        )
        single, distributed = DPOptimizer, DistributedDPOptimizer
    # The distributed optimizers divide by expected_batch_size (per rank) and then by world_size
    # (after the all-reduce), as Opacus' make_private sets them up: the total divisor stays q·N.
    divisor = max(1, round(plan.expected_batch_size))
    optimizer = (distributed if ranks.distributed else single)(
        inner,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=divisor / ranks.world_size if ranks.distributed else divisor,
        loss_reduction="mean",
        generator=noise,
        secure_mode=SECURE_NOISE,
    )
    return module, optimizer


def trained_module(scalar: ScalarModel, data: EncodedPairs | EmbeddedPairs) -> torch.nn.Module:
    """What DP-SGD wraps: the head alone on embeddings (head mode), else the whole model."""
    return scalar.head if isinstance(data, EmbeddedPairs) else scalar


def run_dp_sgd(
    scoring: ScoringModel,
    data: EncodedPairs | EmbeddedPairs,
    units: torch.Tensor,
    plan: TrainingPlan,
    *,
    config: ModelConfig,
    kind: Kind,
    seed: int,
    checkpoint: Path | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
) -> tuple[int, list[float]]:
    """Train ``scoring.model`` in place with DP-SGD (or plain SGD when not private).

    Under an initialised ``torch.distributed`` process group every rank must call this with the
    same data, plan and seed; only rank 0 shows progress and writes the checkpoint. ``seed``
    drives only a non-private run's sampling; a private run's sampling and noise are secret.

    Returns:
        Steps taken in total (including those before a resume) and the loss of each step run here.

    Raises:
        ConfigError: ghost clipping that cannot clip pairs here (before any step; see make_step).
    """
    device = next(scoring.model.parameters()).device
    params = [p for p in scoring.model.parameters() if p.requires_grad]
    inner = torch.optim.AdamW(params, lr=config.train.lr, weight_decay=config.train.weight_decay)
    ranks = current_ranks()
    state = LoopState(0, *_generators(plan, seed, device, ranks))
    step = make_step(
        scoring.model, data, units, plan, config=config, kind=kind, inner=inner, noise=state.noise
    )
    if checkpoint is not None and ranks.rank == 0:
        sweep_stale_temps(checkpoint)  # left by a run killed mid-write; rank 0 is the writer
    if checkpoint is not None and checkpoint.exists():
        restore_checkpoint(checkpoint, state, scoring.model, inner, plan)
    bar = Progress(plan, config, kind, initial=state.step, show=progress and ranks.rank == 0)
    losses = []
    try:
        while state.step < plan.steps:
            # The same draw on every rank (shared generator); each takes its share (share_of_batch).
            chosen = torch.nonzero(
                torch.rand(plan.num_units, generator=state.sampler) < plan.sample_rate
            ).flatten()
            loss = step(chosen)
            state.step += 1
            losses.append(loss)
            bar.update(state.step, loss)
            if checkpoint is not None and ranks.rank == 0:
                save_checkpoint(checkpoint, state, scoring.model, inner, plan)
            if on_step is not None:
                on_step(state.step)
    finally:
        bar.close()
        if plan.private:
            step.model.remove_hooks()  # the caller gets a plain module back
            step.model._close()
    return state.step, losses


def _generators(
    plan: TrainingPlan, seed: int, device: torch.device, ranks: Ranks
) -> tuple[torch.Generator, torch.Generator | None]:
    """The Poisson sampler (the same on every rank) and the noise generator of a run.

    Private: both secret (module doc), fresh for every call, so also fresh on a resume; a
    resumed run's later steps are then not the ones the uninterrupted run would have taken, but
    every step samples and noises independently of all others, so they are the same mechanism.
    Non-private: the sampler follows ``seed`` and there is no noise.
    """
    if not plan.private:
        return torch.Generator().manual_seed(seed), None
    return shared_secret_generator(ranks), secret_generator(device)


def make_step(
    scalar: ScalarModel,
    data: EncodedPairs | EmbeddedPairs,
    units: torch.Tensor,
    plan: TrainingPlan,
    *,
    config: ModelConfig,
    kind: Kind,
    inner: torch.optim.Optimizer,
    noise: torch.Generator | None,
) -> Step:
    """The step :func:`run_dp_sgd` repeats: Opacus wrapping (when private) of ``scalar`` and of
    ``inner`` (an optimizer over the trainable parameters), as ``config`` says.

    Raises:
        ConfigError: ghost clipping with units other than pairs, or with a backbone that cannot
            take one row per pair (checked on random ids, not on the data).
    """
    ranks = current_ranks()
    ghost = plan.private and config.privacy.grad_sample_mode == "ghost"
    if ghost:
        if not torch.equal(units.cpu(), torch.arange(len(units))):  # one row is one unit
            raise ConfigError("grad_sample_mode 'ghost' clips pairs; it needs privacy_unit: pair")
        if isinstance(data, EncodedPairs):
            check_pair_layout(scalar)
    trained = trained_module(scalar, data)
    model, optimizer = trained, inner
    if plan.private:
        model, optimizer = _make_private(trained, inner, plan, config, noise, ranks)
    return Step(
        model, scalar, optimizer, plan, kind,
        params=[p for p in scalar.parameters() if p.requires_grad],
        device=next(scalar.parameters()).device, ranks=ranks, data=data,
        unit_pairs=[torch.nonzero(units == u).flatten() for u in range(plan.num_units)],
        criterion=DPLossFastGradientClipping(model, optimizer, PairLoss(kind)) if ghost else None,
    )  # fmt: skip


@dataclass
class Step:
    """One optimizer step of :func:`run_dp_sgd` on a global Poisson batch of units (see
    :func:`make_step`); ``model`` is the Opacus-wrapped module when private."""

    model: torch.nn.Module
    scalar: ScalarModel  # the plain model (head mode: its head is what `model` wraps)
    optimizer: torch.optim.Optimizer
    plan: TrainingPlan
    kind: Kind
    params: list[torch.nn.Parameter]
    device: torch.device
    ranks: Ranks
    data: EncodedPairs | EmbeddedPairs
    unit_pairs: list[torch.Tensor]
    criterion: DPLossFastGradientClipping | None  # ghost clipping only

    def __call__(self, chosen: torch.Tensor) -> float:
        """Step on the global batch ``chosen`` ``[B]``, of which this rank computes its share;
        returns the mean over the batch's units of each unit's summed pair losses."""
        self.optimizer.zero_grad(set_to_none=True)
        if len(chosen) == 0:
            if self.plan.private:
                self._no_units()
                self.optimizer.step()
            return math.nan
        mine = share_of_batch(chosen, self.ranks)
        loss_sum = torch.zeros((), device=self.device)
        if len(mine) > 0:
            with warnings.catch_warnings():
                # Opacus' hooks on a model whose inputs need no grad (frozen embeddings under
                # LoRA) trigger this benign PyTorch warning on every step.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss_sum = self._backward(mine)
        elif self.plan.private:  # other ranks have units: this one still joins the all-reduce
            self._no_units()
        if not self.plan.private and self.ranks.distributed:
            reduce_plain_grads(self.params, len(mine), len(chosen))
        self.optimizer.step()
        return float(sum_over_ranks(loss_sum, self.ranks) / len(chosen))

    def _no_units(self) -> None:
        """No unit here: a zero clipped sum, so the step (and its noise) still happens."""
        if self.criterion is None:
            _empty_grad_samples(self.params)
        else:  # the ghost optimizer takes p.grad as the clipped sum
            for p in self.params:
                p.grad = torch.zeros_like(p)

    def _batch(self, pair_index: torch.Tensor) -> EncodedPairs | EmbeddedPairs:
        batch = self.data.select(pair_index)
        if isinstance(batch, EmbeddedPairs):
            return batch.to(self.device)
        length = int(batch.attention_mask.sum(-1).max())  # trim shared padding (right-padded)
        return EncodedPairs(
            batch.input_ids[..., :length].to(self.device),
            batch.attention_mask[..., :length].to(self.device),
            batch.unsafe.to(self.device),
            batch.unsafer.to(self.device),
        )

    def _backward(self, units: torch.Tensor) -> torch.Tensor:
        """Forward and backward over ``units`` ``[U]``, leaving what the optimizer clips (or, not
        private, the mean gradient); returns the detached sum of the units' losses."""
        pair_index = torch.cat([self.unit_pairs[u] for u in units.tolist()])
        batch = self._batch(pair_index)
        if self.criterion is not None:
            # Pattern B: one row per pair (units are pairs here), so Opacus' per-row clipping is
            # per-pair clipping; its loss is the mean over the P rows of the pair losses.
            if isinstance(batch, EmbeddedPairs):  # the head once, on [P, 2, H]
                scores = self.scalar.head(batch.embeddings).squeeze(-1)
            else:
                scores = paired_scores(self.scalar, batch.input_ids, batch.attention_mask)
            loss = self.criterion(scores, batch.unsafe, batch.unsafer)
            loss.backward()  # two passes: per-pair norms, then Σ_i clip(g_i) into p.grad
            return loss.detach() * len(pair_index)
        # unit id (0..U-1 within this batch) of every pair; rows 2i and 2i+1 are pair i's.
        local = torch.cat(
            [torch.full((len(self.unit_pairs[u]),), k) for k, u in enumerate(units.tolist())]
        )
        losses = pair_losses(self.model, batch, self.kind)
        # Mean over units of each unit's summed pair losses (the fold's U/R factor then gives
        # each unit's exact gradient, whatever this normalisation).
        (losses.sum() / len(units)).backward()
        if self.plan.private:
            fold_grad_samples(self.params, local.repeat_interleave(2), len(units))
        return losses.sum().detach()
