"""The labelling workflow's two files: responses to judge out, trusted judgements back in.

``--export-labelling FILE`` writes one JSON object per line with exactly what a person must see
to judge a response and nothing else::

    {"id": "response-17", "prompt": "...", "response": "..."}

No cost-model score (a judge who sees it is anchored by it, and the rectifier then measures the
model against itself), no seed, no config, no other record of the run. ``id`` is opaque: the
response's position among the scored safety responses.

``--labels FILE`` reads the judgements back, one JSON object per line::

    {"id": "response-17", "unsafe": true, "cost": 0.8}

``unsafe`` (true/false) is required; ``cost`` (a number in the declared cost range) is required
when the certificate bounds an expected cost and optional otherwise. The exported ``prompt`` and
``response`` may be kept on the line (a labeller often fills in the export itself); they must
then be exactly the exported text, which catches a labels file written for another export.
``note`` is free text, kept for the record. Anything else is refused, as are duplicate keys and
every other strict-JSON refusal of :mod:`~safealign.data.io`, an unknown or repeated id, and a
missing one: a bound computed on the labels that came back, rather than on the uniformly random
subset that was drawn, is no longer valid (a labeller who skips the hard cases biases it).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safealign._atomic import atomic_write_text
from safealign.data.io import iter_json_lines
from safealign.errors import DataError

EXPORT_FIELDS = ("id", "prompt", "response")
LABEL_FIELDS = ("id", "unsafe", "cost", "prompt", "response", "note")


@dataclass(frozen=True)
class LabellingItem:
    """One response to be judged: an opaque id, the prompt and the response."""

    id: str
    prompt: str
    response: str


@dataclass(frozen=True)
class Label:
    """One trusted judgement: ``unsafe``, and the cost when one was given."""

    id: str
    unsafe: bool
    cost: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class LabelSet:
    """The judgements read back, in the order of the exported items.

    Attributes:
        labels: One per exported item, in the export's order.
        path: The file read.
        fingerprint: SHA-256 over the labels' canonical JSON (ids, unsafe, cost, note), in order.
    """

    labels: tuple[Label, ...]
    path: str
    fingerprint: str

    @property
    def unsafe(self) -> tuple[float, ...]:
        """The 0/1 labels (1 = unsafe), in the export's order."""
        return tuple(1.0 if label.unsafe else 0.0 for label in self.labels)

    @property
    def costs(self) -> tuple[float, ...]:
        """The cost labels; raises DataError when some label has none."""
        missing = [label.id for label in self.labels if label.cost is None]
        if missing:
            raise DataError(
                f"{len(missing)} label(s) give no cost (first: {missing[0]!r}); an expected-cost "
                "certificate needs a 'cost' on every line",
                path=self.path,
            )
        return tuple(float(label.cost) for label in self.labels)


def response_id(index: int) -> str:
    """The opaque id of the ``index``-th scored safety response in a labelling file."""
    return f"response-{int(index)}"


def labelling_items(
    prompts: Sequence[str], responses: Sequence[str], indices: Sequence[int]
) -> tuple[LabellingItem, ...]:
    """The items to export: the responses at ``indices`` (draw order kept), with their prompts."""
    if len(prompts) != len(responses):
        raise DataError(f"{len(prompts)} prompts but {len(responses)} responses")
    return tuple(LabellingItem(response_id(i), prompts[i], responses[i]) for i in indices)


def write_labelling_file(items: Sequence[LabellingItem], path: str | Path) -> Path:
    """Write ``items`` as JSON Lines (``id``, ``prompt``, ``response`` only), atomically."""
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise DataError("labelling items must have distinct ids")
    lines = (
        json.dumps(asdict(item), ensure_ascii=False, sort_keys=True, allow_nan=False)
        for item in items
    )
    return atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def read_labels(
    path: str | Path,
    items: Sequence[LabellingItem],
    *,
    cost_range: tuple[float, float] | None = None,
) -> LabelSet:
    """Read the judgements for exactly ``items`` (the exported ones), strictly (module doc).

    Args:
        path: The labels file (JSON Lines, optionally gzip).
        items: The exported items; every one needs exactly one label.
        cost_range: The declared cost range: when given, every line needs a ``cost`` inside it.

    Raises:
        DataError: naming the file, line and field, with what was expected.
    """
    path = str(path)
    exported = {item.id: item for item in items}
    found: dict[str, tuple[int, Label]] = {}
    for line, obj in iter_json_lines(path):
        label = _parse(obj, path, line, exported, cost_range)
        if label.id in found:
            raise DataError(
                f"id {label.id!r} is labelled twice (first on line {found[label.id][0]}); give "
                "each response one judgement",
                path=path,
                line=line,
                field="id",
            )
        found[label.id] = (line, label)
    missing = [item.id for item in items if item.id not in found]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} of the {len(items)} exported responses have no label ({shown}); "
            "label every exported response: the bound is valid only on the whole random subset",
            path=path,
        )
    return label_set([found[item.id][1] for item in items], path)


def label_set(labels: Sequence[Label], path: str) -> LabelSet:
    """``labels`` (in the export's order) as a :class:`LabelSet` with its fingerprint; ``path``
    names where they came from (a file, or e.g. the synthetic world's truth)."""
    labels = tuple(labels)
    canonical = json.dumps([asdict(label) for label in labels], sort_keys=True, allow_nan=False)
    return LabelSet(labels, path, hashlib.sha256(canonical.encode()).hexdigest())


def _parse(
    obj: dict[str, Any],
    path: str,
    line: int,
    exported: dict[str, LabellingItem],
    cost_range: tuple[float, float] | None,
) -> Label:
    def error(message: str, field: str | None) -> DataError:
        return DataError(message, path=path, line=line, field=field)

    unknown = sorted(set(obj) - set(LABEL_FIELDS))
    if unknown:
        raise error(
            f"unknown field {unknown[0]!r} (a label line holds {', '.join(LABEL_FIELDS)})",
            unknown[0],
        )
    for key in ("id", "unsafe"):
        if key not in obj:
            raise error(
                f"field {key!r} is missing (got keys: {', '.join(sorted(obj)) or 'none'})", key
            )
    ident = obj["id"]
    if not isinstance(ident, str):
        raise error(f"field 'id' must be a string (got {type(ident).__name__})", "id")
    if ident not in exported:
        raise error(
            f"id {ident!r} was not exported for labelling (expected ids like 'response-17')", "id"
        )
    if not isinstance(obj["unsafe"], bool):
        raise error(f"field 'unsafe' must be true or false (got {obj['unsafe']!r})", "unsafe")
    for key in ("prompt", "response"):
        if key in obj and obj[key] != getattr(exported[ident], key):
            raise error(
                f"field {key!r} differs from the exported {key} of {ident!r}: this line was "
                "written for another labelling export",
                key,
            )
    note = obj.get("note")
    if note is not None and not isinstance(note, str):
        raise error(f"field 'note' must be a string (got {type(note).__name__})", "note")
    return Label(ident, obj["unsafe"], _cost(obj.get("cost"), cost_range, error), note)


def _cost(value: Any, cost_range: tuple[float, float] | None, error) -> float | None:
    if value is None:
        if cost_range is not None:
            raise error(
                f"field 'cost' is missing: a number in {list(cost_range)} is required", "cost"
            )
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise error(f"field 'cost' must be a number (got {value!r})", "cost")
    if cost_range is not None and not cost_range[0] <= value <= cost_range[1]:
        raise error(
            f"field 'cost' is {value!r}, outside the declared cost range {list(cost_range)}", "cost"
        )
    return float(value)
