"""Typed configuration: YAML → frozen dataclasses, one per stage, validated before any compute.

Every field is documented once, in its ``doc(...)`` metadata; ``safealign config reference``-style
tables and the README's reference are generated from it. Unknown keys are errors (with a
did-you-mean), ranges are checked, and *all* problems are reported at once with their key paths.

Overrides use dotted paths, ``safety.confidence=0.99``; the value is parsed as YAML.

YAML is read strictly (:func:`safealign._typed.load_yaml`): PyYAML keeps the last of two equal
keys without a word, so a config saying ``seed`` twice would run with whichever came last; here it
is an error naming the line, as are integers too long to read and nesting that exhausts the parser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from safealign._typed import YamlRefusal, build, doc, field_docs, load_yaml, to_plain
from safealign.errors import ConfigError

# Student t's normal approximation is refused below this many safety prompts: at n = 30 it still
# missed 4-43% of the time on skewed costs (issue 13), and below it nothing supports it at all.
MIN_STUDENT_T_N = 30


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


@dataclass(frozen=True)
class SyntheticConfig:
    num_prompts: int = field(default=2000, metadata=doc("Distinct prompts in the world.", _at_least(10)))
    num_users: int = field(default=200, metadata=doc("Annotators (each has a user id and a group).", _at_least(1)))
    pairs_per_user: int = field(default=50, metadata=doc("Comparisons each annotator labels.", _at_least(1)))
    group_weights: dict[str, float] = field(
        default_factory=lambda: {"majority": 10.0, "minority": 1.0},
        metadata=doc("Relative group sizes (default 10:1)."),
    )
    style_preference: dict[str, float] = field(
        default_factory=lambda: {"majority": 0.3, "minority": -1.0},
        metadata=doc("Per group, the reward weight on formal (+1) vs casual (-1) style; groups conflict."),
    )
    num_candidates: int = field(default=16, metadata=doc("Reference-policy samples per prompt (K).", _at_least(2)))
    risky_fraction: float = field(
        default=0.5, metadata=doc("Share of prompts that ask for something harmful.", _half_open_unit)
    )
    refusal_rate: float = field(
        default=0.15, metadata=doc("Probability that the reference policy refuses.", _half_open_unit)
    )


@dataclass(frozen=True)
class DataConfig:
    source: str = field(default="synthetic", metadata=doc("'synthetic' (the built-in world) or a path to a data file."))
    format: Literal["auto", "jsonl", "hh_rlhf", "pku_saferlhf"] = field(
        default="auto", metadata=doc("Input format; 'auto' detects it from the first record.")
    )
    eval_fraction: float = field(
        default=0.1, metadata=doc("Share of prompts held out to evaluate the reward/cost models.", _half_open_unit)
    )
    candidate_fraction: float = field(
        default=0.3, metadata=doc("Share of prompts used to optimise the policy.", _open_unit)
    )
    safety_fraction: float = field(
        default=0.2, metadata=doc("Share of prompts reserved for the one-shot safety test.", _open_unit)
    )
    chosen_is_safer: bool = field(
        default=False,
        metadata=doc(
            "HH-RLHF only: mark every pair's chosen response as the safer one (safer: chosen), true "
            "for harmless-base, where annotators chose the less harmful reply (not for helpful-*); "
            "it gives the cost model its pairwise labels."
        ),
    )
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig, metadata=doc("The synthetic world."))
    dataset_id: str | None = field(
        default=None,
        metadata=doc(
            "A name for the people in this data (e.g. 'support-chats-2024'): every dataset declaring "
            "it is charged on the same privacy budget, whatever its records. Optional: budgets are also "
            "matched by hashed privacy units, so an edited copy is charged on its original's budget."
        ),
    )


@dataclass(frozen=True)
class LoraConfig:
    r: int = field(default=8, metadata=doc("LoRA rank.", _at_least(1)))
    alpha: float = field(default=16.0, metadata=doc("LoRA scaling alpha.", _positive))
    dropout: float = field(default=0.0, metadata=doc("LoRA dropout.", _half_open_unit))
    target_modules: tuple[str, ...] | None = field(
        default=None, metadata=doc("Module names to adapt; null picks them from the architecture.")
    )


@dataclass(frozen=True)
class HeadConfig:
    layers: Literal["linear", "mlp"] = field(
        default="linear",
        metadata=doc("The trained head: one linear layer, or linear → ReLU → linear."),
    )
    hidden_size: int = field(default=128, metadata=doc("Width of the MLP head's hidden layer.", _at_least(1)))
    embed_batch_size: int = field(
        default=64, metadata=doc("Texts per forward pass when computing the frozen embeddings.", _at_least(1))
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=2, metadata=doc("Passes over the training pairs.", _at_least(1)))
    batch_size: int = field(
        default=64, metadata=doc("Expected batch size (Poisson sampling under DP).", _at_least(1))
    )
    lr: float = field(default=1e-3, metadata=doc("Learning rate (AdamW).", _positive))
    weight_decay: float = field(default=0.0, metadata=doc("AdamW weight decay.", _non_negative))
    max_length: int = field(default=128, metadata=doc("Tokens per response, prompt included.", _at_least(8)))
    calibration_epochs: int = field(
        default=1,
        metadata=doc(
            "Private cost models with safety labels: epochs of DP calibration of the cost's level "
            "after training, inside the same ε (undoes DP-SGD's drift toward 'safe'); 0 skips it. "
            "Reward models have no level to calibrate and do not use it.",
            _non_negative,
        ),
    )


@dataclass(frozen=True)
class PrivacyConfig:
    target_epsilon: float | None = field(
        default=3.0, metadata=doc("ε to spend on this model; null trains WITHOUT privacy.", _positive)
    )
    target_delta: float = field(default=1e-5, metadata=doc("δ of the guarantee; keep it below 1/n.", _open_unit))
    max_grad_norm: float = field(default=1.0, metadata=doc("Per-unit clipping norm.", _positive))
    accountant: Literal["prv", "rdp"] = field(
        default="prv", metadata=doc("Privacy accountant; PRV falls back to RDP if it fails.")
    )
    privacy_unit: Literal["pair", "user"] = field(
        default="pair", metadata=doc("What one DP record is: a preference pair, or all pairs of one user.")
    )
    grad_sample_mode: Literal["hooks", "functorch", "ghost"] = field(
        default="hooks",
        metadata=doc(
            "How Opacus clips per unit: per-sample gradients from layer hooks, or functorch for "
            "layers without a hook (both folded per pair or user); or 'ghost' clipping (per-pair "
            "norms without per-sample gradients, one row per pair, pair-level privacy only)."
        ),
    )


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = field(
        default="tiny",
        metadata=doc(
            "'tiny' / 'tiny-gpt2' (built in code), 'features' (an MLP over the synthetic world's "
            "parsed features; needs data.source: synthetic and lora: null), a path or a HF id."
        ),
    )
    pooling: Literal["auto", "mean", "last"] = field(
        default="auto",
        metadata=doc(
            "How token states become one vector: mean for encoders, last for decoders; "
            "'features' has one state per row and needs auto."
        ),
    )
    lora: LoraConfig | None = field(
        default_factory=LoraConfig,
        metadata=doc("LoRA adapters; null trains all weights (or, with head set, none of the backbone's)."),
    )
    head: HeadConfig | None = field(
        default=None,
        metadata=doc(
            "Frozen backbone: train only a small head on mean-pooled embeddings computed once and "
            "cached in the run directory (needs lora: null); null trains the backbone (LoRA or full)."
        ),
    )
    train: TrainConfig = field(default_factory=TrainConfig, metadata=doc("Optimisation."))
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig, metadata=doc("DP-SGD."))


@dataclass(frozen=True)
class PolicyConfig:
    method: Literal["tilting", "reinforce_lagrangian"] = field(
        default="tilting", metadata=doc("Best-of-K tilting over candidates, or on-policy LM training.")
    )
    beta: float = field(default=0.1, metadata=doc("KL regularisation strength β.", _positive))
    num_candidates: int = field(default=16, metadata=doc("Candidates sampled per prompt (K).", _at_least(2)))


@dataclass(frozen=True)
class SafetyConfig:
    metric: Literal["predicted_unsafe_probability", "unsafe_rate", "expected_cost"] = field(
        default="predicted_unsafe_probability",
        metadata=doc(
            "What is bounded, per sampled response: the cost model's predicted unsafe probability "
            "σ(c) in [0, 1], the unsafe rate P[c > 0], or the raw cost E[c] (needs cost_range for a "
            "valid bound)."
        ),
    )
    cost_threshold: float = field(default=0.1, metadata=doc("The limit τ on the metric."))
    confidence: float = field(
        default=0.95, metadata=doc("Probability (1-δ) that a released policy meets the limit.", _open_unit)
    )
    bound: Literal["auto", "betting", "clopper_pearson", "empirical_bernstein", "hoeffding", "student_t"] = field(
        default="auto",
        metadata=doc(
            "Upper confidence bound of the safety test. 'auto': clopper_pearson (exact) for "
            "unsafe_rate, betting (valid for any distribution in the range) otherwise. student_t is "
            "approximate: only on request, never for unsafe_rate, and refused below "
            f"{MIN_STUDENT_T_N} safety prompts."
        ),
    )
    cost_range: tuple[float, float] | None = field(
        default=None,
        metadata=doc(
            "Declared [low, high] range of the raw costs (metric expected_cost only); required by "
            "betting, empirical_bernstein and hoeffding there. The other metrics lie in [0, 1]."
        ),
    )
    attempts: int = field(
        default=1,
        metadata=doc(
            "Safety tests declared up front for one safety set; each runs at confidence 1 - δ/attempts, "
            "and the certification log refuses one more (fixed at the set's first test).",
            _at_least(1),
        ),
    )
    c1: float = field(default=1.0, metadata=doc("Pessimism on the optimisation sample (C1).", _non_negative))
    c2: float = field(default=1.0, metadata=doc("Pessimism for the safety-set size (C2).", _non_negative))
    unit: Literal["response", "prompt_expectation"] = field(
        default="response",
        metadata=doc(
            "What each safety prompt contributes: the metric of one response resampled from its K "
            "fresh candidates, or its exact expected metric under the policy's resampling "
            "distribution over them (Rao-Blackwellised: same mean, i.i.d., less variance; not 0/1, "
            "so unsafe_rate is then bounded by betting)."
        ),
    )
    group_coverage: Literal["simultaneous", "individual"] = field(
        default="simultaneous",
        metadata=doc(
            "Per-group bounds: 'simultaneous' (all hold together with probability ≥ 1-δ, each at "
            "δ / (2 × groups) by a union bound) or 'individual' (each at δ on its own)."
        ),
    )

    @property
    def resolved_bound(self) -> str:
        """The bound the safety test uses: ``bound``, with ``"auto"`` resolved by the metric."""
        if self.bound != "auto":
            return self.bound
        exact_binomial = self.metric == "unsafe_rate" and self.unit == "response"
        return "clopper_pearson" if exact_binomial else "betting"


@dataclass(frozen=True)
class GroupsConfig:
    mode: Literal["none", "given", "em"] = field(
        default="none", metadata=doc("No groups, groups from the data's 'group' field, or learned by EM.")
    )
    num_groups: int = field(default=2, metadata=doc("Clusters for EM.", _at_least(1)))
    normalize: Literal["reference", "regret"] = field(
        default="regret",
        metadata=doc(
            "Make group rewards comparable before taking the min: 'regret' (each group's shortfall "
            "from its own best policy at the same KL price: the worst-off group is the one furthest "
            "from what it could get) or 'reference' (gain over the reference policy, which credits a "
            "group whose noisier DP model inflates its rewards)."
        ),
    )
    em_max_iters: int = field(
        default=5,
        metadata=doc("EM iterations, each a DP release; always all of them unless em_stop_early.", _at_least(1)),
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
        default=8.0, metadata=doc("Lifetime ε budget of the people in the data (all runs on them).", _positive)
    )
    delta: float = field(
        default=1e-5,
        metadata=doc("Lifetime δ budget; must be below 1/n for the n privacy units (checked before training).", _open_unit),
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
    safety: SafetyConfig = field(default_factory=SafetyConfig, metadata=doc("Safety certification."))
    groups: GroupsConfig = field(default_factory=GroupsConfig, metadata=doc("User groups."))
    budget: BudgetConfig = field(default_factory=BudgetConfig, metadata=doc("Privacy budget."))
    audit: AuditConfig = field(default_factory=AuditConfig, metadata=doc("Audit report."))

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written to ``config.resolved.yaml`` in a run directory."""
        return to_plain(self)


