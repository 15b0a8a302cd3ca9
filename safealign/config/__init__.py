"""Typed configuration: YAML → frozen dataclasses, one per stage, validated before any compute.

Each section lives beside the rules that constrain it: ``data`` (data and splits, the synthetic
world), ``model`` (reward/cost models and :func:`model_config_problems`), ``safety`` (the safety
test and :func:`safety_config_problems`), ``root`` (policy, groups, budget, audit, the whole
:class:`Config` and the checks between sections), ``loading`` (YAML, overrides, the reference);
the field rules they share are in ``_rules``. Every name is importable from here.
"""

# Not in __all__ but importable from here, as before the split: to_plain (run/ imports it
# through this package) and the constants FEATURE_BACKBONE, MAX_SEED, MIN_STUDENT_T_N.
from safealign._typed import to_plain  # noqa: F401
from safealign.config._rules import MAX_SEED  # noqa: F401
from safealign.config.data import DataConfig, SyntheticConfig
from safealign.config.loading import (
    config_from_dict,
    config_reference,
    load_config,
    parse_overrides,
)
from safealign.config.model import (
    FEATURE_BACKBONE,  # noqa: F401
    HeadConfig,
    LoraConfig,
    ModelConfig,
    PrivacyConfig,
    TrainConfig,
    model_config_problems,
)
from safealign.config.policy import (
    BUILTIN_POLICY_MODELS,  # noqa: F401
    DistillConfig,
    SamplerConfig,
    SftConfig,
)
from safealign.config.root import AuditConfig, BudgetConfig, Config, GroupsConfig, PolicyConfig
from safealign.config.safety import (
    MIN_STUDENT_T_N,  # noqa: F401
    LabelsConfig,
    SafetyConfig,
    safety_config_problems,
)

__all__ = [
    "AuditConfig",
    "BudgetConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "GroupsConfig",
    "HeadConfig",
    "LoraConfig",
    "ModelConfig",
    "PolicyConfig",
    "PrivacyConfig",
    "LabelsConfig",
    "SafetyConfig",
    "SamplerConfig",
    "SftConfig",
    "SyntheticConfig",
    "TrainConfig",
    "config_from_dict",
    "config_reference",
    "load_config",
    "model_config_problems",
    "safety_config_problems",
    "parse_overrides",
]
