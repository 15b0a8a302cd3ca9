"""Canonical JSON, file hashes, the artifact manifest and atomic writes: the bytes that get signed.

A signature is only as good as the bytes it covers. Three things make those bytes well defined:

* :func:`canonical_json` maps a JSON value to exactly one byte string (sorted keys, no whitespace,
  UTF-8, Python's shortest round-trip ``repr`` for floats), so the signer and the verifier agree
  on what was signed without agreeing on a serializer's settings. It is *not* RFC 8785 (JCS):
  numbers are written as Python writes them (``1e-07``, ``1.0``), which is exact and stable for
  a verifier written in Python, and a non-Python verifier only has to compare bytes.
* :func:`build_manifest` records the SHA-256 of every artifact (data, weights, config) relative
  to the report's directory; :func:`check_manifest` re-hashes them, refusing paths that leave the
  directory, symlinks and special files; :func:`unlisted_files` lists what no manifest covers.
  Signing the manifest inside the report extends the signature to those files.
* :func:`read_canonical_report` parses a report file strictly and checks that its bytes are its
  canonical form.
* :func:`atomic_write_bytes` writes a temp file in the target's directory, flushes it to disk and
  renames it over the target, so a reader (or a crash) sees the old file or the new one, never a
  half-written report, key or manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from safealign._atomic import atomic_write_bytes, atomic_write_text
from safealign.audits._problem import Problem
from safealign.errors import DataError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "build_manifest",
    "canonical_json",
    "check_manifest",
    "read_canonical_report",
    "sha256_file",
    "unlisted_files",
]

_CHUNK_BYTES = 1 << 20  # 1 MiB: model weights are hashed without loading them into memory.


def canonical_json(obj: Any) -> bytes:
    """Serialize ``obj`` to its one canonical JSON byte string.

    Keys are sorted, separators are compact (``,`` and ``:``), non-ASCII text is written as raw
    UTF-8 (``ensure_ascii=False``) and floats use ``repr``, the shortest string that parses back
    to the same float, so ``json.loads`` followed by ``canonical_json`` reproduces the bytes.

    Args:
        obj: A JSON value: dicts with ``str`` keys, lists or tuples, ``str``, ``int``, finite
            ``float``, ``bool`` or ``None``, nested arbitrarily.

    Returns:
        The canonical UTF-8 bytes, without a trailing newline.

    Raises:
        DataError: If ``obj`` holds a value JSON cannot represent exactly: NaN or an infinity
            (not valid JSON, and ``json.dumps`` would silently write ``NaN``), a non-``str`` key
            (it would come back as a different key), another type, a circular reference or a
            string that is not valid Unicode. The message gives the location, e.g. ``$.a[2]``.
    """
    # Validate first, so the error names the offending location instead of json's generic text.
    _check_json_value(obj, "$", set())
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800"
        raise DataError(
            f"cannot encode as UTF-8 ({exc.reason} at character {exc.start}); "
            "strings must be valid Unicode without lone surrogates"
        ) from exc


def _check_json_value(value: Any, where: str, active: set[int]) -> None:
    """Raise :class:`DataError` at the first value under ``where`` that is not canonical JSON."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(
                f"{where} is {value!r}, which JSON cannot represent; "
                'report a non-finite number as null or as a string such as "inf"'
            )
        return
    if isinstance(value, (dict, list, tuple)):
        if id(value) in active:
            raise DataError(
                f"{where} refers back to one of its own containers (circular reference)"
            )
        active.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise DataError(
                        f"{where} has a key {key!r} of type {type(key).__name__}; "
                        "canonical JSON needs str keys (convert with str() first)"
                    )
                _check_json_value(item, f"{where}.{key}", active)
        else:
            for index, item in enumerate(value):
                _check_json_value(item, f"{where}[{index}]", active)
        active.discard(id(value))
        return
    raise DataError(
        f"{where} has type {type(value).__name__}, which is not a JSON value; convert it first "
        "(e.g. numpy scalars with .item(), paths with str())"
    )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file's bytes as lowercase hex, reading it in 1 MiB chunks.

    Args:
        path: The file to hash.

    Returns:
        The 64-character hex digest.

    Raises:
        OSError: If the file cannot be opened or read (``FileNotFoundError`` when missing).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(
    paths: Iterable[str | os.PathLike[str]], *, base_dir: str | os.PathLike[str]
) -> list[dict[str, str]]:
    """Hash artifact files into a manifest of ``{"path", "sha256"}`` entries, sorted by path.

    Args:
        paths: The files, as ordinary paths (relative to the working directory, or absolute).
            Each must lie under ``base_dir``; a file listed twice appears once.
        base_dir: The directory the report will be written to. Manifest paths are relative to
            it, in POSIX form, so the report and its artifacts can be moved together.

    Returns:
        The manifest entries, sorted by ``path``.

    Raises:
        DataError: If a path is outside ``base_dir``, missing, a symlink (verification refuses
            them, so a signer must not pin one) or not a regular file.
    """
    base = Path(os.path.abspath(base_dir))
    entries: dict[str, str] = {}
    for given in paths:
        absolute = Path(os.path.abspath(given))
        try:
            relative = absolute.relative_to(base)
        except ValueError:
            raise DataError(
                f"the artifact is outside the report directory {base}; manifest paths are "
                "relative to it, so move the file there or choose a common parent as base_dir",
                path=str(given),
            ) from None
        unsafe = _unsafe_file(base, PurePosixPath(relative.as_posix()))
        if unsafe is not None:
            reason = "does not exist" if unsafe[0] == "missing" else unsafe[1]
            raise DataError(f"the artifact {reason}", path=str(given))
        entries[relative.as_posix()] = sha256_file(absolute)
    return [{"path": name, "sha256": entries[name]} for name in sorted(entries)]