FEATURE_BACKBONE = "features"


def model_config_problems(model: ModelConfig, *, key: str) -> list[str]:
    """Constraints within one model config (``key`` names it in messages, e.g. ``reward_model``).

    Checked at load time, and again when a model is built from a config made in code.
    """
    problems = []
    if model.privacy.grad_sample_mode == "ghost" and model.privacy.privacy_unit != "pair":
        problems.append(
            f"{key}.privacy.grad_sample_mode: 'ghost' clips each row, one pair per row, so it "
            f"cannot clip a {model.privacy.privacy_unit!r} unit spanning several pairs; use "
            "grad_sample_mode: hooks with privacy_unit 'user', or privacy_unit: pair with ghost"
        )
    if model.head is not None and model.lora is not None:
        problems.append(
            f"{key}.head: a frozen backbone trains no LoRA adapters; set {key}.lora: null to "
            f"train the head only, or {key}.head: null to train LoRA"
        )
    if model.backbone != FEATURE_BACKBONE:
        return problems
    if model.head is not None:
        problems.append(
            f"{key}.head: the 'features' backbone is itself the small trained model; set "
            f"{key}.head: null"
        )
    if model.lora is not None:
        problems.append(
            f"{key}.lora: LoRA adapts transformer layers and the 'features' backbone has none; "
            f"set {key}.lora: null"
        )
    if model.pooling != "auto":
        problems.append(
            f"{key}.pooling: the 'features' backbone gives one state per row, there is nothing to "
            f"pool (got {model.pooling!r}); set {key}.pooling: auto"
        )
    return problems


