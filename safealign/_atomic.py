"""Atomic file writes: a crash leaves either the old file or the new one, never half of one.

Every file safealign writes itself goes through here: receipts, ``policy.json``, certificates,
reports and their renderings, model heads and ``scalar_model.json``, training checkpoints, keys,
exports. Directories written whole (an LM policy's adapter, a built-in base model, an exported
classifier) are filled in a staging directory beside the target and renamed into place
(:func:`atomic_directory`). Three kinds of file are written by others, each crash-safe in its own
way:

* a Hugging Face backbone's files (``save_pretrained``): not atomic, so a model directory counts
  as written only once the receipt beside it exists (``privacy.training.save_training_output``
  writes the receipt last, and a run stage without a receipt trains again);
* the ledger key (:mod:`safealign.privacy.identity`): an fsynced temp file ``link``-ed into place,
  so two processes creating it at once agree on one key;
* the SQLite databases (the privacy ledger, the certification log): SQLite's own journal.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_DEFAULT_FILE_MODE = 0o666  # what open() asks for; the process umask then removes bits.


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int | None = None
) -> Path:
    """Write ``data`` to ``path`` so that the file holds either its old content or all of ``data``.

    The bytes go to a fresh temp file in the same directory (a rename is only atomic within one
    file system), are flushed with ``fsync``, and the temp file is renamed over ``path`` with
    ``os.replace``. The directory is then fsynced so the rename itself survives a power loss.
    If anything fails, the temp file is removed and the error propagates.

    Args:
        path: The target file. Its directory must exist.
        data: The complete new content.
        mode: Permission bits for the file, e.g. ``0o600`` for a private key. The temp file is
            *created* with these bits (never widened later), so secret bytes are never readable
            by others, not even for an instant. ``None`` keeps the mode of an existing target,
            or else uses ``0o666`` minus the process umask, as ``open(path, "w")`` would.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: If the temp file cannot be created, written or renamed.
    """
    target = Path(path)
    if mode is None:
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
            exact = True
        except FileNotFoundError:
            mode, exact = _DEFAULT_FILE_MODE, False  # let the umask apply, as open() does
    else:
        exact = True
    temp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never follow or reuse a file someone else put at the temp name.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        try:
            if exact and hasattr(os, "fchmod"):
                # The umask may have removed bits the caller asked for; restore exactly ``mode``
                # before any byte is written (only ever re-adds bits that ``mode`` grants).
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)
    return target


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", mode: int | None = None
) -> Path:
    """Write ``text`` atomically; see :func:`atomic_write_bytes`.

    Newlines are written as given (no platform translation), so the bytes on disk are exactly
    ``text.encode(encoding)``, which matters for files whose hash or signature is checked.

    Args:
        path: The target file. Its directory must exist.
        text: The complete new content.
        encoding: The text encoding.
        mode: Permission bits, as in :func:`atomic_write_bytes`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh staging directory beside ``path`` to fill; on success it replaces ``path``.

    A crash or error leaves the old ``path`` (or none) and removes the staging directory, so a
    reader never sees half of a directory. An existing ``path`` is removed just before the rename.

    Yields:
        The staging directory (same file system as ``path``, so the rename is atomic).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Flush a directory entry to disk (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename has still happened
    finally:
        os.close(fd)
