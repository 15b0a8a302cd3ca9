"""The feature backbone: parsing to ids, the ScalarModel shape convention, save/load, config
checks, and DP utility on the synthetic world against its Bayes accuracy."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from safealign.config import ModelConfig, SyntheticConfig, load_config
from safealign.data import synthetic_text as text
from safealign.data.splits import split_pairs
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError, DataError
from safealign.models.evaluate import auroc
from safealign.models.features import (
    NUM_SLOTS,
    SLOTS,
    VOCAB_SIZE,
    FeatureBackbone,
    FeatureTokenizer,
)
from safealign.models.scalar import build_scoring_model, load_scoring_model, save_scoring_model
from safealign.privacy.training import train_cost_model, train_reward_model

FEATURES = ["reward_model.backbone=features", "reward_model.lora=null"]


def _decode(row: list[int]) -> dict:
    """Slot values of one id row, checking each id lies in its own slot's range."""
    out, offset = {}, 0
    for (name, values), i in zip(SLOTS, row, strict=True):
        assert offset <= i < offset + len(values), (name, i)
        out[name] = values[i - offset]
        offset += len(values)
    return out


def test_rendered_texts_parse_to_their_features():
    tokenizer = FeatureTokenizer()
    prompts, responses, expected = [], [], []
    for topic in text.TOPICS:
        for severity in range(4):
            task = text.TASKS[topic][severity]
            for refusal, detail, style, variant in (
                (False, 3, 1, 0),
                (False, 0, -1, 5),
                (True, 0, 1, 1),
                (True, 0, -1, 2),
                (False, 4, -1, 7),
            ):
                features = text.ResponseFeatures(refusal=refusal, detail=detail, style=style)
                prompts.append(text.render_prompt(topic, severity, 1, 2, 3))
                responses.append(text.render_response(task, features, variant))
                expected.append(
                    dict(
                        topic=topic, severity=severity, refusal=refusal, detail=detail, style=style
                    )
                )
    prompts.append("What is the capital of France?")  # unrecognised: a harmless non-answer
    responses.append("Paris.")
    expected.append(dict(topic=None, severity=None, refusal=False, detail=0, style=0))

    batch = tokenizer(
        prompts,
        responses,
        truncation="longest_first",
        max_length=128,
        padding="max_length",
        return_tensors="pt",
    )
    assert batch["input_ids"].shape == (len(prompts), NUM_SLOTS)
    assert batch["input_ids"].dtype == torch.long and bool(batch["attention_mask"].eq(1).all())
    assert [_decode(row) for row in batch["input_ids"].tolist()] == expected
    assert int(batch["input_ids"].max()) < VOCAB_SIZE == len(tokenizer)
    with pytest.raises(ValueError, match="below the 5 feature slots"):
        tokenizer(prompts[:1], responses[:1], max_length=4)
    with pytest.raises(ValueError, match="torch tensors only"):
        tokenizer(prompts[:1], responses[:1], return_tensors="np")


def test_scalar_model_reads_the_backbone_state_with_first_pooling():
    scoring = build_scoring_model(load_config(None, FEATURES).reward_model, kind="reward", seed=0)
    model = scoring.model
    assert model.pooling == "first" and isinstance(model.backbone, FeatureBackbone)
    enc = scoring.encode(
        ["How can I bake a loaf of bread?"] * 2,
        ["Sure thing! Here's the deal.", "Nah, I can't help you x, sorry!"],
    )
    assert enc["input_ids"].shape == (2, NUM_SLOTS)  # no padding to max_length
    hidden = model.backbone(**enc).last_hidden_state
    assert hidden.shape == (2, 1, model.backbone.config.hidden_size)
    # The score is the MLP's output layer (the head) on the backbone's one state per row.
    torch.testing.assert_close(model(**enc), model.head(hidden[:, 0]).squeeze(-1))
    with pytest.raises(ValueError, match=r"feature ids must be \[rows, k \* 5\]"):
        model.backbone(torch.zeros(2, 7, dtype=torch.long))
    # A pair's two responses in one row (ghost clipping's layout): one state per response.
    two = model.backbone(enc["input_ids"].reshape(1, 2 * NUM_SLOTS)).last_hidden_state
    torch.testing.assert_close(two, hidden.reshape(1, 2, -1))
    # Seeded: the same seed gives the same weights, another seed other weights.
    same = build_scoring_model(load_config(None, FEATURES).reward_model, kind="reward", seed=0)
    other = build_scoring_model(load_config(None, FEATURES).reward_model, kind="reward", seed=1)
    torch.testing.assert_close(same.model(**enc), model(**enc))
    assert not torch.allclose(other.model(**enc), model(**enc))


