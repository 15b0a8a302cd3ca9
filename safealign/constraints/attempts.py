"""The certification log: one safety test per safety set, unless more were declared up front.

HC-RLHF's promise, P(release a policy whose cost exceeds tau) <= delta, holds for ONE test on the
safety prompts. Re-aligning with other settings and testing again on the same prompts is retest
shopping: each retest is another draw at delta, so a policy that should never pass eventually
does (measured on main before this log: Clopper-Pearson's false pass rate 6.25% -> 17% within 5
retries). So every test is written to a log *before* it runs, keyed by the safety set's identity,
and a test beyond the declared number is refused.

* The safety set's identity is a keyed digest (the ledger's secret, :func:`ledger_key`) of its
  sorted, distinct :func:`normalise_text` prompts: a re-ordered, re-cased or re-spaced copy of the
  same prompts (a ``--responses`` file included) is the same set.
* ``safety.attempts: N`` declares N tests up front; each then runs at confidence
  ``1 - delta / N`` (union bound: P(any of the N releases is unsafe) <= delta). N is recorded at
  the set's first test and cannot change later (raising it after a failure is retest shopping).
* The log lives beside the privacy ledger: ``certifications.sqlite`` in the directory of
  ``budget.ledger`` when set, else in the per-user data directory (:func:`default_data_dir`).
* An attempt is written (``started``) before the test and completed after it; a test that raises
  before producing a verdict is removed again (nobody saw a result), a killed one stays counted.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import asdict, astuple, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safealign.config import BudgetConfig, SafetyConfig
from safealign.constraints.hc_rlhf import Certificate, write_certificate
from safealign.data.records import normalise_text
from safealign.errors import ConfigError, IsolationError
from safealign.privacy.identity import (
    default_data_dir,
    default_ledger_path,
    keyed_digest,
    ledger_key,
)

LOG_FILE = "certifications.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS safety_sets (
    safety_set TEXT PRIMARY KEY,
    declared INTEGER NOT NULL CHECK (declared >= 1),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    safety_set TEXT NOT NULL REFERENCES safety_sets (safety_set),
    number INTEGER NOT NULL,
    policy TEXT NOT NULL,
    bound TEXT NOT NULL,
    confidence REAL NOT NULL,
    upper_bound REAL,
    result TEXT NOT NULL CHECK (result IN ('started', 'certified', 'NSF')),
    certificate_sha256 TEXT,
    started_at TEXT NOT NULL,
    PRIMARY KEY (safety_set, number)
);
"""


@dataclass(frozen=True)
class Attempt:
    """One safety test on a safety set, as the log and the certificate record it.

    Attributes:
        number: 1 for the set's first test, 2 for the second, ...
        policy: SHA-256 of the tested policy's sampler settings (canonical JSON).
        bound: The confidence bound used.
        confidence: The attempt's own confidence, ``1 - delta / declared``.
        upper_bound: Its upper bound (None while it runs).
        result: ``"started"``, ``"certified"`` or ``"NSF"``.
        started_at: UTC time the test began.
    """

    number: int
    policy: str
    bound: str
    confidence: float
    upper_bound: float | None
    result: str
    started_at: str


def log_path(budget: BudgetConfig) -> Path:
    """Where the log lives: beside ``budget.ledger`` when set, else in the per-user data dir."""
    if budget.ledger is not None:
        return Path(budget.ledger).parent / LOG_FILE
    return default_data_dir() / LOG_FILE


def per_attempt_confidence(confidence: float, attempts: int) -> float:
    """``1 - (1 - confidence) / attempts``: delta split evenly over the declared attempts."""
    return confidence if attempts == 1 else 1.0 - (1.0 - confidence) / attempts


def attempt_safety(safety: SafetyConfig) -> SafetyConfig:
    """``safety`` with the confidence one of its ``attempts`` declared tests runs at."""
    return replace(safety, confidence=per_attempt_confidence(safety.confidence, safety.attempts))


def safety_set_identity(budget: BudgetConfig, prompts: Iterable[str]) -> str:
    """Keyed digest of the sorted distinct normalised prompts (key: the ledger's secret)."""
    key = ledger_key(budget.ledger or default_ledger_path())
    return keyed_digest(key, "safealign-safety-set", *sorted({normalise_text(p) for p in prompts}))