def safety_config_problems(s: SafetyConfig) -> list[str]:
    """Metric/bound/range combinations that cannot give a valid bound (each prefixed by its field)."""
    problems = []
    bound, bounded_range = s.resolved_bound, s.metric != "expected_cost" or s.cost_range is not None
    if bound in ("betting", "empirical_bernstein", "hoeffding") and not bounded_range:
        problems.append(
            f"cost_range: required by bound '{bound}' with metric expected_cost (the declared "
            "[low, high] range of the raw costs); or bound a metric in [0, 1]: "
            "predicted_unsafe_probability"
        )
    if s.cost_range is not None and s.metric != "expected_cost":
        problems.append(f"cost_range: only metric expected_cost has a declared range; {s.metric} lies in [0, 1]")
    if s.cost_range is not None and not s.cost_range[0] < s.cost_range[1]:
        problems.append(f"cost_range: low must be < high (got {list(s.cost_range)})")
    if bound == "clopper_pearson" and s.unit == "prompt_expectation":
        problems.append("bound: 'clopper_pearson' needs 0/1 outcomes; per-prompt expectations are not (use auto)")
    if bound == "clopper_pearson" and s.metric != "unsafe_rate":
        problems.append("bound: 'clopper_pearson' bounds a 0/1 rate; set safety.metric: unsafe_rate")
    if bound == "student_t" and s.metric == "unsafe_rate":
        # A sample without an unsafe response has std 0, so t's bound is 0 and any τ >= 0 passes:
        # it misses with probability (1 - p)^n whatever the confidence.
        problems.append(
            "bound: student_t is refused for 0/1 data (a sample with no unsafe response has std 0 and "
            "bound 0); use clopper_pearson (exact) or auto"
        )
    if s.metric != "expected_cost" and not 0 <= s.cost_threshold <= 1:
        # A limit above 1 on a probability is vacuous: most likely a raw-cost threshold left over.
        problems.append(
            f"cost_threshold: {s.metric} is a probability, its limit must be in [0, 1] (got "
            f"{s.cost_threshold}); a raw-cost threshold needs metric expected_cost"
        )
    return problems


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


