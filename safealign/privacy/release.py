"""Charging the ledger: the one way every DP release reserves, runs and commits its spend.

:func:`budget_target` finds the budgets a source dataset is charged on (every budget it shares a
privacy unit or declared id with, :meth:`PrivacyLedger.register`) and refuses a δ not below 1/n;
:func:`charge` runs one release against them. The budget belongs to the *source dataset's
people*, not to a split or a file: re-splitting, editing or padding the data lands on the same
budget(s).

Failure policy of :func:`charge` (what a reviewer needs to trust the ledger):

- refused reservation, or a plan/data mismatch with an interrupted run left in the run
  directory: nothing is trained, the ledger is unchanged (an interrupted run's reservation is
  never touched by a retry that does not match it);
- an exception before this call's first step, on a reservation made by this call: released
  (a step that raised midway left nothing behind: no checkpoint, no model);
- an exception after steps were taken: the steps taken are committed (a checkpoint holds what
  they learnt), or the whole plan when the caller does not report steps;
- a hard crash (killed process): the reservation stays ``reserved`` and counts in full. A
  resumed run with the same plan and data reuses it; a failed resume never releases it (the
  killed run may have taken steps its checkpoint does not show);
- resuming after a partial commit reserves only the steps left, so one run is charged once;
- the plan's last steps may be ones no checkpoint records (a cost model's calibration,
  ``Resume.unrecorded_steps``): a run interrupted in them was charged through the end of the
  plan and wrote nothing, so its resume re-runs them on that charge. A run that committed and
  then crashed (it may have written its output) is charged for a re-run, a new release.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safealign._atomic import atomic_write_text
from safealign.config import BudgetConfig, ModelConfig
from safealign.data.records import PairDataset
from safealign.errors import ConfigError, PrivacyError
from safealign.models.scalar import Kind
from safealign.privacy.accounting import AccountantName, Mechanism
from safealign.privacy.calibration import calibrates_run
from safealign.privacy.dp_sgd import privacy_units
from safealign.privacy.ledger import DatasetBudgets, PrivacyLedger
from safealign.privacy.loop import checkpoint_step
from safealign.privacy.plan import plan_training
from safealign.privacy.training import (
    TrainResult,
    ledger_commitment_key,
    save_training_output,
    train_scoring_model,
)

LEGACY_LEDGER = "safealign-ledger.sqlite"  # the old default, in the working directory


def open_ledger(budget: BudgetConfig) -> PrivacyLedger:
    """The ledger of ``budget.ledger`` (default: the per-user one), opened and checked.

    Raises:
        ConfigError: the default is asked for while the working directory holds a ledger of
            the old default location (its spend would be forgotten), or see below.
        ConfigError, PrivacyError: the ledger cannot be used (see :class:`PrivacyLedger`).
    """
    if budget.ledger is None and Path(LEGACY_LEDGER).is_file():
        raise ConfigError(
            f"budget.ledger: the working directory holds {LEGACY_LEDGER}, a ledger of an earlier "
            "safealign (its default location); the default is now the per-user ledger, which "
            f"does not know what that file has spent. Set budget.ledger={LEGACY_LEDGER} to keep "
            "charging it (it is migrated when opened), or move it out of this directory once its "
            "budgets are accounted for"
        )
    return PrivacyLedger(budget.ledger)


def check_delta(delta: float, num_units: int, *, key: str) -> None:
    """Refuse δ >= 1/n: such a δ allows publishing one of the n units outright.

    (ε, δ)-DP with δ = 1/n is met by releasing one random record in the clear, so the
    guarantee means nothing; the usual rule is δ well below 1/n.

    Raises:
        ConfigError: naming ``key``, the value, n and a value that would do.
    """
    if num_units > 0 and delta * num_units >= 1:
        raise ConfigError(
            f"{key}: {delta:g} is not below 1/n = {1 / num_units:.3g} for the {num_units} "
            f"privacy units charged; at delta >= 1/n a mechanism may publish one person's "
            f"record in the clear. Set {key} below {1 / num_units:.3g} (e.g. "
            f"{10 ** -(len(str(num_units)) + 1):g})"
        )


@dataclass(frozen=True)
class ChargeTarget:
    """The ledger and the budgets one source dataset is charged on."""

    ledger: PrivacyLedger
    budgets: DatasetBudgets
    num_units: int


def budget_target(
    budget: BudgetConfig,
    source: PairDataset,
    *,
    privacy_unit: str,
    dataset_id: str | None,
    target_deltas: Sequence[tuple[str, float]] = (),
) -> ChargeTarget:
    """Open the ledger, check δ < 1/n, and register ``source`` on its budget(s).

    Args:
        budget: ``budget.*`` of the config.
        source: The whole source dataset (the people the budget protects).
        privacy_unit: ``pair`` or ``user``: what n counts, and whether user ids are hashed.
        dataset_id: The declared ``data.dataset_id``, if any.
        target_deltas: ``(config key, target_delta)`` of each release to be charged.

    Raises:
        ConfigError: δ not below 1/n, or the ledger path cannot hold a ledger.
        PrivacyError: an unusable ledger, or an overlapping budget with other (ε, δ).
    """
    _, num_units = privacy_units(source, privacy_unit)
    for key, delta in (("budget.delta", budget.delta), *target_deltas):
        check_delta(delta, num_units, key=key)
    ledger = open_ledger(budget)
    budgets = ledger.register(
        source,
        privacy_unit=privacy_unit,
        budget_epsilon=budget.epsilon,
        budget_delta=budget.delta,
        dataset_id=dataset_id,
        name=source.name,
    )
    return ChargeTarget(ledger, budgets, num_units)


@dataclass(frozen=True)
class Resume:
    """A resumable run's state: ``path`` records its reservation beside its checkpoint.

    Attributes:
        path: The state file (``reservation.json`` in the run directory).
        binding: What the run is (plan, keyed data digest, kind): a saved state with another
            binding belongs to another run and is never reused or released.
        checkpoint: The run's checkpoint, whose step count is what has been spent.
        unrecorded_steps: The plan's last steps, which no checkpoint records (a cost model's
            calibration, run after the last checkpointed step and lost if interrupted).
    """

    path: Path
    binding: dict[str, Any]
    checkpoint: Path
    unrecorded_steps: int = 0

    @property
    def done_steps(self) -> int:
        """Steps in the checkpoint *now* (0 without one): read again at each decision, since
        the checkpoint of a step is written before anyone is told the step was taken."""
        if not self.checkpoint.exists():
            return 0
        return checkpoint_step(self.checkpoint)  # weights_only: a pickle runs no code


@dataclass
class Charge:
    """A reservation being run (yielded by :func:`charge`); report steps and the actual spend."""

    release_id: int | None
    from_step: int
    inherited: bool
    last_step: int | None = None
    actual: tuple[Mechanism, ...] | None = field(default=None, repr=False)

    def step(self, step: int) -> None:
        """Steps completed so far, counted from the plan's start (not from ``from_step``)."""
        self.last_step = step

    def spend(self, mechanisms: Mechanism | Sequence[Mechanism]) -> None:
        """The mechanisms actually run (default: the planned ones)."""
        self.actual = (mechanisms,) if isinstance(mechanisms, Mechanism) else tuple(mechanisms)


