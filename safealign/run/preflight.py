"""The pre-flight check: everything a command needs, checked before it spends anything."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from safealign.audits.signing import load_private_key
from safealign.config import BudgetConfig, Config, config_from_dict
from safealign.constraints.attempts import log_path
from safealign.data.io import check_readable
from safealign.data.source import load_designated_set
from safealign.errors import DataError
from safealign.privacy.identity import default_ledger_path
from safealign.privacy.release import LEGACY_LEDGER, open_ledger
from safealign.run.lm_base import check_policy_model
from safealign.run.paths import RunPaths


def preflight(
    config: Config,
    out_dir: str | Path,
    *,
    signs: bool = False,
    trains: Sequence[str] = ("reward", "cost"),
    certifies: bool = False,
) -> None:
    """Check everything a stage needs before it spends anything that cannot be given back.

    Privacy spent on a model and the one-shot safety test are gone once used, so a fault found at
    the end (an unreadable signing key, an unwritable ledger) must be found first: the config
    obeys every load-time rule (again: it may have been built in code), the data file can be
    read, the signing key (when the stage signs) is an Ed25519 private key, the output directory
    can be written, and the ledger (when a model in ``trains`` is private) opens. A stage that
    ``certifies`` also needs its certificate path to take a file and the certification log to
    open: a test that ran but could not be recorded would cost one of ``safety.attempts``.

    Raises:
        ConfigError, DataError, PrivacyError: the first fault, naming its key or file.
    """
    config_from_dict(config.to_dict(), source="config")
    if config.data.source != "synthetic":
        check_readable(config.data.source)
    if signs and config.audit.signing_key is not None:
        load_private_key(config.audit.signing_key)
    load_designated_set(config)  # a designated safety set: read and checked (file, line, field)
    check_policy_model(config)  # an LM policy's base directory, before anything is spent
    _check_writable_dir(Path(out_dir))
    if certifies:
        _check_certification(config, Path(out_dir))
    if any(getattr(config, f"{kind}_model").privacy.target_epsilon is not None for kind in trains):
        _check_ledger(config.budget)


def preflight_responses(config: Config, out_dir: str | Path) -> None:
    """The pre-flight of ``certify --responses``: the config, ``--out``, the certificate path and
    the certification log (it reads neither the config's data nor its policy model).

    Raises:
        ConfigError, DataError: the first fault, naming its key or file.
    """
    config_from_dict(config.to_dict(), source="config")
    _check_writable_dir(Path(out_dir))
    _check_certification(config, Path(out_dir))


def _check_certification(config: Config, out: Path) -> None:
    """A test that ran but could not be recorded would still cost one of ``safety.attempts``."""
    certificate = RunPaths(out).certificate
    if certificate.is_symlink() or (certificate.exists() and not certificate.is_file()):
        raise DataError(
            "cannot write the certificate here: the path exists and is not a regular file; "
            "remove it or certify into another --out",
            path=str(certificate),
        )
    _check_creatable(log_path(config.budget), what="the certification log (beside budget.ledger)")


def _check_writable_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(
            "cannot use it as the output directory: it is not a directory", path=str(out)
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        _probe(out)
    except OSError as exc:
        raise DataError(
            f"cannot use it as the output directory ({exc.strerror}); choose one you can write",
            path=str(out),
        ) from None


def _check_ledger(budget: BudgetConfig) -> None:
    """Open an existing ledger (its own checks run); for a new one, check it could be created
    without creating it: a refused command leaves no ledger behind."""
    path = default_ledger_path() if budget.ledger is None else Path(budget.ledger)
    if path.exists() or (budget.ledger is None and Path(LEGACY_LEDGER).is_file()):
        open_ledger(budget)
        return
    _check_creatable(path, what="the ledger")


def _check_creatable(path: Path, *, what: str) -> None:
    """``path`` is a file, or could be created (its nearest existing parent is a writable
    directory), without creating it."""
    if path.is_file():
        return
    if path.exists():
        raise DataError(f"budget.ledger: {what} is not a file here", path=str(path))
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(parent))
        _probe(parent)
    except OSError as exc:
        raise DataError(
            f"budget.ledger: cannot create {what} here ({parent}: {exc.strerror}); set "
            "budget.ledger to a path in a directory you can write",
            path=str(path),
        ) from None


def _probe(directory: Path) -> None:
    """Create and delete a file in ``directory``: the one sure test that it can be written."""
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".safealign-preflight-")
    os.close(fd)
    os.unlink(probe)
