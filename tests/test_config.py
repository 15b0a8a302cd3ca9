from pathlib import Path

import pytest

from safealign.config import (
    Config,
    GroupsConfig,
    config_from_dict,
    config_reference,
    load_config,
    parse_overrides,
)
from safealign.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.safety.confidence == 0.95
    assert cfg.reward_model.privacy.accountant == "prv"


def test_overrides_apply_and_parse_yaml_values():
    cfg = load_config(
        None, ["safety.confidence=0.99", "reward_model.lora=null", "audit.formats=[json]"]
    )
    assert cfg.safety.confidence == 0.99
    assert cfg.reward_model.lora is None
    assert cfg.audit.formats == ("json",)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "reward_model:\n  privacy: {target_delta: 1e-6}\n"
    )  # YAML 1.1 reads this as str
    assert load_config(path).reward_model.privacy.target_delta == 1e-6


def test_non_private_mode_is_null_epsilon():
    cfg = config_from_dict({"cost_model": {"privacy": {"target_epsilon": None}}})
    assert cfg.cost_model.privacy.target_epsilon is None


def test_all_problems_reported_at_once_with_paths():
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "safty": {},
                "safety": {"confidence": 1.0, "bound": "wald"},
                "reward_model": {"privacy": {"target_epsilon": 0, "target_delta": 2}},
                "policy": {"beta": "high"},
            }
        )
    problems = info.value.problems
    assert len(problems) == 6, problems
    text = str(info.value)
    assert "safty: unknown key; did you mean 'safety'?" in text
    assert "safety.confidence: must be strictly between 0 and 1" in text
    assert (
        "safety.bound: expected one of auto, betting, clopper_pearson, empirical_bernstein, "
        "hoeffding, student_t; got 'wald'"
    ) in text
    assert "reward_model.privacy.target_epsilon: must be > 0" in text
    assert "reward_model.privacy.target_delta" in text
    assert "policy.beta: expected float, got str 'high'" in text


def test_cross_field_checks():
    with pytest.raises(
        ConfigError, match="required by bound 'hoeffding' with metric expected_cost"
    ):
        config_from_dict({"safety": {"bound": "hoeffding", "metric": "expected_cost"}})
    with pytest.raises(ConfigError, match="leaves no training data"):
        config_from_dict(
            {"data": {"safety_fraction": 0.5, "candidate_fraction": 0.4, "eval_fraction": 0.1}}
        )
    with pytest.raises(ConfigError, match="exceeds budget.epsilon"):
        config_from_dict(
            {"budget": {"epsilon": 1.0}, "reward_model": {"privacy": {"target_epsilon": 2.0}}}
        )
    cfg = config_from_dict(
        {"safety": {"metric": "expected_cost", "bound": "hoeffding", "cost_range": [-3, 9]}}
    )
    assert cfg.safety.cost_range == (-3.0, 9.0)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_overrides(["safety.confidence"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["safety.confidense=0.9"])


def test_every_field_is_documented():
    rows = config_reference()
    assert len(rows) > 30
    undocumented = [key for key, text, _ in rows if not text]
    assert not undocumented


def test_em_start_and_size_prior_are_validated():
    cfg = load_config(None, ["groups.mode=em", "groups.em_init=random", "groups.em_count_noise=5"])
    assert (cfg.groups.em_init, cfg.groups.em_count_noise) == ("random", 5.0)
    assert GroupsConfig().em_init == "pooled" and GroupsConfig().em_count_noise == 5.0
    assert GroupsConfig().normalize == "regret"
    with pytest.raises(ConfigError) as info:
        load_config(None, ["groups.em_init=kmeans", "groups.em_count_noise=0"])
    assert len(info.value.problems) == 2
    assert "groups.em_init: expected one of pooled, random; got 'kmeans'" in str(info.value)
    assert "groups.em_count_noise: must be > 0" in str(info.value)


def test_resolved_config_round_trips():
    cfg = load_config(None, ["seed=7", "groups.mode=em"])
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_validate(path):
    load_config(path)


def test_readme_documents_every_config_key():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [key for key, _, _ in config_reference() if f"| `{key}` |" not in readme]
    assert not missing, (
        f"README config reference lacks {missing}; regenerate it from config_reference()"
    )


def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path):
    # PyYAML alone keeps the last value without a word: this config would run with seed 1.
    path = tmp_path / "c.yaml"
    path.write_text("seed: 0\nsafety:\n  confidence: 0.9\n  confidence: 0.5\n")
    with pytest.raises(
        ConfigError, match=r"line 4: duplicate key 'confidence' \(first given on line 3\)"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        parse_overrides(["safety={seed: 1, seed: 2}"])
    # A merge key is not a duplicate: keys beside '<<' override the merged ones, as YAML says.
    overrides = parse_overrides(["safety={<<: {c1: 2.0, c2: 3.0}, c2: 4.0}"])
    assert overrides == {"safety": {"c1": 2.0, "c2": 4.0}}


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seed_range_accepts_its_ends(seed):
    assert load_config(None, [f"seed={seed}"]).seed == seed


@pytest.mark.parametrize("seed", [-1, 2**32, 10**26])
def test_seed_out_of_range_is_refused_at_load_time(seed):
    with pytest.raises(ConfigError, match=r"seed: must be in \[0, 4294967295\]"):
        load_config(None, [f"seed={seed}"])


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999", "9" * 400])
def test_non_finite_floats_are_refused(value):
    with pytest.raises(ConfigError, match="policy.beta: must be a finite number"):
        load_config(None, [f"policy.beta={value}"])


def test_unreadable_numbers_and_text_are_config_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 0\npolicy:\n  num_candidates: " + "7" * 5000 + "\n")
    with pytest.raises(ConfigError, match="line 3: an integer with 5000 digits"):
        load_config(path)
    with pytest.raises(ConfigError, match="must fit in 64 bits"):
        load_config(None, [f"policy.num_candidates={2**70}"])
    with pytest.raises(ConfigError, match="nested too deeply"):
        path.write_text("seed: " + "[" * 50_000 + "]" * 50_000 + "\n")
        load_config(path)
    with pytest.raises(ConfigError, match="data.source: holds a lone surrogate"):
        load_config(None, ['data.source="\\udc80.jsonl"'])


def test_messages_do_not_dump_huge_values():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"policy": {"num_candidates": 10**5000}})
    assert "an integer of about 5001 digits" in str(info.value)
    assert len(str(info.value)) < 300
