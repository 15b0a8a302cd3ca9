"""Designated safety sets: a prompt file that is the sealed safety set, instead of a data split.

Formats (``format="auto"`` tells them apart by extension and header):

=====================  ==========================================================  ==============
format                 file and columns                                             category
=====================  ==========================================================  ==============
``jsonl``              JSON Lines, ``{"prompt": str, "category"?: str, "id"?: str}``  ``category``
``csv``                CSV with a ``prompt`` column (optional ``category``, ``id``)  ``category``
``xstest_prompts``     XSTest ``id, prompt, type, label, focus, note`` (safe and      ``type``
                       unsafe prompts; the label is kept)
``harmbench``          HarmBench ``Behavior, ..., ContextString, BehaviorID``; a      ``SemanticCategory``
                       contextual behaviour becomes ``context + "\\n\\n---\\n\\n" +
                       behavior``, HarmBench's own prompt for it
``advbench``           AdvBench ``harmful_behaviors.csv``: ``goal`` (``target`` is    none
                       the attack's goal string, not part of the prompt)
``strongreject``       StrongREJECT ``category, source, forbidden_prompt``            ``category``
``simple_safety_tests``  SimpleSafetyTests ``id, harm_area, ..., prompts_final``     ``harm_area``
``red_instruct``       red-instruct JSON: a list of questions, or                     ``topic/sub``
                       ``{topic: {subtopic: [question, ...]}}``
=====================  ==========================================================  ==============

AdvBench's ``harmful_strings.csv`` (one ``target`` column) holds strings a model is attacked into
*saying*, not prompts, and is refused. Parquet is not read (no file in these sets uses it).

Identity and duplicates: two prompts are the same test item when their
:func:`~safealign.data.records.normalise_text` agree (case, spacing, zero-width characters, edge
punctuation). A repeated item would be tested twice as if it were two independent draws, so by
default (``duplicates="drop"``) the first occurrence is kept and the others dropped and counted;
``duplicates="refuse"`` makes any repeat a :class:`DataError` naming both lines. An empty
normalised prompt is an error. The fingerprint is the SHA-256 of the sorted normalised prompts: a
re-ordered, re-cased or re-spaced copy of a set has the same fingerprint (and the same identity
in the certification log, which keys the same normalised prompts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from safealign.config.safety import SAFETY_SET_FORMATS  # one list: the config validates it
from safealign.data.io import first_record, iter_csv_rows, iter_json_lines, iter_lines, parse_json
from safealign.data.records import normalise_text
from safealign.errors import DataError

# format: (required columns, prompt column, category column, id column)
_CSV_FORMATS = {
    "xstest_prompts": (("id", "prompt", "type", "label"), "prompt", "type", "id"),
    "harmbench": (("Behavior", "SemanticCategory", "ContextString", "BehaviorID"), "Behavior", "SemanticCategory", "BehaviorID"),
    "advbench": (("goal", "target"), "goal", None, None),
    "strongreject": (("category", "forbidden_prompt"), "forbidden_prompt", "category", None),
    "simple_safety_tests": (("id", "harm_area", "prompts_final"), "prompts_final", "harm_area", "id"),
    "csv": (("prompt",), "prompt", "category", "id"),
}  # fmt: skip
HARMBENCH_CONTEXT_SEPARATOR = "\n\n---\n\n"


@dataclass(frozen=True)
class SafetyPrompt:
    """One prompt of a safety set, as the file gives it (not normalised).

    Attributes:
        prompt: The prompt text sent to the policy.
        line: Where it starts in the file (1-based; for red-instruct JSON, its position).
        category: The source's category, when it has one.
        source_id: The source's id, when it has one.
        label: XSTest's prompt label (``safe``/``unsafe``); None elsewhere.
    """

    prompt: str
    line: int
    category: str | None = None
    source_id: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class SafetySet:
    """A designated safety set: distinct prompts (by normalised identity) with provenance.

    Attributes:
        name: The file name.
        format: One of :data:`SAFETY_SET_FORMATS`.
        source: The path read.
        prompts: The distinct prompts in file order.
        duplicates_dropped: Repeats (by normalised identity) dropped by ``duplicates="drop"``.
        fingerprint: SHA-256 of the sorted normalised prompts, one per line (the set's identity).
        sha256: SHA-256 of the file's bytes (this exact file).
    """

    name: str
    format: str
    source: str
    prompts: tuple[SafetyPrompt, ...]
    duplicates_dropped: int
    fingerprint: str
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def texts(self) -> tuple[str, ...]:
        """The prompt texts, in file order."""
        return tuple(p.prompt for p in self.prompts)

    def describe(self) -> dict[str, str | int]:
        """What a certificate and report say of the set: its file's name (basename), format,
        size (distinct prompts), the file's SHA-256 and the normalised prompts' fingerprint."""
        return {
            "name": self.name,
            "format": self.format,
            "prompts": len(self.prompts),
            "duplicates_dropped": self.duplicates_dropped,
            "sha256": self.sha256,
            "fingerprint": self.fingerprint,
        }

    def statistics(self) -> dict[str, int]:
        counts: dict[str, int] = {
            "prompts": len(self.prompts),
            "duplicates_dropped": self.duplicates_dropped,
        }
        for p in self.prompts:
            if p.category is not None:
                counts[f"category/{p.category}"] = counts.get(f"category/{p.category}", 0) + 1
        return counts


def detect_safety_set_format(path: str | Path) -> str:
    """The format of a prompt file, from its extension and header (module doc)."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".json"):
        return "red_instruct"
    kind, head = first_record(path)
    if kind == "json":
        return "jsonl"
    columns = set(head)
    if columns == {"target"}:
        raise DataError(
            "this is AdvBench's harmful_strings.csv: target strings a model is attacked into "
            "saying, not prompts; use harmful_behaviors.csv (format advbench)",
            path=str(path),
            line=1,
        )
    for fmt in (
        "xstest_prompts",
        "harmbench",
        "advbench",
        "strongreject",
        "simple_safety_tests",
        "csv",
    ):
        if set(_CSV_FORMATS[fmt][0]) <= columns:
            return fmt
    raise DataError(
        f"no safety-set format has these columns ({', '.join(head)}); a CSV needs a 'prompt' "
        f"column, or one of the red-team layouts ({', '.join(SAFETY_SET_FORMATS)})",
        path=str(path),
        line=1,
    )


def load_safety_set(
    path: str | Path,
    *,
    format: str = "auto",
    duplicates: Literal["drop", "refuse"] = "drop",
) -> SafetySet:
    """Read a prompt file as a designated safety set (module doc for formats and duplicates).

    Raises:
        DataError: unreadable file, unknown format, a missing column or field, an empty prompt,
            or (``duplicates="refuse"``) a repeated prompt; naming the file and line.
    """
    if duplicates not in ("drop", "refuse"):
        raise DataError(f"duplicates must be 'drop' or 'refuse' (got {duplicates!r})")
    fmt = detect_safety_set_format(path) if format == "auto" else format
    if fmt not in SAFETY_SET_FORMATS:
        raise DataError(
            f"unknown safety-set format {fmt!r}; expected one of {', '.join(SAFETY_SET_FORMATS)}",
            path=str(path),
        )
    seen: dict[str, int] = {}
    kept: list[SafetyPrompt] = []
    dropped = 0
    for item in _iter_prompts(str(path), fmt):
        # red-instruct is one JSON document: its "line" is the question's position.
        at = {"path": str(path), "line": None if fmt == "red_instruct" else item.line}
        what = f"question {item.line}: " if fmt == "red_instruct" else ""
        unit = "question" if fmt == "red_instruct" else "line"
        identity = normalise_text(item.prompt)
        if not identity:
            raise DataError(
                f"{what}the prompt {item.prompt[:40]!r} is empty once normalised (only spaces, "
                "punctuation or invisible characters)",
                **at,
            )
        if identity in seen:
            if duplicates == "refuse":
                raise DataError(
                    f"{what}this prompt repeats {unit} {seen[identity]} (same normalised "
                    "text); a repeated test item is not an independent draw: remove it, or load "
                    "with duplicates='drop'",
                    **at,
                )
            dropped += 1
            continue
        seen[identity] = item.line
        kept.append(item)
    digest = hashlib.sha256("".join(f"{p}\n" for p in sorted(seen)).encode()).hexdigest()
    return SafetySet(
        name=Path(path).name,
        format=fmt,
        source=str(path),
        prompts=tuple(kept),
        duplicates_dropped=dropped,
        fingerprint=digest,
        sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest(),
    )


def _iter_prompts(path: str, fmt: str) -> Iterator[SafetyPrompt]:
    if fmt == "jsonl":
        yield from _jsonl_prompts(path)
    elif fmt == "red_instruct":
        yield from _red_instruct_prompts(path)
    else:
        yield from _csv_prompts(path, fmt)


def _csv_prompts(path: str, fmt: str) -> Iterator[SafetyPrompt]:
    required, prompt_col, category_col, id_col = _CSV_FORMATS[fmt]
    for line, row in iter_csv_rows(path, required):
        prompt = row[prompt_col]
        if fmt == "harmbench" and row["ContextString"].strip():
            prompt = row["ContextString"] + HARMBENCH_CONTEXT_SEPARATOR + prompt
        if not prompt.strip():
            raise DataError(
                f"column {prompt_col!r} is empty", path=path, line=line, field=prompt_col
            )
        yield SafetyPrompt(
            prompt=prompt,
            line=line,
            category=(row.get(category_col) or None) if category_col else None,
            source_id=(row.get(id_col) or None) if id_col else None,
            label=row["label"] if fmt == "xstest_prompts" else None,
        )


def _jsonl_prompts(path: str) -> Iterator[SafetyPrompt]:
    for line, obj in iter_json_lines(path):
        if "prompt" not in obj:
            keys = ", ".join(sorted(obj)) or "none"
            raise DataError(
                f"field 'prompt' is missing (got keys: {keys})",
                path=path,
                line=line,
                field="prompt",
            )
        values = {}
        for key in ("prompt", "category", "id"):
            value = obj.get(key)
            if value is not None and not isinstance(value, str):
                raise DataError(
                    f"field {key!r} must be a string (got {type(value).__name__})",
                    path=path,
                    line=line,
                    field=key,
                )
            values[key] = value
        if not values["prompt"] or not values["prompt"].strip():
            raise DataError(
                "field 'prompt' is an empty string", path=path, line=line, field="prompt"
            )
        yield SafetyPrompt(values["prompt"], line, values["category"], values["id"])


def _red_instruct_prompts(path: str) -> Iterator[SafetyPrompt]:
    # One JSON document (not JSON Lines): blank lines cannot sit inside a JSON string, so joining
    # the non-blank lines keeps the document; the strict parser refuses what it always refuses.
    document = parse_json("\n".join(text for _, text in iter_lines(path)), path=path)
    if isinstance(document, list):
        entries: list[tuple[str | None, Any]] = [(None, q) for q in document]
    elif isinstance(document, dict):
        entries = []
        for topic, subtopics in document.items():
            if not isinstance(subtopics, dict):
                raise DataError(
                    f"topic {topic!r} must map subtopics to lists of questions",
                    path=path,
                    field=topic,
                )
            for sub, questions in subtopics.items():
                if not isinstance(questions, list):
                    raise DataError(
                        f"{topic}/{sub} must be a list of questions", path=path, field=topic
                    )
                entries.extend((f"{topic}/{sub}", q) for q in questions)
    else:
        raise DataError(
            "expected a JSON list of questions or {topic: {subtopic: [questions]}}", path=path
        )
    for position, (category, question) in enumerate(entries, start=1):
        if not isinstance(question, str) or not question.strip():
            raise DataError(
                f"question {position} must be a non-empty string (got {question!r})", path=path
            )
        yield SafetyPrompt(question, position, category)
