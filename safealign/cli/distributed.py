"""``torchrun -m safealign.cli.distributed``: reward/cost training on several processes.

Run under ``torchrun`` (CPU with gloo, or one GPU per process with NCCL)::

    torchrun --nproc_per_node=N -m safealign.cli.distributed CONFIG.yaml --out DIR \\
        [--kind reward|cost] [key=value ...]

Every rank loads the configured data and splits it the same way (``seed``), trains on
``splits.train`` with :func:`~safealign.privacy.training.train_scoring_model`, checks that all
ranks ended with bit-identical trainable parameters (each prints its SHA-256), and rank 0 writes
``DIR/model/`` and ``DIR/receipt.json``. Without torchrun it is an ordinary single-process run.
Rank 0 charges the ledger as ``safealign train-reward`` does (:func:`~safealign.privacy.release.charge`,
same budgets, same failure policy; no resume): it reserves before any rank touches the data, and
every rank stops with its error if the reservation is refused. Why the distributed run is the
single-process mechanism: :mod:`safealign.privacy.distributed`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist

# The training stack is imported at the top, *before* the process group exists: Opacus imports
# torch.distributed.nn.functional, whose functions take ``group=group.WORLD`` as a default
# argument, bound at import. Imported after init_process_group they hold the live group forever,
# destroy_process_group cannot free it, and its gloo threads are torn down during interpreter
# exit instead: a rank then aborted after training correctly ("terminate called without an
# active exception", SIGABRT).
from safealign import PrivacyError, SafeAlignError, Workspace, load_config
from safealign.privacy import (
    budget_target,
    charge,
    plan_training,
    save_training_output,
    train_scoring_model,
)
from safealign.privacy.calibration import calibrates_run
from safealign.privacy.distributed import Ranks, check_ranks_agree, current_ranks
from safealign.privacy.dp_sgd import privacy_units


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
    ws = Workspace(load_config(args.config, args.overrides), args.out)  # data and splits, once
    config, pairs, splits = ws.config, ws.pairs, ws.splits
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
            charge(
                target,
                plan.mechanism,
                label=label,
                accountant=privacy.accountant,
                counts_steps=True,
            )
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
        prog="python -m safealign.cli.distributed",
        description="Train a reward or cost model with DP-SGD on all ranks of a torchrun job.",
    )
    parser.add_argument("config", help="a YAML config")
    parser.add_argument("--out", required=True, help="output directory (written by rank 0)")
    parser.add_argument("--kind", choices=("reward", "cost"), default="reward")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)  # overrides may follow --out
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