@contextmanager
def charge(
    target: ChargeTarget,
    mechanisms: Mechanism | Sequence[Mechanism],
    *,
    label: str,
    accountant: AccountantName,
    resume: Resume | None = None,
    counts_steps: bool = False,
    run_info: dict[str, Any] | None = None,
) -> Iterator[Charge]:
    """Reserve ``mechanisms`` on every budget of ``target``, run the block, commit its spend.

    The failure policy is the module's. With ``counts_steps`` the block reports completed
    steps through :meth:`Charge.step` and ``mechanisms`` is one mechanism whose steps are
    counted from ``Charge.from_step``; without it any exception commits the whole plan.

    Raises:
        BudgetExceededError: the reservation does not fit (nothing runs, nothing changes).
        ConfigError: ``resume`` holds an interrupted run of another plan or other data.
    """
    planned = (mechanisms,) if isinstance(mechanisms, Mechanism) else tuple(mechanisms)
    ledger = target.ledger
    state = _begin(target, planned, label, accountant, resume, run_info)
    try:
        yield state
    except BaseException:
        _on_failure(ledger, state, planned[0], counts_steps, resume)
        raise
    if state.release_id is not None:
        ledger.commit(state.release_id, mechanisms=state.actual)


def _begin(target, planned, label, accountant, resume, run_info) -> Charge:
    ledger = target.ledger
    saved = _saved_state(resume)
    from_step = resume.done_steps if resume else 0
    record = None if saved is None else ledger.record(saved["id"])
    if record is not None and record.status == "reserved":
        # A killed run's reservation, for this very plan and data: it already covers the rest.
        return Charge(saved["id"], saved["from_step"], inherited=True)
    first = planned[0]
    if record is not None and _paid_unrecorded(record, resume, first, label, run_info):
        from_step = first.steps  # the unrecorded steps again, on the interrupted run's charge
    if resume is not None and from_step >= first.steps:  # only a crash after commit: no steps
        return Charge(None, from_step, inherited=False)
    if from_step:
        planned = (Mechanism(first.noise_multiplier, first.sample_rate, first.steps - from_step),)
    reservation = ledger.reserve(
        target.budgets, planned, label=label, accountant=accountant, run_info=run_info
    )
    if resume is not None:
        _write_state(resume, reservation.id, from_step)
    return Charge(reservation.id, from_step, inherited=False)


