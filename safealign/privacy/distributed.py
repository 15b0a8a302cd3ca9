"""Reward/cost training on several processes with Opacus' distributed DP-SGD (DPDDP).

Run under ``torchrun`` (CPU with gloo, or one GPU per process with NCCL)::

    torchrun --nproc_per_node=N -m safealign.privacy.distributed CONFIG.yaml --out DIR \\
        [--kind reward|cost] [key=value ...]

Every rank loads the configured data and splits it the same way (``seed``), trains on
``splits.train`` with :func:`~safealign.privacy.training.train_scoring_model`, checks that all
ranks ended with bit-identical trainable parameters (each prints its SHA-256), and rank 0 writes
``DIR/model/`` and ``DIR/receipt.json``. Without torchrun it is an ordinary single-process run.
Rank 0 charges the ledger as ``safealign train-reward`` does (:func:`~.release.charge`, same
budgets, same failure policy; no resume): it reserves before any rank touches the data, and
every rank stops with its error if the reservation is refused.

How one distributed step is the single-process mechanism (see :func:`share_of_batch`): all ranks
draw the *same* Poisson batch from one secret sampler (rank 0 draws its bytes from the OS CSPRNG
and broadcasts them in memory: :func:`~safealign.privacy.secret.shared_secret_generator`) and
each processes a disjoint share of it; each rank clips its units' folded per-unit gradients;
``DistributedDPOptimizer`` adds the Gaussian noise on rank 0 only and all-reduces the sums; so
the update is ``(Σ_{units in batch} clip(g_u) + N(0, σ²C²)) / (q·N)`` exactly as on one
process, and the accountant's (q, σ, steps) are unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from safealign.config import load_config
from safealign.data.source import load_source, make_splits
from safealign.errors import PrivacyError, SafeAlignError


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


def _init_process_group() -> Ranks:
    """Join torchrun's process group (env:// from RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return current_ranks()
    if torch.cuda.is_available():
        # "cuda" in train_scoring_model then means this rank's own GPU.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return current_ranks()


def _train(args: argparse.Namespace, ranks: Ranks) -> None:
    # Imported here: dp_sgd imports this module's helpers, and training imports dp_sgd.
    from safealign.privacy.calibration import calibrates_run
    from safealign.privacy.dp_sgd import plan_training, privacy_units
    from safealign.privacy.release import budget_target, charge
    from safealign.privacy.training import save_training_output, train_scoring_model

    config = load_config(args.config, args.overrides)
    pairs, _ = load_source(config)
    splits = make_splits(pairs, config)
    model_config = config.reward_model if args.kind == "reward" else config.cost_model
    privacy = model_config.privacy
    num_units = privacy_units(splits.train, privacy.privacy_unit)[1]
    calibrates = calibrates_run(args.kind, splits.train, model_config)
    plan = plan_training(num_units, model_config, calibration=calibrates)

    def reserve():  # rank 0 only: open the ledger, check δ, reserve (the charge stays open)
        target = budget_target(
            config.budget, pairs, privacy_unit=privacy.privacy_unit,
            dataset_id=config.data.dataset_id,
            target_deltas=[(f"{args.kind}_model.privacy.target_delta", privacy.target_delta)],
        )  # fmt: skip
        label = f"{args.kind} model (distributed, {ranks.world_size} ranks)"
        return stack.enter_context(
            charge(target, plan.mechanism, label=label, accountant=privacy.accountant,
                   counts_steps=True)  # fmt: skip
        )

    with contextlib.ExitStack() as stack:
        run = _agreed(ranks, reserve if plan.private and ranks.rank == 0 else None)
        training_steps = plan.steps - plan.calibration_steps
        on_step = None
        if run is not None:  # calibration counted in full once training has ended
            on_step = lambda step: run.step(plan.steps if step >= training_steps else step)  # noqa: E731
        result = train_scoring_model(
            splits.train, kind=args.kind, config=model_config, seed=config.seed,
            eval_pairs=splits.eval, plan=plan, on_step=on_step, progress=ranks.rank == 0,
        )  # fmt: skip
        check_ranks_agree(result.model.model, ranks)
        if run is not None and result.receipt.mechanism is not None:
            run.spend(result.receipt.mechanism)
    if ranks.rank == 0:
        receipt = save_training_output(result, args.out)
        print(f"{args.kind} model: ε = {result.receipt.epsilon} → {receipt}", flush=True)


def _agreed(ranks: Ranks, reserve):
    """Rank 0 runs ``reserve`` (others pass None); every rank learns whether it failed.

    Without this, a refused reservation on rank 0 would leave the other ranks waiting in their
    first collective, or training on data the ledger refused. Returns rank 0's charge.
    """
    outcome, error = None, None
    if reserve is not None:
        try:
            outcome = reserve()
        except SafeAlignError as exc:
            error = str(exc)
    if ranks.distributed:
        message = [error]
        dist.broadcast_object_list(message, src=0)
        error = message[0]
    if error is not None:
        raise PrivacyError(f"the ledger refused this run on rank 0: {error}")
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 2 on bad input (message on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m safealign.privacy.distributed",
        description="Train a reward or cost model with DP-SGD on all ranks of a torchrun job.",
    )
    parser.add_argument("config", help="a YAML config")
    parser.add_argument("--out", required=True, help="output directory (written by rank 0)")
    parser.add_argument("--kind", choices=("reward", "cost"), default="reward")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)  # overrides may follow --out
    # The training stack is imported here (dp_sgd imports this module, so not at the top) and
    # *before* the process group exists: Opacus imports torch.distributed.nn.functional, whose
    # functions take ``group=group.WORLD`` as a default argument, bound at import. Imported after
    # init_process_group they hold the live group forever, destroy_process_group cannot free it,
    # and its gloo threads are torn down during interpreter exit instead: a rank then aborted
    # after training correctly ("terminate called without an active exception", SIGABRT).
    import safealign.privacy.training  # noqa: F401

    ranks = _init_process_group()
    try:
        _train(args, ranks)
    except SafeAlignError as exc:
        print(f"rank {ranks.rank}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()  # frees the group and joins its threads (see above)
    return 0


if __name__ == "__main__":
    sys.exit(main())
