"""Field rules shared by the config sections: each returns None or what is wrong with a value."""

from __future__ import annotations


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else "must be strictly between 0 and 1"


def _half_open_unit(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _at_least(n: int):
    return lambda v: None if v >= n else f"must be >= {n}"


#: Seeds are unsigned 32-bit: every generator takes them (numpy's SeedSequence, torch's
#: manual_seed), and stages derive seed + k from them without leaving torch's 64-bit range.
MAX_SEED = 2**32 - 1


def _seed_range(v: int) -> str | None:
    return None if 0 <= v <= MAX_SEED else f"must be in [0, {MAX_SEED}] (an unsigned 32-bit seed)"