def check_manifest(
    entries: Any, *, base_dir: str | os.PathLike[str], kind: str = "artifact"
) -> tuple[list[Problem], int]:
    """Re-hash every manifest entry under ``base_dir`` and name each one that does not match.

    A manifest path may only name a regular file inside ``base_dir``: absolute paths, ``..``,
    symlinks anywhere along the path and special files are refused, so a report cannot make its
    verifier hash (and reveal) files elsewhere, nor hang it on a FIFO. A NUL byte, which no file
    name can hold, makes the report malformed input (``bad_input``).

    Args:
        entries: The manifest as found in a report (validated here, so any value is accepted).
        base_dir: The directory the entry paths are relative to (the report's directory).
        kind: ``"artifact"`` or ``"rendering"``: the name of the check in each problem.

    Returns:
        ``(problems, checked)``: one :class:`Problem` per malformed, unsafe, missing, unreadable
        or changed entry, naming its path, and the number of files re-hashed (matching or not).
    """
    base = Path(base_dir)
    if not isinstance(entries, list):
        message = f"must be a list of {{path, sha256}} objects, got {type(entries).__name__}"
        return [Problem(kind, message)], 0
    problems: list[Problem] = []
    checked = 0
    for index, entry in enumerate(entries):
        if not (
            isinstance(entry, dict)
            and set(entry) == {"path", "sha256"}
            and isinstance(entry["path"], str)
            and isinstance(entry["sha256"], str)
        ):
            problems.append(
                Problem(
                    kind, f'entry {index} must be {{"path": str, "sha256": str}}, got {entry!r}'
                )
            )
            continue
        name = entry["path"]
        refused = _refused_path(name, kind)
        if refused is not None:
            problems.append(refused)
            continue
        relative = PurePosixPath(name)
        unsafe = _unsafe_file(base, relative)
        if unsafe is not None:
            check, reason = unsafe
            problems.append(
                Problem(kind if check == "missing" else check, f"{kind} {name!r} {reason}")
            )
            continue
        try:
            actual = sha256_file(base / relative)
        except OSError as exc:
            problems.append(Problem(kind, f"{kind} {name!r} cannot be read ({exc.strerror})"))
            continue
        checked += 1
        if actual != entry["sha256"]:
            problems.append(
                Problem(
                    kind,
                    f"{kind} {name!r} has changed: sha256 is {actual}, the manifest records "
                    f"{entry['sha256']}",
                )
            )
    return problems, checked


