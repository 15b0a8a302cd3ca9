"""What the privacy ledger reports: release records, per-dataset spend, and their text table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from safealign.privacy.accounting import Mechanism


@dataclass(frozen=True)
class ReleaseRecord:
    """One row of ``releases`` with its mechanisms.

    Attributes:
        planned: Mechanisms reserved. actual: mechanisms committed (``None`` until committed).
        planned_epsilon / actual_epsilon: ε of the release alone at the budget's δ.
        composed_epsilon: The composed ε including this release, at reservation time (the
            largest over the budgets it is charged on).
        dataset_key: Keyed hash of the charged dataset's fingerprint (meaningless without the
            ledger's key). budget_ids: The budgets it is charged on.
        run_info: Free-form JSON metadata (run id, config hash, ...), merged at commit.
    """

    id: int
    dataset_key: str
    label: str
    status: str
    accountant: str
    fallback_reason: str | None
    planned: tuple[Mechanism, ...]
    actual: tuple[Mechanism, ...] | None
    planned_epsilon: float
    actual_epsilon: float | None
    composed_epsilon: float
    created_at: str
    updated_at: str
    budget_ids: tuple[int, ...]
    run_info: dict[str, Any] = field(compare=False)

    @property
    def counted(self) -> tuple[Mechanism, ...]:
        """Mechanisms that count against the budget: actual if committed, planned if reserved."""
        if self.status == "committed":
            return self.actual or ()
        return self.planned if self.status == "reserved" else ()


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset charged on a budget, as ``ledger show`` lists it (never its hashes)."""

    name: str | None
    dataset_id: str | None
    num_units: int
    first_seen: str
    last_seen: str


@dataclass(frozen=True)
class BudgetSummary:
    """The spend of one budget. ``epsilon`` composes committed *and* reserved releases.

    ``datasets`` are the datasets charged on it: every dataset sharing a privacy unit, the
    exact fingerprint or the declared ``dataset_id`` with one charged before.
    """

    budget_id: int
    name: str | None
    budget_epsilon: float
    budget_delta: float
    epsilon: float
    committed_epsilon: float
    naive_epsilon: float
    accountant: str
    fallback_reason: str | None
    releases: tuple[ReleaseRecord, ...]
    datasets: tuple[DatasetRecord, ...] = ()

    @property
    def remaining_epsilon(self) -> float:
        """Budget ε minus composed ε (indicative: ε's do not add under composition)."""
        return self.budget_epsilon - self.epsilon


def _describe(mechanisms: Sequence[Mechanism]) -> list[str]:
    return [f"{m.noise_multiplier:<8.4g} {m.sample_rate:<9.4g} {m.steps:>7d}" for m in mechanisms]


def _format_dataset(spend: BudgetSummary) -> list[str]:
    title = f"budget #{spend.budget_id}" + (f" ({spend.name})" if spend.name else "")
    lines = [
        title,
        f"  budget    epsilon={spend.budget_epsilon:g} at target_delta={spend.budget_delta:g}",
        f"  spent     epsilon={spend.epsilon:.4f} composed ({spend.accountant} accountant; "
        f"committed only: {spend.committed_epsilon:.4f}; naive sum: {spend.naive_epsilon:.4f})",
        f"  remaining epsilon={spend.remaining_epsilon:.4f}",
    ]
    if spend.fallback_reason:
        lines.append(f"  note      fell back to RDP: {spend.fallback_reason}")
    for d in spend.datasets:
        declared = f", dataset_id {d.dataset_id!r}" if d.dataset_id else ""
        lines.append(
            f"  dataset   {d.name or '(unnamed)'}{declared}: {d.num_units} unit hashes, "
            f"last charged {d.last_seen[:19]}"
        )
    if not spend.releases:
        return [*lines, "  (no releases)"]
    lines.append(
        f"  {'id':>4}  {'label':<20} {'status':<10} {'sigma':<8} {'q':<9} {'steps':>7} "
        f"{'epsilon':>8}  updated"
    )
    for r in spend.releases:
        shown = r.counted or r.planned
        epsilon = r.actual_epsilon if r.status == "committed" else r.planned_epsilon
        rows = _describe(shown)
        lines.append(
            f"  {r.id:>4}  {r.label[:20]:<20} {r.status:<10} {rows[0]} {epsilon:>8.4f}  "
            f"{r.updated_at[:19]}"
        )
        lines.extend(f"  {'':>4}  {'':<20} {'':<10} {row}" for row in rows[1:])
    return lines


def format_ledger(summary: BudgetSummary | Sequence[BudgetSummary]) -> str:
    """A plain-text table of budgets, their datasets, composed spend and releases
    (``safealign ledger show``).

    A budget is identified by its privacy units (module doc of :mod:`.ledger`); every dataset
    sharing a unit with it is listed under it. The epsilon of each release is its ε alone at the
    budget's δ; the budget's spend is the composition of all reserved and committed releases,
    which is less than their sum.
    """
    spends = (summary,) if isinstance(summary, BudgetSummary) else tuple(summary)
    if not spends:
        return "privacy ledger: no budgets set\n"
    blocks = ["\n".join(_format_dataset(spend)) for spend in spends]
    legend = (
        "status: reserved = granted, not finished (a crashed run stays reserved and counts); "
        "committed = spent; released = cancelled, not counted"
    )
    return "\n\n".join([*blocks, legend]) + "\n"
