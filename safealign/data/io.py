"""Reading text records from plain or gzip files, with errors that name the file and line.

Every failure a user can cause (missing or unreadable file, non-UTF-8 bytes, a truncated gzip
stream, a line that is not JSON, or JSON that Python's reader would accept but no record should
hold) becomes a :class:`DataError` carrying ``path`` and the 1-based ``line``.

JSON is read strictly: a duplicate key, the non-standard constants ``NaN``/``Infinity``, a number
too large to read, nesting deeper than :data:`MAX_DEPTH` and a lone surrogate escape
(``"\\ud800"``, which is not text and fails the moment it is written as UTF-8) are refused here,
at the line that holds them, rather than crashing a later stage or silently keeping one value.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from safealign.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"
#: Records are flat objects of strings, numbers and booleans; this much nesting is already absurd,
#: and refusing it here keeps every later (recursive) step far from Python's recursion limit.
MAX_DEPTH = 100
_SURROGATE = re.compile("[\ud800-\udfff]")


@contextmanager
def _open_binary(path: Path) -> Iterator[tuple[BinaryIO, bool]]:
    """``(readable binary stream, is_gzip)``: gzip judged by its magic bytes, not its name."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise DataError("file not found", path=str(path)) from None
    except IsADirectoryError:
        raise DataError("is a directory, expected a file", path=str(path)) from None
    except OSError as exc:
        raise DataError(
            f"cannot read the file ({exc.strerror}); check the path and its permissions",
            path=str(path),
        ) from None
    except ValueError:  # a NUL character: no file system has such a name
        raise DataError("the path holds a NUL character", path=repr(str(path))) from None
    with raw:
        try:
            gz = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
        except OSError as exc:
            raise DataError(f"cannot read the file ({exc.strerror})", path=str(path)) from None
        if not gz:
            yield raw, False
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
            yield fh, True


def check_readable(path: str | Path) -> None:
    """Raise :class:`DataError` unless ``path`` is a file this process can open and read."""
    with _open_binary(Path(path)) as (fh, gz):
        try:
            fh.read(1)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            raise DataError(_read_failed(exc, gz), path=str(path)) from None


def _read_failed(exc: Exception, gz: bool, *, after_line: int | None = None) -> str:
    where = f" after line {after_line}" if after_line is not None else ""
    if gz:
        return f"the gzip stream is corrupt or truncated{where} ({exc})"
    return f"cannot read the file{where} ({getattr(exc, 'strerror', None) or exc})"


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line, decoded as strict UTF-8.

    Raises:
        DataError: file missing, empty, non-UTF-8 bytes, or a corrupt/truncated gzip stream.
    """
    path = Path(path)
    number = 0
    seen = False
    with _open_binary(path) as (fh, gz):
        while True:
            try:
                raw = fh.readline()
            except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
                raise DataError(
                    _read_failed(exc, gz, after_line=number), path=str(path), line=number + 1
                ) from None
            if not raw:
                break
            number += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "re-encode the file as UTF-8",
                    path=str(path),
                    line=number,
                ) from None
            text = text.rstrip("\r\n")
            if number == 1:
                text = text.removeprefix("\ufeff")
            if text.strip():
                seen = True
                yield number, text
    if not seen:
        raise DataError("the file is empty (no records)", path=str(path))


class _Refused(Exception):
    """Raised from inside the JSON parser's hooks; becomes a DataError with path and line."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.field = reason, field


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):  # the common case, at C speed
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Refused(
                f"duplicate key {key!r} in one object; give each field once (which of the two "
                "values was meant is ambiguous, and JSON readers disagree on which one wins)",
                key,
            )
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means a duplicate")  # pragma: no cover


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON (a non-standard constant); write a number or null")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # Python's limit on int-string conversion (CVE-2020-10735)
        digits = len(text.lstrip("-"))
        raise _Refused(
            f"an integer with {digits} digits (Python reads at most "
            f"{sys.get_int_max_str_digits()}); no field takes such a number: write an id as a "
            "string"
        ) from None


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} overflows a float; write a finite number")
    return value


