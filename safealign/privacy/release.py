"""Training under the ledger: reserve the planned spend, train, commit what was actually spent.

The privacy budget belongs to the *source dataset* (its fingerprint), not to a split: re-splitting
with another seed must not open a fresh budget over the same records.

Failure semantics (what a reviewer needs to trust the ledger):
- refused reservation: nothing is trained, nothing is written, the ledger is unchanged;
- an exception before the first step: the reservation is released (no record was touched);
- an exception after k > 0 steps: the k steps are committed (they were spent: a checkpoint exists);
- a hard crash (killed process): the reservation stays ``reserved`` and counts against the budget;
  resuming from the run directory reuses it, so privacy is never charged twice for one release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safealign._atomic import atomic_write_text
from safealign.config import BudgetConfig, ModelConfig
from safealign.data.records import PairDataset
from safealign.models.scalar import Kind
from safealign.privacy.accounting import Mechanism
from safealign.privacy.calibration import calibrates_run
from safealign.privacy.dp_sgd import TrainingPlan, plan_training, privacy_units
from safealign.privacy.ledger import PrivacyLedger
from safealign.privacy.training import TrainResult, save_training_output, train_scoring_model

RESERVATION_FILE = "reservation.json"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class RecordedTraining:
    """A trained model, its receipt, and the ledger release it was charged to (None if non-private)."""

    result: TrainResult
    release_id: int | None
    receipt_path: Path


def budgeted_ledger(
    budget: BudgetConfig, *, dataset_fingerprint: str, dataset_name: str, accountant: str
) -> PrivacyLedger:
    """The ledger of ``budget.ledger`` with the source dataset's lifetime budget set (idempotent)."""
    ledger = PrivacyLedger(budget.ledger)
    ledger.set_budget(
        dataset_fingerprint,
        budget_epsilon=budget.epsilon,
        budget_delta=budget.delta,
        name=dataset_name,
        accountant=accountant,
    )
    return ledger


def _open_reservation(ledger: PrivacyLedger, out: Path, fingerprint: str) -> tuple[int, int] | None:
    """``(release id, first step it covers)`` of a still-reserved release left in ``out``, if any."""
    path = out / RESERVATION_FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("fingerprint") != fingerprint:
        return None
    for release in ledger.spent(fingerprint).releases:
        if release.id == saved["id"] and release.status == "reserved":
            return release.id, saved["from_step"]
    return None


def _checkpoint_step(out: Path) -> int:
    """Steps already taken by an interrupted run (its earlier spend is already in the ledger)."""
    path = out / CHECKPOINT_FILE
    if not path.exists():
        return 0
    from safealign.privacy.loop import checkpoint_step  # weights_only: a pickle runs no code

    return checkpoint_step(path)


def train_and_record(
    pairs: PairDataset,
    *,
    kind: Kind,
    config: ModelConfig,
    budget: BudgetConfig,
    dataset_fingerprint: str,
    dataset_name: str,
    seed: int,
    out_dir: str | Path,
    eval_pairs: PairDataset | None = None,
    progress: bool = True,
) -> RecordedTraining:
    """Reserve → train (resuming from ``out_dir`` if interrupted) → commit → write model + receipt.

    Raises:
        BudgetExceededError: the planned spend would exceed the dataset's budget (nothing written).
    """
    out = Path(out_dir)
    _, num_units = privacy_units(pairs, config.privacy.privacy_unit)
    plan = plan_training(num_units, config, calibration=calibrates_run(kind, pairs, config))
    if not plan.private:
        result = train_scoring_model(
            pairs, kind=kind, config=config, seed=seed, eval_pairs=eval_pairs, progress=progress
        )
        return RecordedTraining(result, None, save_training_output(result, out))
    ledger = budgeted_ledger(
        budget,
        dataset_fingerprint=dataset_fingerprint,
        dataset_name=dataset_name,
        accountant=config.privacy.accountant,
    )
    open_release = _open_reservation(ledger, out, dataset_fingerprint)
    if open_release is None:
        from_step = _checkpoint_step(out)
        remaining = Mechanism(plan.noise_multiplier, plan.sample_rate, plan.steps - from_step)
        reservation = ledger.reserve(
            dataset_fingerprint,
            remaining,
            label=f"{kind} model",
            accountant=config.privacy.accountant,
            run_info={"out_dir": str(out)},
        )
        open_release = (reservation.id, from_step)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out / RESERVATION_FILE,
            json.dumps(
                {"id": reservation.id, "fingerprint": dataset_fingerprint, "from_step": from_step}
            ),
        )
    result = _train_charged(
        ledger,
        open_release,
        pairs,
        plan,
        kind=kind,
        config=config,
        seed=seed,
        out=out,
        eval_pairs=eval_pairs,
        progress=progress,
    )
    release_id, from_step = open_release
    spent_here = Mechanism(
        plan.noise_multiplier, plan.sample_rate, result.receipt.steps - from_step
    )
    ledger.commit(
        release_id, mechanisms=spent_here, run_info={"receipt": str(out / "receipt.json")}
    )
    receipt_path = save_training_output(result, out)
    (out / RESERVATION_FILE).unlink(missing_ok=True)
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    return RecordedTraining(result, release_id, receipt_path)


def _train_charged(
    ledger,
    open_release,
    pairs,
    plan: TrainingPlan,
    *,
    kind,
    config,
    seed,
    out,
    eval_pairs,
    progress,
):
    release_id, from_step = open_release
    steps_done = [from_step]

    def count(step: int) -> None:
        steps_done[0] = step

    try:
        return train_scoring_model(
            pairs,
            kind=kind,
            config=config,
            seed=seed,
            eval_pairs=eval_pairs,
            plan=plan,
            checkpoint=out / CHECKPOINT_FILE,
            on_step=count,
            progress=progress,
        )
    except BaseException:
        taken = steps_done[0] - from_step
        if taken == 0:
            ledger.release(release_id)
        else:  # spent is spent: the checkpoint holds what those steps learnt
            ledger.commit(
                release_id,
                mechanisms=Mechanism(plan.noise_multiplier, plan.sample_rate, taken),
                run_info={"interrupted_at_step": steps_done[0]},
            )
        (out / RESERVATION_FILE).unlink(missing_ok=True)
        raise