def policy_identity(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the policy's sampler settings as canonical JSON."""
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()


class CertificationLog:
    """The log file (created on first use); every method opens, works and closes it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"{self.path}: cannot open the certification log ({exc}); it lives beside "
                "budget.ledger (or in the per-user data directory): set budget.ledger to a "
                "directory you can write"
            ) from None
        return conn

    def attempts(self, safety_set: str) -> list[Attempt]:
        """Every attempt on ``safety_set``, in order."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT number, policy, bound, confidence, upper_bound, result, started_at "
                "FROM attempts WHERE safety_set = ? ORDER BY number",
                (safety_set,),
            ).fetchall()
        return [Attempt(*row) for row in rows]

    def begin(self, safety_set: str, *, declared: int, policy: str, bound: str, confidence: float):
        """Record a new attempt before the test runs, or refuse it.

        Returns:
            The new :class:`Attempt` (``result="started"``).

        Raises:
            IsolationError: ``declared`` differs from what the set's first test recorded, or
                every declared attempt has been used.
        """
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")  # the count and the insert under one write lock
            try:
                recorded = conn.execute(
                    "SELECT declared FROM safety_sets WHERE safety_set = ?", (safety_set,)
                ).fetchone()
                used = conn.execute(
                    "SELECT COUNT(*) FROM attempts WHERE safety_set = ?", (safety_set,)
                ).fetchone()[0]
                _check_allowed(recorded and recorded[0], declared, used, self.path)
                if recorded is None:
                    conn.execute(
                        "INSERT INTO safety_sets VALUES (?, ?, ?)", (safety_set, declared, now)
                    )
                attempt = Attempt(used + 1, policy, bound, confidence, None, "started", now)
                conn.execute(
                    "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                    (safety_set, *astuple(attempt)),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return attempt

    def finish(self, safety_set: str, attempt: Attempt, certificate_sha256: str) -> None:
        """Complete ``attempt`` with its verdict and the digest of the certificate written."""
        with closing(self._connect()) as conn:
            conn.execute(
                "UPDATE attempts SET upper_bound = ?, result = ?, certificate_sha256 = ? "
                "WHERE safety_set = ? AND number = ?",
                (
                    attempt.upper_bound,
                    attempt.result,
                    certificate_sha256,
                    safety_set,
                    attempt.number,
                ),
            )

    def withdraw(self, safety_set: str, attempt: Attempt) -> None:
        """Remove an attempt whose test raised before any verdict existed."""
        with closing(self._connect()) as conn:
            conn.execute(
                "DELETE FROM attempts WHERE safety_set = ? AND number = ? AND result = 'started'",
                (safety_set, attempt.number),
            )

    def finished_with(self, safety_set: str, certificate_sha256: str) -> bool:
        """Whether a completed attempt on ``safety_set`` wrote a certificate with this digest."""
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT 1 FROM attempts WHERE safety_set = ? AND certificate_sha256 = ? "
                "AND result != 'started'",
                (safety_set, certificate_sha256),
            ).fetchone()
        return row is not None


def _check_allowed(recorded: int | None, declared: int, used: int, path: Path) -> None:
    if recorded is not None and recorded != declared:
        raise IsolationError(
            f"safety.attempts: this safety set's first test declared {recorded} attempt(s); the "
            f"config now says {declared}. The number is fixed before the first test (raising it "
            f"after a failure is retest shopping); set safety.attempts: {recorded}, or certify "
            f"on fresh safety prompts (log: {path})"
        )
    if used >= declared:
        raise IsolationError(
            f"this safety set has already been tested {used} time(s), and {declared} attempt(s) "
            f"were declared (safety.attempts: {declared}, fixed at its first test): another test "
            "on the same prompts would void the guarantee (each retest is a fresh chance to pass "
            "by luck). Certify on fresh safety prompts (e.g. another seed or data), or declare "
            f"more attempts up front for a new safety set (log: {path})"
        )


def attempts_record(safety: SafetyConfig, safety_set: str, log: list[Attempt]) -> dict[str, Any]:
    """The certificate's ``attempts`` field: the declared split and every test on its set."""
    return {
        "declared": safety.attempts,
        "number": log[-1].number,
        "confidence": safety.confidence,
        "per_attempt_confidence": per_attempt_confidence(safety.confidence, safety.attempts),
        "safety_set": safety_set,
        "log": [asdict(a) for a in log],
    }


def same_settings(a: Any, b: Any) -> bool:
    """Equal policy settings up to floating-point rounding (relative 1e-9)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_settings(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_settings(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def logged_test(
    budget: BudgetConfig,
    safety: SafetyConfig,
    prompts: Iterable[str],
    settings: Mapping[str, Any],
    path: Path,
    run_test: Callable[[], Certificate],
) -> Certificate:
    """Run ``run_test`` (the safety test) as a logged attempt; write its certificate to ``path``.

    Returns:
        The certificate with its ``attempts`` record (the declared split, every test on the set).

    Raises:
        IsolationError: the log refuses the attempt (nothing is run).
    """
    log = CertificationLog(log_path(budget))
    safety_set = safety_set_identity(budget, prompts)
    attempt = log.begin(
        safety_set,
        declared=safety.attempts,
        policy=policy_identity(settings),
        bound=safety.bound,
        confidence=per_attempt_confidence(safety.confidence, safety.attempts),
    )
    try:
        certificate = run_test()
    except BaseException:
        log.withdraw(safety_set, attempt)  # no verdict exists: the attempt gave no chance to pass
        raise
    done = replace(attempt, upper_bound=certificate.upper_bound, result=certificate.result)
    earlier = [a for a in log.attempts(safety_set) if a.number != attempt.number]
    record = attempts_record(safety, safety_set, [*earlier, done])
    certificate = replace(certificate, attempts=record)
    text = write_certificate(certificate, path).read_text(encoding="utf-8")
    log.finish(safety_set, done, hashlib.sha256(text.encode()).hexdigest())
    return certificate


def resumable_certificate(
    budget: BudgetConfig, prompts: Iterable[str], settings: Mapping[str, Any], path: Path
) -> Certificate | None:
    """The certificate at ``path`` when it is the logged result of testing this very policy.

    A resumed run (or a repeated ``certify``) reuses it instead of testing again: that spends no
    attempt and gives no fresh chance. It counts only when its bytes are those the log recorded
    for a finished attempt on this safety set and its sampler settings are the policy's.
    """
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        certificate = json.loads(data)
    except ValueError:
        return None
    if not isinstance(certificate, dict) or not same_settings(
        certificate.get("sampler_settings"), plain_settings(settings)
    ):
        return None
    safety_set = safety_set_identity(budget, prompts)
    log = CertificationLog(log_path(budget))
    if not log.finished_with(safety_set, hashlib.sha256(data).hexdigest()):
        return None
    return Certificate.from_dict(certificate)


def plain_settings(settings: Mapping[str, Any]) -> Any:
    """``settings`` as plain JSON data, as a certificate records them."""
    return json.loads(json.dumps(dict(settings), sort_keys=True))
