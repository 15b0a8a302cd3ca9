"""The release inventory's vocabulary: the entry types and the reasons, each written once.

Shared by the inventory's file families; the inventory itself is :mod:`safealign.audits.inventory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["dp", "post_processing", "public", "not_covered"]


@dataclass(frozen=True)
class Entry:
    """One classified field (or subtree) and why it may be released."""

    path: str
    kind: Kind
    reason: str


@dataclass(frozen=True)
class ReleasedFile:
    """A file of the run directory (``pattern``: an fnmatch pattern on its relative path)."""

    name: str
    pattern: str
    entries: tuple[Entry, ...]
    json: bool = True


# --- reasons, written once ---------------------------------------------------------------------
_CONFIG = "configuration chosen by the user before seeing the data"
_SCHEDULE = (
    "computed from the training schedule (sigma, q, T) and delta, which depend only on the "
    "configuration and the declared-public training-set size"
)
_SIZE_N = (
    "the training split's size n: declared public, as in Opacus' DP-SGD analysis (the published "
    "sampling rate q = B/n reveals it anyway); never a group's or a cluster's size"
)
_SPLIT_SIZES = "split sizes (pairs, prompts): declared public, like n and n_s"
_COMMITMENT = (
    "HMAC-SHA256 commitment keyed by the ledger's secret: without the key it reveals nothing, "
    "with it stages check they saw the same data"
)
_PUBLIC_SPLIT = (
    "plain SHA-256 of a split declared public (candidate and safety prompts are public inputs)"
)
_EVAL = (
    "measured on the eval split's held-out pairs, which the guarantee does not protect; the "
    "report lists that split as not protected"
)
_MODELS_ON_PUBLIC = "post-processing of the DP models on public prompts and reference samples"
_SAFETY = "the DP cost (and group) models scored on the public safety prompts' responses"
_VERSION = "software versions and platform of the machine that built the report"
_TEXT = "fixed text written by safealign"
_WHOLE_REPORT = "a rendering of report.json: the same fields, classified there"
_N_SAFETY = "n_s, the safety set's size: public by HC-RLHF's design (it sets the pessimism)"
_DIGEST = "SHA-256 of a released file: post-processing of that file's content"
_ATTEMPTS = (
    "when and how often the user tested this safety set (the certification log): the user's "
    "actions, not data"
)


def _e(path: str, kind: Kind, reason: str) -> Entry:
    return Entry(path, kind, reason)
