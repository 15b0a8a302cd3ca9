"""The configured preference data: the synthetic world or a file, and its neighbour-stable splits."""

from __future__ import annotations

from safealign.config import Config
from safealign.data.loaders import load_pairs
from safealign.data.records import PairDataset
from safealign.data.splits import Splits, SplitUnit, split_pairs
from safealign.data.synthetic import SyntheticWorld


def load_source(config: Config) -> tuple[PairDataset, SyntheticWorld | None]:
    """All pairs of ``config.data.source`` (and the world, when synthetic)."""
    data = config.data
    if data.source == "synthetic":
        world = SyntheticWorld(data.synthetic, seed=config.seed)
        return world.pairs, world
    return load_pairs(data.source, format=data.format, chosen_is_safer=data.chosen_is_safer), None


def split_unit(config: Config) -> SplitUnit:
    """``"user"`` when anything trained on the split protects users, else ``"prompt"``.

    User-level DP (``privacy_unit: user`` in the reward or cost model) and EM's user clusters
    (``groups.mode: em``, which trains at user level) protect a user's pairs together; splitting
    them by user keeps each user's non-safety pairs in one split.
    """
    user_level = any(
        m.privacy.privacy_unit == "user" for m in (config.reward_model, config.cost_model)
    )
    return "user" if user_level or config.groups.mode == "em" else "prompt"


def make_splits(pairs: PairDataset, config: Config) -> Splits:
    """Train / eval / candidate / safety splits as the config says."""
    data = config.data
    return split_pairs(
        pairs,
        seed=config.seed,
        eval_fraction=data.eval_fraction,
        candidate_fraction=data.candidate_fraction,
        safety_fraction=data.safety_fraction,
        unit=split_unit(config),
    )
