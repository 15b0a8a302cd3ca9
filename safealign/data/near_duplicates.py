"""Near-duplicate prompts: word 3-shingles of the normalised text, Jaccard similarity >= 0.8.

The seal must refuse more than exact copies of a safety prompt: "How do I pick a lock, please" is
the same test item as "How do I pick a lock". Two prompts are *near-duplicates* when the Jaccard
similarity of their sets of word 3-shingles (consecutive word triples of
:func:`~safealign.data.records.normalise_text`, words being runs of letters and digits, so inner
punctuation does not matter) is at least :data:`THRESHOLD`. A prompt of fewer than 3 words has
one shingle, its whole word sequence, so it matches only its own normalised copy.

What 0.8 catches: appending or removing a word or two at either end of a prompt of 10+ words (one
word added to a 20-word prompt: 18 of 19 shingles shared, J = 0.95), and any edit of spacing,
case or punctuation (J = 1). One word replaced in the middle of a 20-word prompt changes 3
shingles (J = 15/21 = 0.71) and passes: a reworded prompt is a different test item, which a
threshold on surface form cannot judge.

Speed: an exact similarity join with prefix filtering (Bayardo et al. 2007, "Scaling up all pairs
similarity search"): shingles are ordered rarest first; a pair with J >= t shares one of the
first ``|A| - ceil(t |A|) + 1`` shingles of each set, so only the rare prefix of each indexed set
is indexed and probed, and only those candidates are verified (1e4 queries against 1e3 indexed
prompts: well under a second).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from safealign.data.records import normalise_text

#: Jaccard similarity of word 3-shingles at or above which two prompts are near-duplicates.
THRESHOLD = 0.8
SHINGLE_WORDS = 3
_WORD = re.compile(r"\w+")


def shingles(text: str) -> frozenset[tuple[str, ...]]:
    """The word 3-shingles of ``normalise_text(text)`` (its whole word tuple when shorter)."""
    words = tuple(_WORD.findall(normalise_text(text)))
    if len(words) <= SHINGLE_WORDS:
        return frozenset([words])
    return frozenset(words[i : i + SHINGLE_WORDS] for i in range(len(words) - SHINGLE_WORDS + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """``|a & b| / |a | b|`` (1.0 for two empty sets)."""
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def _prefix_length(size: int, threshold: float) -> int:
    return size - math.ceil(threshold * size - 1e-12) + 1


class NearDuplicateIndex:
    """An index of prompts that answers "which indexed prompt is this one (nearly) a copy of?".

    Args:
        prompts: The prompts to index (e.g. the safety prompts).
        threshold: The Jaccard threshold (default :data:`THRESHOLD`).
    """

    def __init__(self, prompts: Iterable[str], *, threshold: float = THRESHOLD) -> None:
        self.threshold = threshold
        self._sets = [shingles(p) for p in prompts]
        self._frequency = Counter(s for sets in self._sets for s in sets)
        self._postings: dict[tuple[str, ...], list[int]] = {}
        for index, sets in enumerate(self._sets):
            for shingle in self._prefix(sets):
                self._postings.setdefault(shingle, []).append(index)

    def _prefix(self, sets: frozenset) -> list[tuple[str, ...]]:
        # Rarest first (shingles the index never saw have frequency 0: first, and harmless);
        # ties by the shingle itself, so the order is one fixed total order for every set.
        ordered = sorted(sets, key=lambda s: (self._frequency.get(s, 0), s))
        return ordered[: _prefix_length(len(ordered), self.threshold)]

    def match(self, prompt: str) -> tuple[int, float] | None:
        """``(index, similarity)`` of the most similar indexed prompt at or above the threshold."""
        query = shingles(prompt)
        best: tuple[int, float] | None = None
        seen: set[int] = set()
        for shingle in self._prefix(query):
            for index in self._postings.get(shingle, ()):
                if index in seen:
                    continue
                seen.add(index)
                similarity = jaccard(query, self._sets[index])
                if similarity >= self.threshold and (best is None or similarity > best[1]):
                    best = (index, similarity)
        return best

    def matches(self, prompts: Sequence[str]) -> tuple[int, ...]:
        """Positions in ``prompts`` of those that nearly copy an indexed prompt."""
        return tuple(i for i, p in enumerate(prompts) if self.match(p) is not None)
