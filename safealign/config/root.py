"""The whole config (:class:`Config`), its remaining sections (policy, groups, budget, audit) and
the constraints between sections, checked once every field is valid on its own."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from safealign._typed import doc, to_plain
from safealign.config._rules import _at_least, _open_unit, _positive, _seed_range
from safealign.config.data import DataConfig
from safealign.config.model import FEATURE_BACKBONE, ModelConfig, model_config_problems
from safealign.config.policy import PolicyConfig, policy_config_problems
from safealign.config.safety import SafetyConfig, safety_config_problems


@dataclass(frozen=True)
class GroupsConfig:
    mode: Literal["none", "given", "em"] = field(
        default="none",
        metadata=doc("No groups, groups from the data's 'group' field, or learned by EM."),
    )
    num_groups: int = field(default=2, metadata=doc("Clusters for EM.", _at_least(1)))
    normalize: Literal["reference", "regret"] = field(
        default="regret",
        metadata=doc(
            "Make group rewards comparable before taking the min: 'regret' (each group's shortfall "
            "from its own best policy at the same KL price that also passes the cost bound: the "
            "worst-off group is the one furthest "
            "from what it could get) or 'reference' (gain over the reference policy, which credits a "
            "group whose noisier DP model inflates its rewards)."
        ),
    )
    em_max_iters: int = field(
        default=5,
        metadata=doc(
            "EM iterations, each a DP release; always all of them unless em_stop_early.",
            _at_least(1),
        ),
    )
    em_stop_early: bool = field(
        default=False,
        metadata=doc(
            "Stop EM once no user moves. Opt-in: the number of releases then depends on the data, which "
            "the DP guarantee does not cover (the report lists it as outside the guarantee)."
        ),
    )
    em_init: Literal["pooled", "random"] = field(
        default="pooled",
        metadata=doc(
            "EM's start: 'pooled' puts users whose pairs a pooled reward model explains worse than a coin "
            "flip in cluster 1, the rest in cluster 0 (the run trains that model: one more release); "
            "'random' draws seeded clusters, from which EM tends to split a large majority."
        ),
    )
    em_count_noise: float | None = field(
        default=5.0,
        metadata=doc(
            "Std (in users) of Gaussian noise on EM's cluster sizes, whose shares then act as a prior in the "
            "E-step (one more small mechanism per iteration; without it EM drifts toward equal cluster "
            "sizes); null: no prior.",
            _positive,
        ),
    )


@dataclass(frozen=True)
class BudgetConfig:
    epsilon: float = field(
        default=8.0,
        metadata=doc("Lifetime ε budget of the people in the data (all runs on them).", _positive),
    )
    delta: float = field(
        default=1e-5,
        metadata=doc(
            "Lifetime δ budget; must be below 1/n for the n privacy units (checked before training).",
            _open_unit,
        ),
    )
    ledger: str | None = field(
        default=None,
        metadata=doc(
            "SQLite ledger path; null: the per-user ledger ($SAFEALIGN_HOME/ledger.sqlite, else "
            "$XDG_DATA_HOME/safealign/ledger.sqlite, else ~/.local/share/safealign/ledger.sqlite)."
        ),
    )


@dataclass(frozen=True)
class AuditConfig:
    formats: tuple[Literal["json", "html", "md"], ...] = field(
        default=("json", "html", "md"), metadata=doc("Report files to write.")
    )
    signing_key: str | None = field(
        default=None,
        metadata=doc(
            "Ed25519 private key (PEM); null signs with the per-user demo key (NOT a real identity)."
        ),
    )


@dataclass(frozen=True)
class Config:
    seed: int = field(
        default=0,
        metadata=doc(
            "Seed of splits, initialisation and non-private runs (0 to 2**32 - 1); DP sampling "
            "and noise are secret, never derived from it.",
            _seed_range,
        ),
    )
    data: DataConfig = field(default_factory=DataConfig, metadata=doc("Data and splits."))
    reward_model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("Reward model."))
    cost_model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("Cost model."))
    policy: PolicyConfig = field(default_factory=PolicyConfig, metadata=doc("Policy optimisation."))
    safety: SafetyConfig = field(
        default_factory=SafetyConfig, metadata=doc("Safety certification.")
    )
    groups: GroupsConfig = field(default_factory=GroupsConfig, metadata=doc("User groups."))
    budget: BudgetConfig = field(default_factory=BudgetConfig, metadata=doc("Privacy budget."))
    audit: AuditConfig = field(default_factory=AuditConfig, metadata=doc("Audit report."))

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written to ``config.resolved.yaml`` in a run directory."""
        return to_plain(self)


def _cross_checks(cfg: Config) -> list[str]:
    """Constraints between fields, checked after each field is valid on its own."""
    problems = []
    d = cfg.data
    held = d.eval_fraction + d.candidate_fraction + d.safety_fraction
    if held >= 1:
        problems.append(
            f"data: eval_fraction + candidate_fraction + safety_fraction = {held:g} leaves no "
            "training data; their sum must be < 1"
        )
    problems.extend(f"safety.{p}" for p in safety_config_problems(cfg.safety))
    problems.extend(
        policy_config_problems(
            cfg.policy,
            data_source=d.source,
            safety_unit=cfg.safety.unit,
            designated=cfg.safety.prompts is not None,
            labelled=cfg.safety.labels is not None,
        )
    )
    for name in ("reward_model", "cost_model"):
        model = getattr(cfg, name)
        problems.extend(model_config_problems(model, key=name))
        if model.backbone == FEATURE_BACKBONE and d.source != "synthetic":
            problems.append(
                f"{name}.backbone: 'features' parses the synthetic world's texts, so it needs "
                f"data.source: synthetic (got {d.source!r}); use a text backbone (tiny, a path "
                "or a HF id) for other data"
            )
        p = model.privacy
        if p.target_epsilon is not None and p.target_delta > cfg.budget.delta:
            problems.append(
                f"{name}.privacy.target_delta: {p.target_delta:g} exceeds budget.delta {cfg.budget.delta:g}"
            )
        if p.target_epsilon is not None and p.target_epsilon > cfg.budget.epsilon:
            problems.append(
                f"{name}.privacy.target_epsilon: {p.target_epsilon:g} exceeds budget.epsilon {cfg.budget.epsilon:g}"
            )
    weights = cfg.data.synthetic.group_weights
    if not weights or any(not (math.isfinite(w) and w > 0) for w in weights.values()):
        problems.append("data.synthetic.group_weights: give at least one group, every weight > 0")
    if sorted(weights) != sorted(cfg.data.synthetic.style_preference):
        problems.append(
            "data.synthetic.style_preference: needs exactly the groups of group_weights "
            f"({sorted(weights)}), got {sorted(cfg.data.synthetic.style_preference)}"
        )
    if cfg.groups.mode == "em" and cfg.reward_model.privacy.grad_sample_mode == "ghost":
        problems.append(
            "reward_model.privacy.grad_sample_mode: groups.mode 'em' trains with user-level DP, "
            "which 'ghost' cannot clip (a user spans several pairs); use grad_sample_mode: hooks"
        )
    return problems
