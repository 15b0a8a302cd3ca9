"""Deterministic, prompt-disjoint, fingerprinted splits, and the sealed safety split.

Every distinct prompt gets a key ``sha256(seed, prompt)``; prompts sorted by key are dealt out to
safety, candidate, eval and train in that order. So the assignment depends only on (set of prompts,
seed): reordering the input changes nothing, one prompt never lands in two splits, and adding data
moves few prompts.

HC-RLHF's guarantee needs the safety prompts to be used exactly once, by the safety test. The
safety split is therefore *sealed*: its size and fingerprint are public (the pessimistic bound may
depend on ``n_s``), but reading its records from anywhere except certification raises
:class:`IsolationError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from safealign.data.records import PairDataset
from safealign.errors import ConfigError, IsolationError

CERTIFY = "certify"


class SealedDataset:
    """A dataset whose records only the safety test may read.

    ``len()``, ``num_prompts`` and ``fingerprint`` are available to everyone: the pessimistic
    candidate selection of HC-RLHF is allowed to depend on the *size* of the safety set, nothing
    else (Chittepu et al. 2025, Sec. 4). :meth:`overlapping` tells a caller which of *its own*
    prompts are safety prompts, so outside prompt sets can be kept disjoint from the test.
    """

    def __init__(self, dataset: PairDataset) -> None:
        self._dataset = dataset
        self.fingerprint = dataset.fingerprint
        self.num_prompts = len(dataset.prompts)
        self.name = dataset.name
        self._digests: frozenset[bytes] | None = None  # computed on the first overlapping() call

    def __len__(self) -> int:
        return len(self._dataset)

    def __iter__(self):
        raise IsolationError(
            "the safety split is sealed: only certification may read it "
            "(call unseal(purpose='certify') from the safety test)"
        )

    def __getitem__(self, index):
        self.__iter__()

    def overlapping(self, prompts: Iterable[str]) -> tuple[int, ...]:
        """Positions in ``prompts`` (the caller's own list) of the ones that are safety prompts.

        Lets a stage that takes prompts from outside the splits (a user's candidate file) refuse
        to optimise on safety prompts without unsealing the split. It compares SHA-256 digests of
        prompt texts and returns only indices into the caller's list: no record of the split is
        returned (no prompt the caller does not already hold, no response, no label).

        What it does reveal is one membership bit per supplied prompt. Acting on that bit by
        *removing* those prompts from an optimisation set is what the split itself does (the
        candidate prompts are disjoint from the safety prompts), so selection still depends
        on the safety set only through its count and its disjointness, as HC-RLHF requires
        (Chittepu et al. 2025, Sec. 4). The seal guards against accidental reuse; it is not
        secrecy from the data owner, who can recompute the deterministic split anyway.
        """
        if self._digests is None:
            self._digests = frozenset(_prompt_digest(p) for p in self._dataset.prompts)
        return tuple(i for i, p in enumerate(prompts) if _prompt_digest(p) in self._digests)

    def unseal(self, *, purpose: str) -> PairDataset:
        """Return the records for the safety test; any other purpose raises IsolationError."""
        if purpose != CERTIFY:
            raise IsolationError(
                f"the safety split may only be read by certification, not by {purpose!r}: "
                "using it anywhere else voids the high-confidence guarantee"
            )
        return self._dataset

    def __repr__(self) -> str:
        return f"SealedDataset(name={self.name!r}, pairs={len(self)}, prompts={self.num_prompts})"


@dataclass(frozen=True)
class Splits:
    """Train / eval / candidate / safety splits of one dataset, disjoint by prompt.

    Attributes:
        train: Pairs the reward and cost models are trained on (the DP-protected data).
        eval: Held-out pairs to evaluate the reward and cost models.
        candidate: Pairs whose prompts the policy is optimised on.
        safety: The sealed safety split (prompts for the one-shot safety test).
        seed: The seed of the assignment.
    """

    train: PairDataset
    eval: PairDataset
    candidate: PairDataset
    safety: SealedDataset
    seed: int

    def fingerprints(self) -> dict[str, str]:
        """SHA-256 fingerprint of each split's canonical records."""
        return {
            "train": self.train.fingerprint,
            "eval": self.eval.fingerprint,
            "candidate": self.candidate.fingerprint,
            "safety": self.safety.fingerprint,
        }

    def sizes(self) -> dict[str, dict[str, int]]:
        return {
            "train": {"pairs": len(self.train), "prompts": len(self.train.prompts)},
            "eval": {"pairs": len(self.eval), "prompts": len(self.eval.prompts)},
            "candidate": {"pairs": len(self.candidate), "prompts": len(self.candidate.prompts)},
            "safety": {"pairs": len(self.safety), "prompts": self.safety.num_prompts},
        }


def _prompt_digest(prompt: str) -> bytes:
    return hashlib.sha256(prompt.encode("utf-8")).digest()


def prompt_key(prompt: str, seed: int) -> bytes:
    """The sort key that deals a prompt to a split: a hash of (seed, prompt)."""
    return hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()


def split_pairs(
    pairs: PairDataset,
    *,
    seed: int,
    eval_fraction: float,
    candidate_fraction: float,
    safety_fraction: float,
) -> Splits:
    """Split ``pairs`` by prompt into train / eval / candidate / safety.

    Fractions are shares of *distinct prompts*; each held-out split gets at least one prompt when
    its fraction is positive, and train must keep at least one.

    Raises:
        ConfigError: the fractions leave no training prompts.
    """
    prompts = sorted(pairs.prompts, key=lambda p: prompt_key(p, seed))
    n = len(prompts)
    counts = []
    for fraction in (safety_fraction, candidate_fraction, eval_fraction):
        counts.append(max(1, round(fraction * n)) if fraction > 0 else 0)
    if sum(counts) >= n:
        raise ConfigError(
            f"data: {n} distinct prompts cannot fill safety={counts[0]}, candidate={counts[1]}, "
            f"eval={counts[2]} and still leave training prompts; use more data or smaller fractions",
        )
    bounds = [0, counts[0], counts[0] + counts[1], sum(counts)]
    which: dict[str, int] = {}
    for index, prompt in enumerate(prompts):
        which[prompt] = sum(
            index >= b for b in bounds[1:]
        )  # 0 safety, 1 candidate, 2 eval, 3 train
    buckets: list[list] = [[], [], [], []]
    for pair in pairs:
        buckets[which[pair.prompt]].append(pair)
    base = pairs.name
    return Splits(
        train=PairDataset(tuple(buckets[3]), name=f"{base}:train"),
        eval=PairDataset(tuple(buckets[2]), name=f"{base}:eval"),
        candidate=PairDataset(tuple(buckets[1]), name=f"{base}:candidate"),
        safety=SealedDataset(PairDataset(tuple(buckets[0]), name=f"{base}:safety")),
        seed=seed,
    )