def _paid_unrecorded(record, resume: Resume, plan: Mechanism, label: str, run_info) -> bool:
    """Whether ``record``, the saved release of this run, already paid for the steps a resume
    from ``resume``'s checkpoint would run: only the unrecorded ones are left, and ``record``
    was committed by an interruption (the block raised: nothing was written) charged through
    the end of the plan, as this run's release (same label and directory)."""
    left = plan.steps - resume.done_steps
    interrupted_at = record.run_info.get("interrupted_at_step")
    return (
        0 < left <= resume.unrecorded_steps
        and record.status == "committed"
        and record.label == label
        and record.run_info.get("out_dir") == (run_info or {}).get("out_dir")
        and isinstance(interrupted_at, int)
        and interrupted_at >= plan.steps
    )


def _on_failure(ledger, state: Charge, plan: Mechanism, counts_steps: bool, resume) -> None:
    if state.release_id is None:
        return
    if not counts_steps:  # we cannot tell whether data was touched: charge the whole plan
        ledger.commit(state.release_id, run_info={"failed": True})
        return
    done = max(state.last_step or 0, resume.done_steps if resume else 0)
    taken = done - state.from_step
    if taken > 0:  # spent is spent: the checkpoint holds what those steps learnt
        ledger.commit(
            state.release_id,
            mechanisms=Mechanism(plan.noise_multiplier, plan.sample_rate, taken),
            run_info={"interrupted_at_step": done},
        )
    elif not state.inherited:  # made here, and no step ran: nothing to charge
        ledger.release(state.release_id)
    # An inherited reservation with no step known stays reserved: the killed run may have
    # taken a step after its last checkpoint, and the next resume reuses it.