def _refused_path(name: str, kind: str) -> Problem | None:
    """A ``manifest-path`` problem if ``name`` may not name a file beside the report."""
    if "\0" in name:  # no file system can hold it: the report is malformed, not merely wrong
        return Problem("manifest-path", f"{kind} path {name!r} holds a NUL byte", bad_input=True)
    relative = PurePosixPath(name)
    if (
        not name
        or relative.is_absolute()
        or PureWindowsPath(name).anchor
        or ".." in relative.parts
        or ".." in PureWindowsPath(name).parts
    ):
        return Problem(
            "manifest-path",
            f"{kind} {name!r}: path must be relative to the report directory, without '..'",
        )
    return None


def _unsafe_file(base: Path, relative: PurePosixPath) -> tuple[str, str] | None:
    """``(check, reason)`` if ``base/relative`` is not a plain file reached without symlinks."""
    current = base
    for index, part in enumerate(relative.parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return "missing", f"is missing (expected at {base / relative})"
        except OSError as exc:
            return "missing", f"cannot be read ({exc.strerror})"
        # A symlink would let the directory's holder point the verifier at any file on its
        # machine (a system file's hash was printed), so none is followed, at any depth.
        if stat.S_ISLNK(mode):
            return "symlink", f"is reached through a symlink ({current.relative_to(base)}), refused"
        last = index == len(relative.parts) - 1
        if last and not stat.S_ISREG(mode):
            return "special-file", "is not a regular file"
    return None


def unlisted_files(base_dir: str | os.PathLike[str], listed: Iterable[str]) -> list[str]:
    """Every file (or symlink) under ``base_dir`` that no manifest names, as sorted POSIX paths.

    Nothing the signature does not cover should sit in a directory a reviewer trusts as a whole;
    verification lists these (and fails on them with ``--strict``). Symlinks are not followed.
    """
    base = Path(base_dir)
    known = set(listed)
    found = []
    for root, dirs, files in os.walk(base, followlinks=False):
        here = Path(root)
        names = files + [d for d in dirs if (here / d).is_symlink()]
        found.extend((here / name).relative_to(base).as_posix() for name in names)
    return sorted(name for name in found if name not in known)


def read_canonical_report(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Parse a report file strictly and check that its bytes are its canonical form.

    The file must be UTF-8 JSON, an object, without duplicate keys or NaN/Infinity, shallow
    enough to parse, and exactly ``canonical_json(parsed)`` plus at most one newline.

    Returns:
        ``(report, problems)``: ``report`` is None when the file cannot be processed at all
        (its one problem is ``read`` or ``json``, with ``bad_input``); else the parsed report,
        with a ``canonical`` problem if its bytes are not the canonical form.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return None, [Problem("read", f"{path}: cannot read the report ({reason})", bad_input=True)]
    try:
        report = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )
        if not isinstance(report, dict):
            raise ValueError(f"a report must be a JSON object, got {type(report).__name__}")
        canonical = canonical_json(report)
    except RecursionError:
        message = f"{path}: not a valid JSON report (nested too deeply to parse)"
        return None, [Problem("json", message, bad_input=True)]
    # JSONDecodeError is a ValueError; DataError: e.g. an escaped lone surrogate "\ud800".
    except (UnicodeDecodeError, ValueError, DataError) as exc:
        return None, [Problem("json", f"{path}: not a valid JSON report ({exc})", bad_input=True)]
    if raw in (canonical, canonical + b"\n"):
        return report, []
    offset = next((i for i, (a, b) in enumerate(zip(raw, canonical, strict=False)) if a != b), None)
    offset = min(len(raw), len(canonical)) if offset is None else offset
    message = (
        f"{path}: the file is not in canonical JSON form (first difference at byte {offset}); "
        "it was edited or re-serialized after signing"
    )
    return report, [Problem("canonical", message)]


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
