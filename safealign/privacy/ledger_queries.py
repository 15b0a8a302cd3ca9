"""Reads of the ledger's tables inside an open transaction (used by :mod:`.ledger`)."""

from __future__ import annotations

import json
import sqlite3

from safealign.errors import PrivacyError
from safealign.privacy.accounting import Mechanism, compute_epsilon
from safealign.privacy.ledger_records import DatasetRecord, ReleaseRecord


def budget_row(conn: sqlite3.Connection, budget_id: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM budgets WHERE id = ?", (budget_id,)).fetchone()
    if row is None:
        raise PrivacyError(f"no privacy budget #{budget_id!r} in the ledger")
    return row


def active_mechanisms(conn: sqlite3.Connection, budget_id: int) -> tuple[Mechanism, ...]:
    """Mechanisms counting against a budget: planned of reserved, actual of committed."""
    rows = conn.execute(
        "SELECT m.noise_multiplier, m.sample_rate, m.steps FROM charges AS c "
        "JOIN releases AS r ON r.id = c.release_id JOIN mechanisms AS m ON m.release_id = r.id "
        "WHERE c.budget_id = ? AND ((r.status = 'reserved' AND m.phase = 'planned') OR "
        "(r.status = 'committed' AND m.phase = 'actual')) ORDER BY m.release_id, m.position",
        (budget_id,),
    ).fetchall()
    return tuple(Mechanism(*row) for row in rows)


def insert_mechanisms(
    conn: sqlite3.Connection, release_id: int, phase: str, mechanisms: tuple[Mechanism, ...]
) -> None:
    conn.executemany(
        "INSERT INTO mechanisms VALUES (?, ?, ?, ?, ?, ?)",
        [
            (release_id, phase, i, m.noise_multiplier, m.sample_rate, m.steps)
            for i, m in enumerate(mechanisms)
        ],
    )


def load_release(conn: sqlite3.Connection, release_id: int) -> ReleaseRecord:
    row = conn.execute("SELECT * FROM releases WHERE id = ?", (release_id,)).fetchone()
    if row is None:
        raise PrivacyError(f"no release with id {release_id!r} in the ledger")
    phases: dict[str, list[Mechanism]] = {"planned": [], "actual": []}
    for m in conn.execute(
        "SELECT * FROM mechanisms WHERE release_id = ? ORDER BY phase, position", (release_id,)
    ):
        phases[m["phase"]].append(Mechanism(m["noise_multiplier"], m["sample_rate"], m["steps"]))
    budgets = conn.execute(
        "SELECT budget_id FROM charges WHERE release_id = ? ORDER BY budget_id", (release_id,)
    ).fetchall()
    columns = {key: row[key] for key in row.keys() if key != "run_info"}  # noqa: SIM118
    return ReleaseRecord(
        **columns,
        budget_ids=tuple(b[0] for b in budgets),
        planned=tuple(phases["planned"]),
        actual=tuple(phases["actual"]) if row["status"] == "committed" else None,
        run_info=json.loads(row["run_info"]),
    )


def load_datasets(conn: sqlite3.Connection, budget_id: int) -> tuple[DatasetRecord, ...]:
    """The datasets charged on a budget (names and declared ids; never their keys)."""
    rows = conn.execute(
        "SELECT d.name, d.dataset_id, d.num_units, d.first_seen, d.last_seen FROM datasets AS d "
        "JOIN dataset_budgets AS b ON b.dataset_key = d.key WHERE b.budget_id = ? "
        "ORDER BY d.first_seen",
        (budget_id,),
    ).fetchall()
    return tuple(DatasetRecord(*row) for row in rows)


def overspent(
    planned: tuple[Mechanism, ...], actual: tuple[Mechanism, ...], target_delta: float
) -> bool:
    # Compared with RDP, whose ε is exactly monotone in steps, σ and q; PRV's discretisation
    # error (eps_error=0.01) could flag an early stop of a few steps as an overspend.
    planned_epsilon = compute_epsilon(planned, target_delta=target_delta, accountant="rdp")
    actual_epsilon = compute_epsilon(actual, target_delta=target_delta, accountant="rdp")
    return actual_epsilon.epsilon > planned_epsilon.epsilon * (1 + 1e-9)
