"""Neighbour-stable, prompt-disjoint, fingerprinted splits, and the sealed safety split.

Each unit is assigned by a threshold on its *own* keyed hash: ``HMAC-SHA256(seed, identity)``
mapped to a position in [0, 1) and compared with the cumulative fractions (safety, candidate,
eval, then train). A unit's split is therefore a function of that unit alone: adding or removing
any record never moves another prompt or user, so neighbouring datasets at the source (where the
privacy ledger charges) give training splits that differ only by the added or removed unit, and
the DP guarantee is not silently turned into group privacy over other units. The key is the
config seed, which is public: neighbour stability needs only that a unit's split depends on that
unit alone, not that the assignment be secret, and reproducibility needs the seed. The price is
that split sizes are random (binomial around each fraction) rather than exact; a held-out split
that comes out empty is a :class:`ConfigError` when the splits are made, before anything runs.

The unit of the assignment:

* ``"prompt"`` (pair-level DP): every pair follows its prompt's position, so the splits are
  disjoint by prompt. A prompt's identity is :func:`normalise_text` of it, so copies that differ by
  case, spacing, zero-width characters or edge punctuation land in the same split.
* ``"user"`` (user-level DP, and EM's user clusters): the safety split is still chosen by the
  prompt's position, and every other pair follows its *user's* position among candidate / eval /
  train (fractions rescaled to the non-safety share). So a user's non-safety pairs lie in exactly
  one split, and a sealed prompt lies in the safety split whoever wrote it: no safety prompt is
  ever trained on or optimised on, and nothing is dropped. Deciding safety by user instead would
  force, for a prompt shared by users in different splits, a choice that depends on *other* users
  (dropping it from one side), which is exactly the neighbour instability this module removes.
  What this leaves: a user in train may also have pairs with sealed prompts; those prompts reach
  the one-shot safety test, outside the DP guarantee like every held-out split. A prompt shared
  by users in different non-safety splits appears in each of them.

HC-RLHF's guarantee needs the safety prompts to be used exactly once, by the safety test. The
safety split is therefore *sealed*: its size and fingerprint are public (the pessimistic bound may
depend on ``n_s``), but reading its records from anywhere except certification raises
:class:`IsolationError`. A designated safety set (``safety.prompts``, a prompt file) replaces the
split under the same seal (:class:`SealedPromptSet`; :func:`safealign.data.source.make_splits`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from safealign.data.near_duplicates import NearDuplicateIndex
from safealign.data.records import PairDataset, PreferencePair, normalise_text
from safealign.data.safety_sets import SafetySet
from safealign.errors import ConfigError, DataError, IsolationError

CERTIFY = "certify"
SplitUnit = Literal["prompt", "user"]
SPLIT_UNITS = ("prompt", "user")


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
        self._index: NearDuplicateIndex | None = None  # built on the first overlapping() call

    def __len__(self) -> int:
        return len(self._dataset)

    def __iter__(self):
        raise IsolationError(
            "the safety split is sealed: only certification may read it "
            "(safealign.run.unseal_safety_split is the one function that unseals it)"
        )

    def __getitem__(self, index):
        self.__iter__()

    def overlapping(self, prompts: Iterable[str]) -> tuple[int, ...]:
        """Positions in ``prompts`` (the caller's own list) of safety prompts and near-copies.

        Lets a stage that takes prompts from outside the splits (a user's candidate file) refuse
        to optimise on safety prompts without unsealing the split. A prompt counts when it is a
        normalised copy of a safety prompt (:func:`normalise_text`: a case, spacing, zero-width,
        full-width or edge-punctuation variant is a safety prompt) or a near-duplicate of one
        (:mod:`~safealign.data.near_duplicates`: Jaccard >= 0.8 on word 3-shingles, e.g. a
        word appended). Only indices into the caller's list are returned: no record of the
        split (no prompt the caller does not already hold, no response, no label).

        What it does reveal is one membership bit per supplied prompt. Acting on that bit by
        *removing* those prompts from an optimisation set is what the split itself does (the
        candidate prompts are disjoint from the safety prompts), so selection still depends
        on the safety set only through its count and its disjointness, as HC-RLHF requires
        (Chittepu et al. 2025, Sec. 4). The seal guards against accidental reuse; it is not
        secrecy from the data owner, who can recompute the deterministic split anyway.
        """
        if self._index is None:
            self._index = NearDuplicateIndex(self._dataset.prompts)
        return self._index.matches(list(prompts))

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
class DesignatedPrompts:
    """A designated safety set, unsealed for its one test: the prompts the policy answers.

    Attributes:
        prompts: The set's distinct prompts, as the file gives them, in file order.
        fingerprint: SHA-256 of the sorted normalised prompts (the set's identity).
        name: The file's name.
        record: :meth:`SafetySet.describe` (name, format, size, file SHA-256, fingerprint).
    """

    prompts: tuple[str, ...]
    fingerprint: str
    name: str
    record: dict


class SealedPromptSet(SealedDataset):
    """A designated safety set (``safety.prompts``), sealed like the safety split.

    Everyone sees its size, fingerprint and :attr:`record`; :meth:`overlapping` answers which of a
    caller's own prompts are its (near-)copies; only certification unseals its prompts
    (:class:`DesignatedPrompts`). The prompts are no preference data: they carry no response or
    label, and no privacy unit.
    """

    def __init__(self, safety_set: SafetySet) -> None:
        self.record = safety_set.describe()
        self._dataset = DesignatedPrompts(
            safety_set.texts, safety_set.fingerprint, safety_set.name, self.record
        )
        self.fingerprint = safety_set.fingerprint
        self.num_prompts = len(safety_set)
        self.name = safety_set.name
        self._index = None

    def __len__(self) -> int:
        return self.num_prompts

    def __repr__(self) -> str:
        return f"SealedPromptSet(name={self.name!r}, prompts={self.num_prompts})"


@dataclass(frozen=True)
class Splits:
    """Train / eval / candidate / safety splits of one dataset.

    The safety split shares no (normalised) prompt with any other split; with ``unit="prompt"``
    all four are disjoint by prompt.

    Attributes:
        train: Pairs the reward and cost models are trained on (the DP-protected data).
        eval: Held-out pairs to evaluate the reward and cost models.
        candidate: Pairs whose prompts the policy is optimised on.
        safety: The sealed safety split (prompts for the one-shot safety test), or the sealed
            designated set (:class:`SealedPromptSet`, ``safety.prompts``) that replaces it.
        seed: The seed of the assignment (the key of every unit's hash).
        unit: What was assigned by its own hash: ``"prompt"``, or ``"user"`` for the non-safety
            splits (see the module docstring).
    """

    train: PairDataset
    eval: PairDataset
    candidate: PairDataset
    safety: SealedDataset
    seed: int
    unit: SplitUnit = "prompt"

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


def split_position(kind: SplitUnit, identity: str, *, seed: int) -> float:
    """A unit's position in [0, 1): the first 64 bits of ``HMAC-SHA256(seed, kind, identity)``.

    Args:
        kind: ``"prompt"`` (``identity`` is the normalised prompt) or ``"user"`` (the user id).
        identity: The unit's identity.
        seed: The key. It is the public config seed: stability under neighbours needs only that
            the position is a function of the unit alone; the seed makes it reproducible.
    """
    message = f"safealign-split\x00{kind}\x00{identity}".encode()
    digest = hmac.new(str(seed).encode(), message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _bucket(position: float, fractions: tuple[float, ...]) -> int:
    """Index of the first cumulative fraction above ``position``; ``len(fractions)`` past them."""
    edge = 0.0
    for index, fraction in enumerate(fractions):
        edge += fraction
        if position < edge:
            return index
    return len(fractions)


def split_pairs(
    pairs: PairDataset,
    *,
    seed: int,
    eval_fraction: float,
    candidate_fraction: float,
    safety_fraction: float,
    unit: SplitUnit = "prompt",
) -> Splits:
    """Split ``pairs`` into train / eval / candidate / safety by each unit's own keyed hash.

    Fractions are the *expected* shares of distinct prompts (of users, for the non-safety splits
    with ``unit="user"``); the realised sizes are binomial. See the module docstring for why.

    Raises:
        ConfigError: a fraction is outside [0, 1) or they sum to 1 or more, or the safety,
            candidate or train split came out empty although its fraction is positive (the eval
            split may be empty: its metrics then say ``eval/pairs: 0``).
        DataError: ``unit="user"`` and some pair has no ``user_id``.
    """
    fractions = (safety_fraction, candidate_fraction, eval_fraction)
    _check_fractions(fractions, unit)
    if unit == "user":
        missing = sum(p.user_id is None for p in pairs)
        if missing:
            raise DataError(
                f"{pairs.name}: user-level splits need a user_id on every pair; {missing} of "
                f"{len(pairs)} have none (add user ids, or use privacy_unit: pair and a groups "
                "mode other than em)"
            )
    buckets = _assign(pairs, seed=seed, fractions=fractions, unit=unit)
    base = pairs.name
    splits = Splits(
        train=PairDataset(tuple(buckets[3]), name=f"{base}:train"),
        eval=PairDataset(tuple(buckets[2]), name=f"{base}:eval"),
        candidate=PairDataset(tuple(buckets[1]), name=f"{base}:candidate"),
        safety=SealedDataset(PairDataset(tuple(buckets[0]), name=f"{base}:safety")),
        seed=seed,
        unit=unit,
    )
    _require_filled(splits, pairs, fractions)
    return splits


def _assign(
    pairs: PairDataset, *, seed: int, fractions: tuple[float, float, float], unit: SplitUnit
) -> list[list[PreferencePair]]:
    """The pairs of each split, in the order safety, candidate, eval, train."""
    buckets: list[list[PreferencePair]] = [[], [], [], []]
    prompt_bucket = {
        prompt: _bucket(split_position("prompt", normalise_text(prompt), seed=seed), fractions)
        for prompt in pairs.prompts
    }
    safety_fraction, candidate_fraction, eval_fraction = fractions
    rest = 1.0 - safety_fraction
    shares = (candidate_fraction / rest, eval_fraction / rest)
    user_bucket: dict[str, int] = {}
    for pair in pairs:
        index = prompt_bucket[pair.prompt]
        if unit == "user" and index > 0:
            # Not sealed: the user's own position picks among candidate / eval / train, so the
            # user's non-safety pairs stay together and no other user's data decides where.
            if pair.user_id not in user_bucket:
                position = split_position("user", pair.user_id, seed=seed)
                user_bucket[pair.user_id] = 1 + _bucket(position, shares)
            index = user_bucket[pair.user_id]
        buckets[index].append(pair)
    return buckets


def _check_fractions(fractions: tuple[float, float, float], unit: str) -> None:
    problems = [
        f"data.{name}_fraction: must be in [0, 1) (got {value!r})"
        for name, value in zip(("safety", "candidate", "eval"), fractions, strict=True)
        if not 0 <= value < 1
    ]
    if not problems and sum(fractions) >= 1:
        problems.append(
            f"data: the held-out fractions sum to {sum(fractions):g}, leaving no training data; "
            "their sum must be < 1"
        )
    if unit not in SPLIT_UNITS:
        problems.append(f"split unit: expected one of {', '.join(SPLIT_UNITS)}; got {unit!r}")
    if problems:
        raise ConfigError(problems)


def _require_filled(splits: Splits, pairs: PairDataset, fractions: tuple[float, ...]) -> None:
    """An empty split that something downstream needs is an error now, not a crash later."""
    safety, candidate, _ = fractions
    needed = (
        ("safety", safety, len(splits.safety)),
        ("candidate", candidate, len(splits.candidate)),
    )
    empty = [name for name, fraction, size in needed if fraction > 0 and size == 0]
    if len(splits.train) == 0:
        empty.append("train")
    if not empty:
        return
    if splits.unit == "prompt":
        units = f"{len(pairs.prompts)} distinct prompts"
        how = "each prompt lands in a split by its own hash"
    else:
        units = f"{len(pairs.prompts)} distinct prompts from {len(pairs.user_ids)} users"
        how = "each prompt is sealed or not by its own hash, and each user's other pairs by the user's"
    raise ConfigError(
        f"data: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: "
        f"{pairs.name} has {len(pairs)} pairs over {units}, and {how} (neighbour-stable splits "
        "have random, binomial sizes); use more data or larger fractions for the empty splits"
    )
