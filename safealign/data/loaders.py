"""Preference-pair loaders: generic JSONL, Anthropic HH-RLHF, PKU-SafeRLHF; format detection.

Generic JSONL (one object per line; the schema documented in the README):

    {"prompt": str, "chosen": str, "rejected": str,            # required, non-empty, chosen != rejected
     "user_id": str|int, "group": str,                          # optional
     "chosen_safe": bool, "rejected_safe": bool, "safer": "chosen"|"rejected"}   # optional

Extra keys are allowed (metadata columns), except ones that look like a misspelt field name.
"""

from __future__ import annotations

import difflib
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from safealign.data.io import first_record, iter_json_lines
from safealign.data.records import PAIR_FIELDS, LoadReport, PairDataset, PreferencePair
from safealign.errors import DataError

PAIR_FORMATS = ("jsonl", "hh_rlhf", "pku_saferlhf")
LABELLED_FORMATS = ("xstest_prompts", "xstest_completions")
HH_ASSISTANT = "\n\nAssistant:"
PKU_FIELDS = (
    "prompt",
    "response_0",
    "response_1",
    "is_response_0_safe",
    "is_response_1_safe",
    "better_response_id",
    "safer_response_id",
)


class _Row:
    """Typed field access on one JSON object, raising DataError with path, line and field."""

    def __init__(self, obj: dict[str, Any], path: str, line: int) -> None:
        self.obj, self.path, self.line = obj, path, line

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, path=self.path, line=self.line, field=field)

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.obj:
            if required:
                keys = ", ".join(sorted(self.obj)) or "none"
                raise self.error(f"field '{key}' is missing (got keys: {keys})", key)
            return None
        return self.obj[key]

    def text(self, key: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.error(f"field '{key}' must be a string (got {_kind(value)})", key)
        if not allow_empty and not value.strip():
            raise self.error(f"field '{key}' is an empty string", key)
        return value

    def flag(self, key: str, *, required: bool = True) -> bool | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, bool):
            raise self.error(f"field '{key}' must be true or false (got {_kind(value)})", key)
        return value

    def choice(self, key: str, choices: tuple, *, required: bool = True):
        value = self._get(key, required)
        if value is None and not required:
            return None
        if isinstance(value, bool) or value not in choices:
            raise self.error(
                f"field '{key}' must be one of {', '.join(map(repr, choices))} (got {value!r})", key
            )
        return value

    def ident(self, key: str) -> str | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(
                f"field '{key}' must be a string or an integer (got {_kind(value)})", key
            )
        return str(value)


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _check_distinct(row: _Row, a: str, b: str, a_name: str, b_name: str) -> None:
    if a == b:
        raise row.error(
            f"fields '{a_name}' and '{b_name}' are identical; a pair needs two different responses",
            b_name,
        )


def _parse_generic(row: _Row) -> PreferencePair:
    for key in row.obj:
        if key not in PAIR_FIELDS:
            close = difflib.get_close_matches(key, PAIR_FIELDS, n=1, cutoff=0.8)
            if close:
                raise row.error(f"unknown field '{key}'; did you mean '{close[0]}'?", key)
    prompt = row.text("prompt")
    chosen = row.text("chosen")
    rejected = row.text("rejected")
    _check_distinct(row, chosen, rejected, "chosen", "rejected")
    return PreferencePair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        user_id=row.ident("user_id"),
        group=row.ident("group"),
        chosen_safe=row.flag("chosen_safe", required=False),
        rejected_safe=row.flag("rejected_safe", required=False),
        safer=row.choice("safer", ("chosen", "rejected"), required=False),
    )


def split_hh_dialogue(text: str) -> tuple[str, str] | None:
    """Split an HH-RLHF dialogue into (context up to and including the last ``Assistant:``,
    final response). None when there is no assistant turn."""
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        return None
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:].strip()


def _parse_hh(row: _Row, *, chosen_is_safer: bool = False) -> PreferencePair | str:
    chosen = row.text("chosen")
    rejected = row.text("rejected")
    split_c, split_r = split_hh_dialogue(chosen), split_hh_dialogue(rejected)
    for name, parts in (("chosen", split_c), ("rejected", split_r)):
        if parts is None:
            raise row.error(
                f"field '{name}' has no '\\n\\nAssistant:' turn; not an HH-RLHF dialogue", name
            )
    (ctx_c, resp_c), (ctx_r, resp_r) = split_c, split_r
    # The two dialogues must share their context; if they do not, the comparison is not between
    # two responses to one prompt. Count it and skip rather than silently pick one context.
    if ctx_c != ctx_r:
        return "context_mismatch"
    if resp_c == resp_r:
        return "identical_responses"
    safer = "chosen" if chosen_is_safer else None
    return PreferencePair(prompt=ctx_c, chosen=resp_c, rejected=resp_r, safer=safer)


