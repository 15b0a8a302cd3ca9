"""The privacy budget ledger: lifetime (ε, δ) budgets of *people*, in a SQLite file.

What identifies a budget. A budget is not a file's bytes: it is the set of privacy units it has
been spent on. The ledger stores, for each budget, keyed hashes (HMAC-SHA256 under the secret
key beside the ledger, :func:`~safealign.privacy.identity.ledger_key`) of every unit of every
dataset charged on it: each pair's normalised prompt and responses (in either order), with
user-level DP each normalised user id, the dataset's exact fingerprint and, when declared, its
``data.dataset_id``. A dataset is charged on **every** budget it shares at least one of these
with (:meth:`PrivacyLedger.register`), and its own units then join each of those budgets; only a
dataset that shares nothing opens a new budget. So dropping, padding, re-ordering, re-labelling
or re-spacing records, or re-casing text, leaves a dataset on its old budget(s). Without the
key, a stored hash tells nothing about the record (someone holding every record but one cannot
test a guess against it).

Every DP release goes through three states: ``reserved`` before training (the budget check
happens here, on each budget it is charged on), then ``committed`` with the mechanisms actually
run, or ``released`` (cancelled: nothing ran; only
:func:`safealign.privacy.release.charge` decides that). A crashed run stays ``reserved`` and keeps
counting. A budget's spend is all its reserved and committed mechanisms composed sequentially in
one accountant at the budget's δ, not a sum of per-release ε's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from safealign.data.records import PairDataset
from safealign.errors import BudgetExceededError, ConfigError, PrivacyError
from safealign.privacy import identity
from safealign.privacy.accounting import (
    AccountantName,
    Mechanism,
    compute_epsilon,
    naive_epsilon_sum,
)
from safealign.privacy.ledger_queries import (
    active_mechanisms,
    budget_row,
    insert_mechanisms,
    load_datasets,
    load_release,
    overspent,
)
from safealign.privacy.ledger_records import BudgetSummary, ReleaseRecord
from safealign.privacy.ledger_store import SCHEMA_VERSION, open_store

__all__ = ["SCHEMA_VERSION", "DatasetBudgets", "PrivacyLedger", "Reservation"]
STATUSES = ("reserved", "committed", "released")


@dataclass(frozen=True)
class DatasetBudgets:
    """A dataset as the ledger charges it (from :meth:`PrivacyLedger.register`).

    Attributes:
        dataset_key: Keyed hash of the dataset's exact fingerprint.
        budget_ids: Every budget it is charged on (those it overlaps, or one new one).
        num_units: Distinct unit hashes registered for it.
    """

    dataset_key: str
    budget_ids: tuple[int, ...]
    num_units: int


@dataclass(frozen=True)
class Reservation:
    """A granted reservation, charged on every budget in ``budget_ids``."""

    id: int
    budget_ids: tuple[int, ...]
    label: str
    mechanisms: tuple[Mechanism, ...]
    accountant: str
    planned_epsilon: float
    composed_epsilon: float


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _mechanisms(value: Mechanism | Sequence[Mechanism]) -> tuple[Mechanism, ...]:
    items = (value,) if isinstance(value, Mechanism) else tuple(value)
    if not items or not all(isinstance(m, Mechanism) for m in items):
        raise ConfigError(f"expected one or more Mechanism instances (got {value!r})")
    return items


def _json(run_info: dict[str, Any] | None) -> str:
    try:
        return json.dumps(run_info or {}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"run_info must be JSON-serialisable ({exc})") from exc


def _check_budget(budget_epsilon: float, budget_delta: float) -> tuple[float, float]:
    problems = []
    if not (isinstance(budget_epsilon, (int, float)) and 0 < budget_epsilon < math.inf):
        problems.append(f"budget_epsilon must be a finite number > 0 (got {budget_epsilon!r})")
    if not (isinstance(budget_delta, (int, float)) and 0 < budget_delta < 1):
        problems.append(f"budget_delta must be in (0, 1) (got {budget_delta!r})")
    if problems:
        raise ConfigError(problems, source="privacy budget")
    return float(budget_epsilon), float(budget_delta)


class PrivacyLedger:
    """Lifetime privacy budgets and their spend, in the SQLite file at ``path``.

    Constructing one opens the file and checks everything that could stop a later write
    (:func:`~safealign.privacy.ledger_store.open_store`): a run can open its ledger first and
    fail before spending anything. Safe to share between processes: every operation opens its
    own connection; every write runs in one ``BEGIN IMMEDIATE`` transaction (WAL mode,
    ``synchronous=FULL``), so it is atomic and durable, and a crash never leaves half a release.

    Args:
        path: The ledger file (created if missing); default
            :func:`~safealign.privacy.identity.default_ledger_path` (per user).
        busy_timeout_s: How long to wait for another process's write to finish.

    Raises:
        ConfigError: the path cannot hold a ledger (a directory, under a file, not writable).
        PrivacyError: the file is corrupt or truncated, locked too long, or another schema.
    """

    def __init__(self, path: str | Path | None = None, *, busy_timeout_s: float = 60.0) -> None:
        self._store = open_store(path or identity.default_ledger_path(), busy_timeout_s)
        self.path = self._store.path
        self.busy_timeout_s = busy_timeout_s

    @cached_property
    def key(self) -> bytes:
        """The secret beside the ledger that keys every stored hash (never shown)."""
        return identity.ledger_key(self.path)

    def digest(self, *parts: str) -> str:
        """A keyed hash of ``parts`` under this ledger's key (a commitment safe to store)."""
        return identity.keyed_digest(self.key, *parts)

    def register(
        self,
        pairs: PairDataset,
        *,
        privacy_unit: str,
        budget_epsilon: float,
        budget_delta: float,
        dataset_id: str | None = None,
        name: str | None = None,
    ) -> DatasetBudgets:
        """The budgets ``pairs`` is charged on; records its units on each of them.

        Rule: every budget that holds the dataset's exact fingerprint, its declared
        ``dataset_id``, or any of its unit hashes (:func:`identity.unit_keys`) is one it is
        charged on; if none does, a new budget of ``(budget_epsilon, budget_delta)`` is made.
        All of the dataset's hashes are then added to each, so a later dataset overlapping
        only this one's new units is charged on all of them too.

        Raises:
            ConfigError: invalid budget values.
            PrivacyError: an overlapping budget has other (ε, δ) (change it explicitly with
                :meth:`set_budget`; a lifetime budget is never raised by a config edit).
        """
        budget_epsilon, budget_delta = _check_budget(budget_epsilon, budget_delta)
        key = self.key
        dataset_key = identity.dataset_key(key, pairs.fingerprint)
        units = identity.unit_keys(key, pairs, privacy_unit) | {dataset_key}
        if dataset_id is not None:
            units.add(identity.declared_key(key, dataset_id))
        now = _now()
        with self._store.transaction() as conn:
            conn.execute("CREATE TEMP TABLE candidate (unit TEXT PRIMARY KEY) WITHOUT ROWID")
            conn.executemany("INSERT INTO candidate VALUES (?)", ((u,) for u in units))
            rows = conn.execute(
                "SELECT DISTINCT u.budget_id FROM candidate AS c JOIN units AS u "
                "ON u.unit = c.unit ORDER BY u.budget_id"
            ).fetchall()
            ids = tuple(row[0] for row in rows)
            for budget_id in ids:
                _same_budget(budget_row(conn, budget_id), budget_epsilon, budget_delta)
            if not ids:
                cursor = conn.execute(
                    "INSERT INTO budgets (name, budget_epsilon, budget_delta, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (name or dataset_id, budget_epsilon, budget_delta, now),
                )
                ids = (int(cursor.lastrowid),)
            for budget_id in ids:
                conn.execute(
                    "INSERT OR IGNORE INTO units SELECT unit, ? FROM candidate", (budget_id,)
                )
            conn.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
                "SET num_units = MAX(num_units, excluded.num_units), "
                "dataset_id = COALESCE(excluded.dataset_id, dataset_id)",
                (dataset_key, name, dataset_id, len(units), now, now),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO dataset_budgets VALUES (?, ?)",
                [(dataset_key, budget_id) for budget_id in ids],
            )
        return DatasetBudgets(dataset_key, ids, len(units))

    def set_budget(
        self,
        budget_id: int,
        *,
        budget_epsilon: float,
        budget_delta: float,
        accountant: AccountantName = "prv",
    ) -> None:
        """Change a budget on purpose; refused below what is already spent or reserved.

        Raises:
            BudgetExceededError: the new budget (composed at the new δ) is below the spend.
        """
        budget_epsilon, budget_delta = _check_budget(budget_epsilon, budget_delta)
        with self._store.transaction() as conn:
            budget_row(conn, budget_id)
            spent = compute_epsilon(
                active_mechanisms(conn, budget_id), target_delta=budget_delta, accountant=accountant
            )
            if spent.epsilon > budget_epsilon:
                raise BudgetExceededError(
                    f"budget #{budget_id}: new budget epsilon={budget_epsilon:g} is below the "
                    f"epsilon={spent.epsilon:.4f} already spent or reserved "
                    f"(at target_delta={budget_delta:g}, {spent.accountant} accountant)"
                )
            conn.execute(
                "UPDATE budgets SET budget_epsilon = ?, budget_delta = ? WHERE id = ?",
                (budget_epsilon, budget_delta, budget_id),
            )

    def reserve(
        self,
        budgets: DatasetBudgets,
        mechanisms: Mechanism | Sequence[Mechanism],
        *,
        label: str,
        accountant: AccountantName = "prv",
        run_info: dict[str, Any] | None = None,
    ) -> Reservation:
        """Reserve budget for a release on every budget of ``budgets``, or refuse it.

        In one ``BEGIN IMMEDIATE`` transaction, for each budget: compose its reserved and
        committed mechanisms plus the new ones in one accountant at its δ; if any would exceed
        its ε, roll back (the ledger is unchanged) and raise.

        Raises:
            BudgetExceededError: With the spent, requested and budget ε, if it does not fit.
        """
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"label must be a non-empty string (got {label!r})")
        planned, info = _mechanisms(mechanisms), _json(run_info)
        composed, alone, kind = 0.0, 0.0, accountant
        with self._store.transaction() as conn:
            fallback = None
            for budget_id in budgets.budget_ids:
                budget = budget_row(conn, budget_id)
                active = active_mechanisms(conn, budget_id)
                delta = budget["budget_delta"]
                total = compute_epsilon(active + planned, target_delta=delta, accountant=accountant)
                own = compute_epsilon(planned, target_delta=delta, accountant=accountant)
                if total.epsilon > budget["budget_epsilon"]:
                    raise _refusal(budget, label, own, active, total, accountant)
                composed, alone = max(composed, total.epsilon), max(alone, own.epsilon)
                kind, fallback = total.accountant, fallback or total.fallback_reason
            now = _now()
            cursor = conn.execute(
                "INSERT INTO releases (dataset_key, label, status, accountant, fallback_reason, "
                "planned_epsilon, composed_epsilon, created_at, updated_at, run_info) "
                "VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?, ?, ?)",
                (budgets.dataset_key, label, kind, fallback, alone, composed, now, now, info),
            )
            release_id = int(cursor.lastrowid)
            conn.execute(
                "UPDATE datasets SET last_seen = ? WHERE key = ?", (now, budgets.dataset_key)
            )
            conn.executemany(
                "INSERT INTO charges VALUES (?, ?)", [(b, release_id) for b in budgets.budget_ids]
            )
            insert_mechanisms(conn, release_id, "planned", planned)
        return Reservation(release_id, budgets.budget_ids, label, planned, kind, alone, composed)

    def commit(
        self,
        reservation_id: int,
        *,
        mechanisms: Mechanism | Sequence[Mechanism] | None = None,
        run_info: dict[str, Any] | None = None,
    ) -> ReleaseRecord:
        """Record that a reserved release happened, with the mechanisms actually run.

        ``mechanisms`` defaults to the planned ones. If the actual spend exceeds the planned one,
        the truth is still recorded (the data has been used) and then a PrivacyError is raised.
        """
        actual = None if mechanisms is None else _mechanisms(mechanisms)
        return self._finish(reservation_id, status="committed", actual=actual, run_info=run_info)

    def release(self, reservation_id: int) -> ReleaseRecord:
        """Cancel a reservation whose run never took a step; frees its budget (idempotent)."""
        return self._finish(reservation_id, status="released")

    def record(self, reservation_id: int) -> ReleaseRecord:
        """The current state of one release."""
        with self._store.transaction("DEFERRED") as conn:
            return load_release(conn, reservation_id)

    def _finish(self, reservation_id, *, status, actual=None, run_info=None) -> ReleaseRecord:
        extra = _json(run_info)
        with self._store.transaction() as conn:
            record = load_release(conn, reservation_id)
            if record.status != "reserved":
                if record.status == status == "released":
                    return record
                raise PrivacyError(
                    f"release {reservation_id} ({record.label!r}) is already {record.status}; "
                    f"cannot mark it {status}"
                )
            info = json.dumps({**record.run_info, **json.loads(extra)}, sort_keys=True)
            conn.execute(
                "UPDATE releases SET status = ?, updated_at = ?, run_info = ? WHERE id = ?",
                (status, _now(), info, reservation_id),
            )
            over = False
            if status == "committed":
                actual = actual or record.planned
                # The smallest δ among its budgets gives the largest ε: the conservative one.
                delta = min(budget_row(conn, b)["budget_delta"] for b in record.budget_ids)
                result = compute_epsilon(actual, target_delta=delta, accountant=record.accountant)
                conn.execute(
                    "UPDATE releases SET actual_epsilon = ? WHERE id = ?",
                    (result.epsilon, reservation_id),
                )
                insert_mechanisms(conn, reservation_id, "actual", actual)
                over = overspent(record.planned, actual, delta)
            record = load_release(conn, reservation_id)
        if over:
            raise PrivacyError(
                f"release {record.id} ({record.label!r}) spent more than it reserved "
                f"(actual {list(actual or ())} vs planned {list(record.planned)}); the actual "
                "spend has been recorded: check the budget with `safealign ledger show`"
            )
        return record

    def spent(self, budget_id: int, *, accountant: AccountantName = "prv") -> BudgetSummary:
        """The composed spend of one budget, with its releases and the datasets charged on it."""
        with self._store.transaction("DEFERRED") as conn:  # a read snapshot, no write lock
            budget = budget_row(conn, budget_id)
            ids = conn.execute(
                "SELECT release_id FROM charges WHERE budget_id = ? ORDER BY release_id",
                (budget_id,),
            ).fetchall()
            releases = tuple(load_release(conn, row[0]) for row in ids)
            datasets = load_datasets(conn, budget_id)
        # Accounting runs after the snapshot is closed: no lock is held while PRV computes.
        delta = budget["budget_delta"]
        counted = tuple(m for r in releases for m in r.counted)
        committed = tuple(m for r in releases if r.status == "committed" for m in r.counted)
        total = compute_epsilon(counted, target_delta=delta, accountant=accountant)
        committed_epsilon = total.epsilon
        if committed != counted:
            committed_epsilon = compute_epsilon(
                committed, target_delta=delta, accountant=accountant
            ).epsilon
        return BudgetSummary(
            budget_id=budget_id,
            name=budget["name"],
            budget_epsilon=budget["budget_epsilon"],
            budget_delta=delta,
            epsilon=total.epsilon,
            committed_epsilon=committed_epsilon,
            naive_epsilon=naive_epsilon_sum(counted, target_delta=delta, accountant=accountant),
            accountant=total.accountant,
            fallback_reason=total.fallback_reason,
            releases=releases,
            datasets=datasets,
        )

    def summary(self, *, accountant: AccountantName = "prv") -> tuple[BudgetSummary, ...]:
        """:meth:`spent` of every budget in the ledger, in creation order."""
        with self._store.transaction("DEFERRED") as conn:
            rows = conn.execute("SELECT id FROM budgets ORDER BY id").fetchall()
        return tuple(self.spent(row[0], accountant=accountant) for row in rows)

    def dataset_spend(
        self, fingerprint: str, *, accountant: AccountantName = "prv"
    ) -> BudgetSummary | None:
        """The most-spent budget a dataset (by exact fingerprint) is charged on; None if none."""
        key = identity.dataset_key(self.key, fingerprint)
        with self._store.transaction("DEFERRED") as conn:
            rows = conn.execute(
                "SELECT budget_id FROM dataset_budgets WHERE dataset_key = ?", (key,)
            ).fetchall()
        spends = [self.spent(row[0], accountant=accountant) for row in rows]
        return max(spends, key=lambda s: s.epsilon - s.budget_epsilon, default=None)