def test_save_and_load_round_trip(tmp_path):
    world = SyntheticWorld(SyntheticConfig(num_prompts=40, num_users=4, pairs_per_user=10), seed=0)
    pairs = world.pairs
    scoring = build_scoring_model(load_config(None, FEATURES).reward_model, kind="cost", seed=3)
    save_scoring_model(scoring, tmp_path / "m")
    names = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*"))
    assert names == [
        "features",
        "features/features.json",
        "features/model.safetensors",
        "head.safetensors",
        "scalar_model.json",
    ]
    meta = json.loads((tmp_path / "m" / "scalar_model.json").read_text())
    assert meta["backbone"] == "features" and meta["pooling"] == "first" and meta["kind"] == "cost"

    loaded = load_scoring_model(tmp_path / "m")
    prompts = [p.prompt for p in pairs]
    responses = [p.chosen for p in pairs]
    assert loaded.kind == "cost"
    torch.testing.assert_close(
        loaded.score(prompts, responses), scoring.score(prompts, responses), atol=0, rtol=0
    )

    spec_path = tmp_path / "m" / "features" / "features.json"
    spec = json.loads(spec_path.read_text())
    spec["slots"]["detail"] = [0, 1, 2]  # saved by a parser with other values: ids would lie
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match="differ from this safealign's parser"):
        load_scoring_model(tmp_path / "m")


def test_config_checks_for_the_feature_backbone(tmp_path):
    cfg = load_config(None, FEATURES)
    assert cfg.reward_model.backbone == "features"
    with pytest.raises(ConfigError, match="set reward_model.lora: null"):
        load_config(None, ["reward_model.backbone=features"])
    data = tmp_path / "pairs.jsonl"
    with pytest.raises(ConfigError) as info:
        load_config(None, [*FEATURES, f"data.source={data}", "reward_model.pooling=mean"])
    message = str(info.value)
    assert "needs data.source: synthetic" in message and "set reward_model.pooling: auto" in message
    # Configs built in code skip load-time checks; building the model checks again.
    with pytest.raises(ConfigError, match="set cost_model.lora: null"):
        build_scoring_model(ModelConfig(backbone="features"), kind="cost", seed=0)


def _utility_world():
    """One annotator group, so one reward model can reach the Bayes accuracy."""
    config = SyntheticConfig(
        num_prompts=1000,
        num_users=100,
        pairs_per_user=50,
        group_weights={"all": 1.0},
        style_preference={"all": 0.3},
    )
    world = SyntheticWorld(config, seed=0)
    splits = split_pairs(
        world.pairs, seed=0, eval_fraction=0.2, candidate_fraction=0.0, safety_fraction=0.0
    )
    return world, splits.train, splits.eval


@pytest.mark.integration
def test_dp_feature_models_reach_bayes_accuracy_and_safety_auroc():
    world, train, held_out = _utility_world()
    assert 3500 <= len(train) <= 4500
    models = [
        f"{m}.{k}"
        for m in ("reward_model", "cost_model")
        for k in (
            "backbone=features",
            "lora=null",
            "train.epochs=3",
            "train.batch_size=256",
            "train.lr=0.01",
            "privacy.max_grad_norm=3",
            "privacy.target_epsilon=3",
            "privacy.target_delta=1e-5",
            "privacy.privacy_unit=pair",
        )
    ]
    cfg = load_config(None, models)
    start = time.perf_counter()
    reward = train_reward_model(
        train, config=cfg.reward_model, seed=0, eval_pairs=held_out, progress=False
    )
    cost = train_cost_model(
        train, config=cfg.cost_model, seed=0, eval_pairs=held_out, progress=False
    )
    seconds = time.perf_counter() - start
    assert reward.receipt.private and reward.receipt.epsilon <= 3.0
    assert cost.receipt.private and cost.receipt.epsilon <= 3.0

    # Measured, seeds 0-3: DP accuracy 0.729-0.738 (seed 0: 0.7366) vs Bayes 0.7481, and the Bayes
    # rule's realised accuracy on these noisy labels is 0.7366; safety AUROC 0.916-0.917 where the
    # true cost itself reaches 0.9185 (labels are drawn with P(unsafe) = σ(c): no model does better).
    bayes = world.bayes_accuracy(held_out)
    accuracy = reward.receipt.metrics["eval/pair_accuracy"]
    assert accuracy >= bayes - 0.03, (accuracy, bayes)
    prompts = [p.prompt for p in held_out]
    true_cost = np.concatenate(
        [
            world.true_cost(prompts, [p.chosen for p in held_out]),
            world.true_cost(prompts, [p.rejected for p in held_out]),
        ]
    )
    unsafe = torch.tensor(
        [not p.chosen_safe for p in held_out] + [not p.rejected_safe for p in held_out]
    )
    oracle = auroc(torch.tensor(true_cost), unsafe)
    model_auroc = cost.receipt.metrics["eval/safety_auroc"]
    assert model_auroc > 0.9 and model_auroc > oracle - 0.01, (model_auroc, oracle)
    assert seconds < 30, seconds
