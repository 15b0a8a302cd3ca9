"""Record types: a preference pair, a labelled response, and a fingerprinted dataset of pairs.

Records are frozen and hashable. Their canonical form (sorted-key compact JSON, UTF-8) is the only
thing fingerprints are computed over, so a fingerprint never depends on file layout, key order or
the order records arrive in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

Safer = Literal["chosen", "rejected"]


def normalise_text(text: str) -> str:
    """The normalised identity of a prompt (or response): what "the same prompt" means.

    Unicode NFKC (full-width and compatibility forms folded), case folding, format and control
    characters removed (zero-width spaces and joiners, BOM, soft hyphen), every run of whitespace
    collapsed to one space, and punctuation trimmed from both ends. Splits assign a prompt by this
    identity and the seal compares it, so trivially different copies of a safety prompt (case,
    spacing, zero-width characters, a trailing "?!") can neither land outside the safety split nor
    pass the seal.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    kept = (
        " " if ch.isspace() else ch
        for ch in folded
        if ch.isspace() or unicodedata.category(ch) not in ("Cf", "Cc")
    )
    words = "".join(kept).split()
    collapsed = " ".join(words)
    start, end = 0, len(collapsed)
    while start < end and _is_edge_noise(collapsed[start]):
        start += 1
    while end > start and _is_edge_noise(collapsed[end - 1]):
        end -= 1
    return collapsed[start:end]


def _is_edge_noise(ch: str) -> bool:
    return ch == " " or unicodedata.category(ch).startswith("P")


@dataclass(frozen=True)
class PreferencePair:
    """One human comparison of two responses to the same prompt.

    Attributes:
        prompt: The context shown to both responses (for dialogues, everything up to the last
            assistant turn).
        chosen: The response the annotator preferred (helpfulness preference).
        rejected: The other response.
        user_id: The annotator, when known: the privacy unit for user-level DP and the unit EM
            assigns to groups.
        group: The annotator's user group, when known (MaxMin with ``groups.mode: given``).
        chosen_safe: Safety label of ``chosen`` (True safe, False unsafe, None unknown).
        rejected_safe: Safety label of ``rejected``.
        safer: Which response is safer, when annotated ("chosen" or "rejected").
    """

    prompt: str
    chosen: str
    rejected: str
    user_id: str | None = None
    group: str | None = None
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None
    safer: Safer | None = None

    def canonical(self) -> str:
        """Sorted-key compact JSON of every field: the unit fingerprints are computed over."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def has_safety_labels(self) -> bool:
        return self.chosen_safe is not None and self.rejected_safe is not None

    @property
    def is_contradictory(self) -> bool:
        """True when the response marked safer is labelled unsafe while the other is labelled safe.

        Such rows exist in PKU-SafeRLHF; they are counted and reported, never silently trained on
        as if consistent.
        """
        if self.safer is None or not self.has_safety_labels:
            return False
        safer_ok, other_ok = (
            (self.chosen_safe, self.rejected_safe)
            if self.safer == "chosen"
            else (self.rejected_safe, self.chosen_safe)
        )
        return (not safer_ok) and other_ok


@dataclass(frozen=True)
class LabelledResponse:
    """A (prompt, response) with a safety judgement, e.g. an XSTest model completion.

    Attributes:
        prompt: The prompt.
        response: The model's response (empty for a prompt-only record such as XSTest prompts).
        safe: Derived safety label of the response (True safe, False unsafe, None unknown).
        prompt_label: The prompt's own label when the source has one ("safe"/"unsafe").
        label: The source's raw response label (e.g. XSTest ``2_full_refusal``).
        category: The source's category (harm area, XSTest type, ...), for group breakdowns.
        source_id: The record's id in its source, when it has one.
    """

    prompt: str
    response: str = ""
    safe: bool | None = None
    prompt_label: str | None = None
    label: str | None = None
    category: str | None = None
    source_id: str | None = None

    def canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(records: Iterable[PreferencePair | LabelledResponse]) -> str:
    """SHA-256 over the sorted canonical forms of ``records``, as lowercase hex.

    Sorting makes the fingerprint a function of the *multiset* of records: reordering a file does
    not change it, changing any field of any record does.
    """
    digest = hashlib.sha256()
    for line in sorted(r.canonical() for r in records):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class LoadReport:
    """What a loader noticed while reading a source (counts, not guesses).

    Attributes:
        source: The path (or ``synthetic``).
        format: The format it was read as.
        num_records: Records produced.
        context_mismatches: HH-RLHF pairs whose chosen/rejected contexts differ (skipped).
        contradictory: PKU-SafeRLHF rows whose safer response is labelled unsafe while the other
            is labelled safe (kept, flagged).
        skipped: Other rows skipped, by reason.
    """

    source: str
    format: str
    num_records: int
    context_mismatches: int = 0
    contradictory: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PairDataset(Sequence[PreferencePair]):
    """An immutable sequence of preference pairs with its provenance.

    Attributes:
        pairs: The records, in source order.
        name: A short name for messages and reports (file name, split name, ``synthetic``).
        report: What the loader noticed; None for derived datasets.
    """

    pairs: tuple[PreferencePair, ...]
    name: str = "pairs"
    report: LoadReport | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return PairDataset(self.pairs[index], name=self.name)
        return self.pairs[index]

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self.pairs)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the sorted canonical records (see :func:`fingerprint`), computed once:
        the pairs are an immutable tuple of frozen records."""
        return fingerprint(self.pairs)

    @property
    def prompts(self) -> tuple[str, ...]:
        """Distinct prompts in first-seen order."""
        return tuple(dict.fromkeys(p.prompt for p in self.pairs))

    @property
    def user_ids(self) -> tuple[str, ...]:
        """Distinct user ids in first-seen order (pairs without one are not counted)."""
        return tuple(dict.fromkeys(p.user_id for p in self.pairs if p.user_id is not None))

    @property
    def groups(self) -> tuple[str, ...]:
        """Distinct groups, sorted."""
        return tuple(sorted({p.group for p in self.pairs if p.group is not None}))

    def statistics(self) -> dict[str, int]:
        """Counts for ``safealign data validate`` and reports."""
        return {
            "pairs": len(self.pairs),
            "prompts": len(self.prompts),
            "users": len(self.user_ids),
            "groups": len(self.groups),
            "with_safety_labels": sum(p.has_safety_labels for p in self.pairs),
            "with_safer": sum(p.safer is not None for p in self.pairs),
            "unsafe_responses": sum(
                (p.chosen_safe is False) + (p.rejected_safe is False) for p in self.pairs
            ),
            "contradictory": sum(p.is_contradictory for p in self.pairs),
        }


PAIR_FIELDS = tuple(f.name for f in fields(PreferencePair))
