"""Distributed DP-SGD under ``torchrun``: one mechanism over W processes (Opacus' DPDDP).

The pieces :mod:`.dp_sgd` uses when a process group is initialised: where this process sits
(:class:`Ranks`), its share of the global batch, sums over ranks, and the check that all ranks
ended with the same model. The command that runs a training job under ``torchrun`` is
:mod:`safealign.cli.distributed`.

How one distributed step is the single-process mechanism (see :func:`share_of_batch`): all ranks
draw the *same* Poisson batch from one secret sampler (rank 0 draws its bytes from the OS CSPRNG
and broadcasts them in memory: :func:`~safealign.privacy.secret.shared_secret_generator`) and
each processes a disjoint share of it; each rank clips its units' folded per-unit gradients;
``DistributedDPOptimizer`` adds the Gaussian noise on rank 0 only and all-reduces the sums; so
the update is ``(Σ_{units in batch} clip(g_u) + N(0, σ²C²)) / (q·N)`` exactly as on one
process, and the accountant's (q, σ, steps) are unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from safealign.errors import PrivacyError


@dataclass(frozen=True)
class Ranks:
    """Where this process sits: ``rank`` of ``world_size`` (0 of 1 without torch.distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_ranks() -> Ranks:
    """The process group's rank and size, or a single process when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def share_of_batch(chosen: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's units ``[≈|B|/W]`` of the global Poisson batch ``chosen`` ``[|B|]``.

    Why this is the Poisson subsampled mechanism with rate q per unit: every rank's sampler has
    the same (secret) state, rank 0's, so every rank draws the *same* mask ``rand(N) < q`` —
    which is exactly the single-process draw (each unit in independently with probability q).
    The split afterwards (every W-th chosen unit) is a deterministic function of that one draw;
    it only decides *which process* computes a unit's clipped gradient, and the sum over ranks
    of the clipped gradients is the same whatever the split. So the released sum, and hence the privacy
    analysis, are those of one process. (Independent per-rank draws over fixed shards would also
    be Poisson; a shared draw additionally keeps the run identical to the single-process one for
    the same secret bytes and balances the shares to within one unit.) The sampled set is never
    sent between ranks; all ranks compute it locally from the broadcast sampler state.
    """
    return chosen[ranks.rank :: ranks.world_size]


def sum_over_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """``value`` summed over all ranks (the value itself on one process)."""
    if ranks.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def reduce_plain_grads(
    params: list[torch.nn.Parameter], local_units: int, batch_units: int
) -> None:
    """Non-private mode: turn each rank's local-mean ``p.grad`` into the global batch mean.

    Each rank's loss is a mean over its ``local_units``; weighting by ``local_units`` and dividing
    the all-reduced sum by ``batch_units`` gives the gradient of the mean over the whole batch.
    A rank with no units contributes zeros but must still join the collective.
    """
    for p in params:
        grad = p.grad * local_units if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        p.grad = grad / batch_units


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the trainable parameters (names and bytes, in module order)."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            digest.update(name.encode())
            # Raw bytes (any dtype, bfloat16 included): equal digests mean bit-identical weights.
            digest.update(p.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_ranks_agree(model: torch.nn.Module, ranks: Ranks) -> str:
    """Print this rank's parameter digest; raise on every rank if any two ranks differ.

    Raises:
        PrivacyError: the ranks diverged, so no single model matches the accounted mechanism.
    """
    digest = parameter_digest(model)
    print(f"rank {ranks.rank}/{ranks.world_size}: trainable parameters sha256 {digest}", flush=True)
    digests = [digest]
    if ranks.distributed:
        digests = [None] * ranks.world_size
        dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise PrivacyError(
            f"ranks ended with different parameters ({digests}); the model would not be the "
            "one the accountant describes, so nothing is written"
        )
    return digest