def _same_budget(row, budget_epsilon: float, budget_delta: float) -> None:
    if (row["budget_epsilon"], row["budget_delta"]) != (budget_epsilon, budget_delta):
        raise PrivacyError(
            f"this data shares privacy units with budget #{row['id']} ({row['name']!r}: "
            f"epsilon={row['budget_epsilon']:g}, delta={row['budget_delta']:g}), so it is "
            f"charged on that budget; the config asks for epsilon={budget_epsilon:g}, "
            f"delta={budget_delta:g}. Set budget.epsilon/budget.delta to the existing values "
            "(a lifetime budget is never changed by a config edit; see `safealign ledger show`)"
        )


def _refusal(budget, label, own, active, total, accountant) -> BudgetExceededError:
    delta = budget["budget_delta"]
    spent = compute_epsilon(active, target_delta=delta, accountant=accountant)
    return BudgetExceededError(
        f"budget #{budget['id']} ({budget['name']!r}): refusing {label!r}: it needs "
        f"epsilon={own.epsilon:.4f} alone; with the epsilon={spent.epsilon:.4f} already spent "
        f"or reserved on the same people, the composed epsilon would be {total.epsilon:.4f} > "
        f"budget epsilon={budget['budget_epsilon']:g} (target_delta={delta:g}, "
        f"{total.accountant} accountant). Raise noise_multiplier, or lower sample_rate or the "
        "number of steps."
    )