def _check_nesting_and_text(obj: Any, *, check_text: bool) -> None:
    """Refuse nesting deeper than MAX_DEPTH (the record itself is level 1) and, if
    ``check_text``, lone surrogates; iteratively, since a recursive walk would itself hit the
    recursion limit on the very inputs it must refuse."""
    stack: list[tuple[Any, int, str | None]] = [(obj, 1, None)]
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, dict | list) and depth > MAX_DEPTH:
            raise _Refused(
                f"nested more than {MAX_DEPTH} levels deep; a record is a flat object of "
                "strings, numbers and booleans",
                field,
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if check_text:
                    _check_text(key, field, what="a key")
                stack.append((item, depth + 1, key if field is None else field))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, field) for item in value)
        elif check_text and isinstance(value, str):
            _check_text(value, field)


def _check_text(text: str, field: str | None, *, what: str | None = None) -> None:
    bad = _SURROGATE.search(text)
    if bad is None:
        return
    owner = what or (f"field {field!r}" if field is not None else "a string")
    raise _Refused(
        f"{owner} holds a lone surrogate ({ascii(bad.group())} at character {bad.start() + 1}), "
        "which is not text and cannot be written as UTF-8; fix the \\u escape (a character "
        "outside the BMP is written as a pair, e.g. \\ud83d\\ude00)",
        field,
    )


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_int=_int, parse_float=_float
)


def parse_json(text: str, *, path: str, line: int | None = None) -> Any:
    """Parse one JSON document strictly (see the module docstring for what is refused).

    Raises:
        DataError: naming ``path``, ``line`` and, when known, the field.
    """
    try:
        obj = _DECODER.decode(text)
        # Only escapes make surrogates (the text itself was decoded as strict UTF-8), and only
        # brackets make depth: skip the walk for the plain rows that are almost all of a file.
        check_text = "\\u" in text
        if check_text or text.count("[") + text.count("{") > MAX_DEPTH:
            _check_nesting_and_text(obj, check_text=check_text)
    except _Refused as exc:
        raise DataError(exc.reason, path=path, line=line, field=exc.field) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"not valid JSON ({exc.msg} at column {exc.colno})", path=path, line=line
        ) from None
    except RecursionError:
        raise DataError(
            f"nested more than {MAX_DEPTH} levels deep; a record is a flat object of strings, "
            "numbers and booleans",
            path=path,
            line=line,
        ) from None
    return obj


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for a JSON Lines file; each line must be a JSON object."""
    for number, text in iter_lines(path):
        obj = parse_json(text, path=str(path), line=number)
        if not isinstance(obj, dict):
            raise DataError(
                f"expected a JSON object, got {type(obj).__name__}", path=str(path), line=number
            )
        yield number, obj


def iter_csv_rows(
    path: str | Path, required: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` for a CSV file with a header; ``line_number`` is where the
    record starts (records may span lines, e.g. multi-paragraph completions)."""
    path = Path(path)
    text = "\n".join(line for _, line in _iter_all_lines(path))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise _csv_error(exc, path, 1) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)} (got columns: {', '.join(header)})",
            path=str(path),
            line=1,
            field=missing[0],
        )
    start = reader.line_num + 1
    rows = 0
    records = iter(reader)
    while True:
        try:
            row = next(records)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a field over csv's size limit
            raise _csv_error(exc, path, start) from None
        if None in row:
            raise DataError(
                f"{len(header) + len(row[None])} values for {len(header)} columns",
                path=str(path),
                line=start,
            )
        rows += 1
        yield start, row
        start = reader.line_num + 1
    if rows == 0:
        raise DataError("the file has a header but no records", path=str(path))


def _csv_error(exc: csv.Error, path: Path, line: int) -> DataError:
    return DataError(f"not valid CSV ({exc})", path=str(path), line=line)


def _iter_all_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Like :func:`iter_lines` but keeps blank lines (they matter inside quoted CSV fields)."""
    with _open_binary(path) as (fh, gz):
        try:
            data = fh.read()
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            raise DataError(_read_failed(exc, gz), path=str(path)) from None
    if not data.strip():
        raise DataError("the file is empty (no records)", path=str(path))
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                path=str(path),
                line=number,
            ) from None
        yield number, text.removeprefix("\ufeff") if number == 1 else text


def first_record(path: str | Path) -> tuple[str, Any]:
    """``("csv", header)`` or ``("json", first object)``: what format detection looks at."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        for _, line in _iter_all_lines(path):
            try:
                return "csv", next(csv.reader([line]))
            except csv.Error as exc:
                raise _csv_error(exc, path, 1) from None
    for _, obj in iter_json_lines(path):
        return "json", obj
    raise DataError("the file is empty (no records)", path=str(path))  # pragma: no cover
