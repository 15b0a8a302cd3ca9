"""The ledger's SQLite file: its schema, and opening it with every fault found up front.

:func:`open_store` is what :class:`~safealign.privacy.ledger.PrivacyLedger` calls on
construction, so a run's pre-flight that opens the ledger learns, before anything is spent,
whether it can be used: a path that is a directory or lies under a regular file, a directory
that cannot be written (SQLite keeps its WAL journal beside the ledger), a file that is not a
ledger (corrupt, truncated), one locked by another process past the busy timeout, or one of
an unknown schema version (version 1 is migrated in place, :func:`_migrate_v1`). Each is a :class:`ConfigError` or :class:`PrivacyError` naming the
path and what to do; no sqlite3 exception escapes the ledger.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safealign.errors import ConfigError, PrivacyError
from safealign.privacy.identity import dataset_key, ledger_key

# 2: budgets keyed by privacy units (keyed hashes) instead of one dataset fingerprint.
SCHEMA_VERSION = 2
_SQLITE_HEADER = b"SQLite format 3\x00"
# In WITHOUT ROWID tables the columns are declared in primary-key order: SQLite 3.40's
# quick_check misreports NOT NULL columns of such a table declared in another order.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT,
    budget_epsilon REAL NOT NULL CHECK (budget_epsilon > 0),
    budget_delta REAL NOT NULL CHECK (budget_delta > 0 AND budget_delta < 1),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    unit TEXT NOT NULL,
    budget_id INTEGER NOT NULL REFERENCES budgets (id),
    PRIMARY KEY (unit, budget_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS datasets (
    key TEXT PRIMARY KEY,
    name TEXT,
    dataset_id TEXT,
    num_units INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_budgets (
    dataset_key TEXT NOT NULL REFERENCES datasets (key),
    budget_id INTEGER NOT NULL REFERENCES budgets (id),
    PRIMARY KEY (dataset_key, budget_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset_key TEXT NOT NULL REFERENCES datasets (key),
    label TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'committed', 'released')),
    accountant TEXT NOT NULL,
    fallback_reason TEXT,
    planned_epsilon REAL NOT NULL,
    actual_epsilon REAL,
    composed_epsilon REAL NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    run_info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    budget_id INTEGER NOT NULL REFERENCES budgets (id),
    release_id INTEGER NOT NULL REFERENCES releases (id),
    PRIMARY KEY (budget_id, release_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mechanisms (
    release_id INTEGER NOT NULL REFERENCES releases (id),
    phase TEXT NOT NULL CHECK (phase IN ('planned', 'actual')),
    position INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    PRIMARY KEY (release_id, phase, position)
);
CREATE INDEX IF NOT EXISTS charges_by_release ON charges (release_id);
"""