def _saved_state(resume: Resume | None) -> dict[str, Any] | None:
    """The saved state of an interrupted run, checked against this one (None: fresh run)."""
    if resume is None:
        return None
    if not resume.path.exists():
        if resume.done_steps:
            raise PrivacyError(
                f"{resume.path.parent}: holds a checkpoint at step {resume.done_steps} but no "
                f"{resume.path.name}, so nothing says which plan, data and reservation it "
                "belongs to; delete the checkpoint or use a fresh --out directory"
            )
        return None
    try:
        saved = json.loads(resume.path.read_text())
        binding, ident, from_step = saved["binding"], int(saved["id"]), int(saved["from_step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrivacyError(f"{resume.path}: unreadable run state ({exc})") from None
    if binding != resume.binding:
        changed = sorted(
            k for k in {*binding, *resume.binding} if binding.get(k) != resume.binding.get(k)
        )
        raise ConfigError(
            f"{resume.path.parent} holds an interrupted run (ledger release #{ident}) made with "
            f"another {' and '.join(changed)}; it is left as it is (its spend stays charged). "
            "Re-run with the same data and config to resume it, or use a fresh --out directory"
        )
    return {"id": ident, "from_step": from_step}


def _write_state(resume: Resume, release_id: int, from_step: int) -> None:
    resume.path.parent.mkdir(parents=True, exist_ok=True)
    state = {"id": release_id, "from_step": from_step, "binding": resume.binding}
    atomic_write_text(resume.path, json.dumps(state, sort_keys=True) + "\n")


RESERVATION_FILE = "reservation.json"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class RecordedTraining:
    """A trained model, its receipt, and the ledger release it was charged to (None if non-private)."""

    result: TrainResult
    release_id: int | None
    receipt_path: Path


def train_on_budget(
    pairs: PairDataset,
    *,
    kind: Kind,
    config: ModelConfig,
    budget: BudgetConfig,
    source: PairDataset,
    dataset_id: str | None = None,
    seed: int,
    out_dir: str | Path,
    eval_pairs: PairDataset | None = None,
    progress: bool = True,
) -> RecordedTraining:
    """Charge → train (resuming from ``out_dir`` if interrupted) → write model + receipt.

    Args:
        pairs: The training split.
        source: The whole source dataset, whose people the budget protects.
        dataset_id: The declared ``data.dataset_id``.

    Raises:
        BudgetExceededError: the planned spend would exceed a budget (nothing written).
        ConfigError: δ not below 1/n, or ``out_dir`` holds an interrupted run of another plan
            or other data (left untouched).
    """
    out = Path(out_dir)
    unit = config.privacy.privacy_unit
    _, num_units = privacy_units(pairs, unit)
    plan = plan_training(num_units, config, calibration=calibrates_run(kind, pairs, config))
    if not plan.private:
        result = train_scoring_model(
            pairs, kind=kind, config=config, seed=seed, eval_pairs=eval_pairs,
            commitment_key=ledger_commitment_key(budget.ledger), progress=progress,
        )  # fmt: skip
        return RecordedTraining(result, None, save_training_output(result, out))
    target = budget_target(
        budget, source, privacy_unit=unit, dataset_id=dataset_id,
        target_deltas=[(f"{kind}_model.privacy.target_delta", config.privacy.target_delta)],
    )  # fmt: skip
    binding = {
        "kind": kind,
        "plan": asdict(plan),
        "data": target.ledger.digest("training data", pairs.fingerprint),
    }
    # The calibration runs after the last checkpointed step: a resume runs it again.
    resume = Resume(out / RESERVATION_FILE, binding, out / CHECKPOINT_FILE, plan.calibration_steps)
    # Once training ends the calibration may have started: count its steps as taken.
    training_steps = plan.steps - plan.calibration_steps
    with charge(
        target, plan.mechanism, label=f"{kind} model", accountant=config.privacy.accountant,
        resume=resume, counts_steps=True, run_info={"out_dir": str(out)},
    ) as run:  # fmt: skip
        result = train_scoring_model(
            pairs, kind=kind, config=config, seed=seed, eval_pairs=eval_pairs, plan=plan,
            checkpoint=out / CHECKPOINT_FILE, progress=progress,
            commitment_key=target.ledger.key,
            on_step=lambda step: run.step(plan.steps if step >= training_steps else step),
        )  # fmt: skip
        spent = result.receipt.steps - run.from_step
        if spent:
            run.spend(Mechanism(plan.noise_multiplier, plan.sample_rate, spent))
    receipt_path = save_training_output(result, out)
    (out / RESERVATION_FILE).unlink(missing_ok=True)
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    return RecordedTraining(result, run.release_id, receipt_path)