def _parse_pku(row: _Row) -> PreferencePair:
    prompt = row.text("prompt")
    responses = (row.text("response_0"), row.text("response_1"))
    _check_distinct(row, responses[0], responses[1], "response_0", "response_1")
    safe = (row.flag("is_response_0_safe"), row.flag("is_response_1_safe"))
    better = row.choice("better_response_id", (0, 1))
    safer_id = row.choice("safer_response_id", (0, 1))
    other = 1 - better
    return PreferencePair(
        prompt=prompt,
        chosen=responses[better],
        rejected=responses[other],
        chosen_safe=safe[better],
        rejected_safe=safe[other],
        safer="chosen" if safer_id == better else "rejected",
    )


_PARSERS: dict[str, Callable[[_Row], PreferencePair | str]] = {
    "jsonl": _parse_generic,
    "hh_rlhf": _parse_hh,
    "pku_saferlhf": _parse_pku,
}


def detect_format(path: str | Path) -> str:
    """Guess the format from the first record (CSV header or JSON keys).

    Raises:
        DataError: the first record matches no known format.
    """
    kind, first = first_record(path)
    if kind == "csv":
        columns = set(first)
        if {"completion", "final_label"} <= columns:
            return "xstest_completions"
        if {"prompt", "label", "type"} <= columns:
            return "xstest_prompts"
        raise DataError(f"unrecognised CSV columns: {', '.join(first)}", path=str(path), line=1)
    keys = set(first)
    if "response_0" in keys and "response_1" in keys:
        return "pku_saferlhf"
    if {"chosen", "rejected"} <= keys and "prompt" in keys:
        return "jsonl"
    if {"chosen", "rejected"} <= keys:
        return "hh_rlhf"
    raise DataError(
        "cannot detect the format: expected keys prompt/chosen/rejected (generic JSONL), "
        "chosen/rejected dialogues (HH-RLHF) or response_0/response_1 (PKU-SafeRLHF); "
        f"got keys: {', '.join(sorted(keys))}",
        path=str(path),
        line=1,
    )


def _iter_pairs(
    path: str, fmt: str, skipped: Counter, *, chosen_is_safer: bool
) -> Iterator[PreferencePair]:
    parse = functools.partial(_parse_hh, chosen_is_safer=True) if chosen_is_safer else _PARSERS[fmt]
    for number, obj in iter_json_lines(path):
        result = parse(_Row(obj, path, number))
        if isinstance(result, str):
            skipped[result] += 1
        else:
            yield result


def load_pairs(
    path: str | Path, *, format: str = "auto", chosen_is_safer: bool = False
) -> PairDataset:
    """Read preference pairs from a JSONL file (``.gz`` or plain).

    Args:
        path: The file.
        format: ``auto``, ``jsonl``, ``hh_rlhf`` or ``pku_saferlhf``.
        chosen_is_safer: HH-RLHF only (``data.chosen_is_safer``): set ``safer="chosen"`` on every
            pair. True of harmless-base, whose annotators chose the less harmful response; that
            order is then the cost model's pairwise label. Not true of the helpful-* splits.

    Returns:
        The pairs with a :class:`LoadReport` (skipped rows by reason, contradictory safety rows).

    Raises:
        DataError: naming the file, line and field of the first bad record.
    """
    path = str(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in PAIR_FORMATS:
        raise DataError(f"format '{fmt}' holds labelled responses, not preference pairs", path=path)
    if chosen_is_safer and fmt != "hh_rlhf":
        raise DataError(
            f"data.chosen_is_safer applies to HH-RLHF dialogues only, and this file is {fmt!r}; "
            "annotate 'safer' per record instead (generic JSONL), or set data.chosen_is_safer: false",
            path=path,
        )
    skipped: Counter = Counter()
    pairs = tuple(_iter_pairs(path, fmt, skipped, chosen_is_safer=chosen_is_safer))
    report = LoadReport(
        source=path,
        format=fmt,
        num_records=len(pairs) + sum(skipped.values()),
        context_mismatches=skipped.pop("context_mismatch", 0),
        contradictory=sum(p.is_contradictory for p in pairs),
        skipped=dict(skipped),
    )
    if not pairs:
        raise DataError(
            f"no usable pairs ({report.num_records} records, all skipped: {dict(skipped)})",
            path=path,
        )
    return PairDataset(pairs, name=Path(path).name, report=report)