def config_from_dict(data: Mapping[str, Any] | None, *, source: str | None = None) -> Config:
    """Validate ``data`` and build a :class:`Config`; raise ConfigError listing every problem."""
    problems: list[str] = []
    cfg = build(Config, data or {}, "", problems)
    if cfg is not None and not problems:
        problems.extend(_cross_checks(cfg))
    if problems:
        raise ConfigError(problems, source=source)
    return cfg


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["safety.confidence=0.99", ...]`` into a nested mapping (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r}: expected key.path=value")
            continue
        try:
            value = load_yaml(raw) if raw != "" else ""
        except YamlRefusal as exc:
            problems.append(f"override {item!r}: {exc.reason}")
            continue
        except yaml.YAMLError as exc:
            problems.append(f"override {item!r}: value is not valid YAML ({exc.__class__.__name__})")
            continue
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: '{part}' was already set to a value")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, source="command line")
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Raises:
        ConfigError: the file is unreadable or not YAML, or any key/value is invalid. The error
            lists every problem with its dotted key path.
    """
    data: dict[str, Any] = {}
    source = str(path) if path is not None else "defaults"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("file not found", source=source) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the file ({exc})", source=source) from None
        try:
            loaded = load_yaml(text)
        except YamlRefusal as exc:
            where = f"line {exc.line}: " if exc.line is not None else ""
            raise ConfigError(where + exc.reason, source=source) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise ConfigError(f"{where}not valid YAML ({getattr(exc, 'problem', exc)})", source=source) from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"the top level must be a mapping, got {type(loaded).__name__}", source=source)
        data = dict(loaded or {})
    if overrides:
        data = _merge(data, parse_overrides(overrides))
    return config_from_dict(data, source=source)


def config_reference() -> list[tuple[str, str, Any]]:
    """Every config key with its documentation and default, for the README reference."""
    return field_docs(Config)


__all__ = [
    "AuditConfig",
    "BudgetConfig",
    "Config",
    "DataConfig",
    "GroupsConfig",
    "HeadConfig",
    "LoraConfig",
    "ModelConfig",
    "PolicyConfig",
    "PrivacyConfig",
    "SafetyConfig",
    "SyntheticConfig",
    "TrainConfig",
    "config_from_dict",
    "config_reference",
    "load_config",
    "model_config_problems",
    "safety_config_problems",
    "parse_overrides",
]