def _checked_path(path: Path) -> Path:
    """``path`` if a ledger can live there (its folder created if missing), else ConfigError."""
    fix = "set budget.ledger to a file path in a writable directory"
    if path.is_dir():
        raise ConfigError(f"budget.ledger: {path} is a directory, not a ledger file; {fix}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"budget.ledger: {path} lies under {parent}, which is a regular file; {fix}"
                )
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite writes its WAL and shared-memory files beside the ledger: probe the directory.
        with tempfile.TemporaryFile(dir=path.parent, prefix=".safealign-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"budget.ledger: cannot write in {path.parent} ({exc.strerror or exc}); the ledger "
            f"and its journal must be writable; {fix}"
        ) from None
    if path.exists() and path.stat().st_size:
        try:
            with path.open("rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except OSError as exc:
            raise ConfigError(f"budget.ledger: cannot read {path} ({exc.strerror})") from None
        if header != _SQLITE_HEADER:
            raise PrivacyError(_corrupt(path, "it does not start with the SQLite header"))
    return path


def _corrupt(path: Path, why: str) -> str:
    return (
        f"{path}: not a readable privacy ledger ({why}). Do not delete it: restore it from a "
        "backup (deleting it would forget every budget spent), or, if it was never a ledger, "
        "point budget.ledger elsewhere"
    )


def translate(path: Path, exc: sqlite3.Error, busy_timeout_s: float) -> ConfigError | PrivacyError:
    """The ledger error a sqlite3 error means, naming ``path`` and what to do."""
    text = str(exc)
    if "database is locked" in text or "busy" in text:
        return PrivacyError(
            f"{path}: the ledger stayed locked by another process for more than "
            f"{busy_timeout_s:g} s (another run is reserving or committing). Retry when it "
            "has finished; if none is running, a crashed process may hold the lock: check "
            f"with `fuser {path}`"
        )
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return ConfigError(
            f"budget.ledger: {path} cannot be opened for writing ({text}); the ledger, its "
            "directory and its -wal/-shm files must be writable by this user"
        )
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return PrivacyError(_corrupt(path, text))
    return PrivacyError(f"{path}: ledger error ({text})")


class Store:
    """Connections to one ledger file (each operation opens its own: safe across processes)."""

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self.path, self.busy_timeout_s = path, busy_timeout_s

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; ``timeout`` is the busy timeout.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextmanager
    def transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction; sqlite3 errors come out as ledger errors naming the file.

        BEGIN IMMEDIATE takes the write lock *before* reading the current spend. With a deferred
        BEGIN, two processes could both read "budget left", both decide the new release fits,
        and both write: together they would exceed the budget. Holding the lock across
        read-check-write serialises reservations (others wait up to ``busy_timeout_s``).
        """
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise translate(self.path, exc, self.busy_timeout_s) from None
        try:
            conn.execute(f"BEGIN {mode}")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise translate(self.path, exc, self.busy_timeout_s) from None
        finally:
            conn.close()


def open_store(path: str | Path, busy_timeout_s: float) -> Store:
    """Check ``path`` and open (or create) the ledger there; every fault is found here.

    Raises:
        ConfigError: the path is a directory, lies under a regular file, or its directory (or
            the file) cannot be written.
        PrivacyError: the file is not a ledger (corrupt, truncated), it is locked past
            ``busy_timeout_s``, or its schema is not this version's.
    """
    store = Store(_checked_path(Path(path)), busy_timeout_s)
    try:
        conn = store._connect()
        try:
            # WAL lets readers (``ledger show``) run while a writer holds the lock.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise translate(store.path, exc, busy_timeout_s) from None
    if problems != ["ok"]:
        raise PrivacyError(_corrupt(store.path, "; ".join(problems[:3])))
    if str(mode).lower() != "wal":
        raise PrivacyError(f"{store.path}: cannot use WAL journal mode (got {mode!r})")
    with store.transaction() as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        tables = tables.fetchone()[0]
        if version not in (1, SCHEMA_VERSION) and (version or tables):
            raise PrivacyError(_version_problem(store.path, version))
        if version == 1:
            conn.execute("ALTER TABLE datasets RENAME TO v1_datasets")
            conn.execute("ALTER TABLE releases RENAME TO v1_releases")
            conn.execute("ALTER TABLE mechanisms RENAME TO v1_mechanisms")
            conn.execute("DROP INDEX IF EXISTS releases_by_dataset")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if version == 1:
            _migrate_v1(conn, ledger_key(store.path))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return store


def _version_problem(path: Path, version: int) -> str:
    if version > SCHEMA_VERSION:
        return (
            f"{path}: ledger schema version {version} is newer than this safealign supports "
            f"({SCHEMA_VERSION}); upgrade safealign"
        )
    return f"{path}: unknown ledger schema version {version} (this safealign reads 1 and 2)"


def _migrate_v1(conn: sqlite3.Connection, key: bytes) -> None:
    """Version 1 (one budget per exact dataset fingerprint) → 2, in the open transaction.

    Each old budget becomes a budget whose one known unit is the keyed hash of that exact
    fingerprint (the key :func:`identity.dataset_key` gives), with its releases and mechanisms
    unchanged. The first run on the same data finds it through that hash and adds its privacy
    units, from then on edits of that data are recognised too. (Refusing old ledgers would push
    users to a fresh file: a reset of every budget in it.)
    """
    for old in conn.execute("SELECT * FROM v1_datasets ORDER BY fingerprint").fetchall():
        unit = dataset_key(key, old["fingerprint"])
        cursor = conn.execute(
            "INSERT INTO budgets (name, budget_epsilon, budget_delta, created_at) "
            "VALUES (?, ?, ?, ?)",
            (old["name"], old["budget_epsilon"], old["budget_delta"], old["created_at"]),
        )
        budget_id = int(cursor.lastrowid)
        conn.execute("INSERT INTO units VALUES (?, ?)", (unit, budget_id))
        conn.execute(
            "INSERT INTO datasets VALUES (?, ?, NULL, 1, ?, ?)",
            (unit, old["name"], old["created_at"], old["created_at"]),
        )
        conn.execute("INSERT INTO dataset_budgets VALUES (?, ?)", (unit, budget_id))
        conn.execute(
            "INSERT INTO releases SELECT id, ?, label, status, accountant, fallback_reason, "
            "planned_epsilon, actual_epsilon, composed_epsilon, created_at, updated_at, run_info "
            "FROM v1_releases WHERE fingerprint = ?",
            (unit, old["fingerprint"]),
        )
        conn.execute(
            "INSERT INTO charges SELECT ?, id FROM v1_releases WHERE fingerprint = ?",
            (budget_id, old["fingerprint"]),
        )
    conn.execute("INSERT INTO mechanisms SELECT * FROM v1_mechanisms")
    for table in ("v1_mechanisms", "v1_releases", "v1_datasets"):
        conn.execute(f"DROP TABLE {table}")
