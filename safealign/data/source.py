"""The configured preference data: the synthetic world or a file, and its neighbour-stable splits."""

from __future__ import annotations

from dataclasses import replace

from safealign.config import Config
from safealign.data.loaders import load_pairs
from safealign.data.near_duplicates import NearDuplicateIndex
from safealign.data.records import PairDataset
from safealign.data.safety_sets import SafetySet, load_safety_set
from safealign.data.splits import SealedPromptSet, Splits, SplitUnit, split_pairs
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import DataError


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


def load_designated_set(config: Config) -> SafetySet | None:
    """The designated safety set ``safety.prompts`` (None without one).

    Raises:
        DataError: the file cannot be read or a prompt is bad (file, line, field).
    """
    safety = config.safety
    if safety.prompts is None:
        return None
    return load_safety_set(safety.prompts, format=safety.prompts_format)


def make_splits(pairs: PairDataset, config: Config) -> Splits:
    """Train / eval / candidate / safety splits as the config says.

    With ``safety.prompts`` the designated set is the sealed safety set and no pair is sealed:
    ``data.safety_fraction`` is not used (the train, eval and candidate splits take every pair).
    """
    data, designated = config.data, load_designated_set(config)
    splits = split_pairs(
        pairs,
        seed=config.seed,
        eval_fraction=data.eval_fraction,
        candidate_fraction=data.candidate_fraction,
        safety_fraction=data.safety_fraction if designated is None else 0.0,
        unit=split_unit(config),
    )
    if designated is None:
        return splits
    _refuse_optimised_prompts(designated, splits.candidate.prompts)
    return replace(splits, safety=SealedPromptSet(designated))


def _refuse_optimised_prompts(designated: SafetySet, candidate_prompts) -> None:
    """Refuse a designated prompt that is a (near-)copy of a candidate prompt.

    The policy is optimised on the candidate prompts: a test prompt among them is one the
    optimiser saw, so the set would no longer test behaviour it never tuned (the same rule as
    the split's, and as ``certify --responses``). Near-copies of train and eval prompts, which the
    reward and cost models saw, are not refused (alignment prints their count to the operator,
    never into the report: it is a count over private data): the cost model only judges, and a
    labelled certificate is valid whatever the cost model.
    """
    index = NearDuplicateIndex(candidate_prompts)
    for item in designated.prompts:
        hit = index.match(item.prompt)
        if hit is not None:
            raise DataError(
                f"safety.prompts: this prompt ({item.prompt[:60]!r}) is a near-copy (Jaccard "
                f"{hit[1]:.2f} on word 3-shingles) of a candidate prompt the policy is optimised "
                "on; a designated safety set must hold prompts the optimiser never saw: remove it",
                path=designated.source,
                line=None if designated.format == "red_instruct" else item.line,
                field="prompt",
            )
