"""``data:``: the data source, its splits and the built-in synthetic world."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from safealign._typed import doc
from safealign.config._rules import _at_least, _half_open_unit, _open_unit


@dataclass(frozen=True)
class SyntheticConfig:
    num_prompts: int = field(
        default=2000, metadata=doc("Distinct prompts in the world.", _at_least(10))
    )
    num_users: int = field(
        default=200, metadata=doc("Annotators (each has a user id and a group).", _at_least(1))
    )
    pairs_per_user: int = field(
        default=50, metadata=doc("Comparisons each annotator labels.", _at_least(1))
    )
    group_weights: dict[str, float] = field(
        default_factory=lambda: {"majority": 10.0, "minority": 1.0},
        metadata=doc("Relative group sizes (default 10:1)."),
    )
    style_preference: dict[str, float] = field(
        default_factory=lambda: {"majority": 0.3, "minority": -1.0},
        metadata=doc(
            "Per group, the reward weight on formal (+1) vs casual (-1) style; groups conflict."
        ),
    )
    num_candidates: int = field(
        default=16, metadata=doc("Reference-policy samples per prompt (K).", _at_least(2))
    )
    risky_fraction: float = field(
        default=0.5,
        metadata=doc("Share of prompts that ask for something harmful.", _half_open_unit),
    )
    refusal_rate: float = field(
        default=0.15,
        metadata=doc("Probability that the reference policy refuses.", _half_open_unit),
    )


@dataclass(frozen=True)
class DataConfig:
    source: str = field(
        default="synthetic",
        metadata=doc("'synthetic' (the built-in world) or a path to a data file."),
    )
    format: Literal["auto", "jsonl", "hh_rlhf", "pku_saferlhf"] = field(
        default="auto", metadata=doc("Input format; 'auto' detects it from the first record.")
    )
    eval_fraction: float = field(
        default=0.1,
        metadata=doc(
            "Share of prompts held out to evaluate the reward/cost models.", _half_open_unit
        ),
    )
    candidate_fraction: float = field(
        default=0.3, metadata=doc("Share of prompts used to optimise the policy.", _open_unit)
    )
    safety_fraction: float = field(
        default=0.2,
        metadata=doc("Share of prompts reserved for the one-shot safety test.", _open_unit),
    )
    chosen_is_safer: bool = field(
        default=False,
        metadata=doc(
            "HH-RLHF only: mark every pair's chosen response as the safer one (safer: chosen), true "
            "for harmless-base, where annotators chose the less harmful reply (not for helpful-*); "
            "it gives the cost model its pairwise labels."
        ),
    )
    synthetic: SyntheticConfig = field(
        default_factory=SyntheticConfig, metadata=doc("The synthetic world.")
    )
    dataset_id: str | None = field(
        default=None,
        metadata=doc(
            "A name for the people in this data (e.g. 'support-chats-2024'): every dataset declaring "
            "it is charged on the same privacy budget, whatever its records. Optional: budgets are also "
            "matched by hashed privacy units, so an edited copy is charged on its original's budget."
        ),
    )
