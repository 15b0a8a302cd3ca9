"""Group reward models for MaxMin alignment: one DP reward model per group, given or found by EM."""

from safealign._lazy import lazy_exports

_EXPORTS = {
    "safealign.groups.training": ("train_group_reward_models",),
    "safealign.groups.common": ("GroupModels", "score_candidates"),
    "safealign.groups.em": ("train_em",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
