"""Frozen-backbone heads: DP training of the head alone on cached embeddings, save/load, cache keys."""

from __future__ import annotations

import json

import pytest
import torch

from safealign.config import HeadConfig, load_config
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError
from safealign.models.embeddings import CACHE_SUFFIX, EmbeddingCache, embedding_cache
from safealign.models.heads import MLPHead
from safealign.models.pairs import EmbeddedPairs, embed_pairs
from safealign.models.scalar import build_scoring_model, load_scoring_model
from safealign.privacy.dp_sgd import make_step, privacy_units
from safealign.privacy.plan import plan_training
from safealign.privacy.training import save_training_output, train_cost_model, train_reward_model

HEAD = ["reward_model.lora=null", "reward_model.head={layers: linear}"]


@pytest.fixture(scope="module")
def world_pairs():
    cfg = load_config(None, ["data.synthetic.num_users=4", "data.synthetic.pairs_per_user=16"])
    return SyntheticWorld(cfg.data.synthetic, seed=0).pairs


def _config(*extra: str):
    return load_config(None, [*HEAD, "reward_model.train.epochs=2",
                              "reward_model.train.batch_size=16", *extra]).reward_model  # fmt: skip


class _Counter:
    """Counts rows the backbone embeds (a forward hook on the backbone)."""

    def __init__(self, scoring) -> None:
        self.rows = 0
        scoring.model.backbone.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.rows += int(output.last_hidden_state.shape[0])


def test_head_and_lora_together_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"reward_model.head: .*set reward_model.lora: null"):
        load_config(None, ["reward_model.head={layers: mlp}"])
    with pytest.raises(ConfigError, match="cost_model.head"):
        load_config(None, ["cost_model.backbone=features", "cost_model.lora=null",
                           "cost_model.head={}", "data.source=synthetic"])  # fmt: skip
    assert load_config(None, HEAD).reward_model.head == HeadConfig()


def test_dp_trains_only_the_head_and_the_reloaded_model_scores_raw_text(world_pairs, tmp_path):
    config = _config()
    before = build_scoring_model(config, kind="reward", seed=0)
    result = train_reward_model(world_pairs, config=config, seed=0, progress=False)
    model = result.model.model
    assert result.receipt.private and result.receipt.epsilon <= 3.0 + 1e-6
    # The backbone is bit-for-bit the one built from the seed; the head moved.
    for (name, a), (_, b) in zip(
        before.model.backbone.state_dict().items(), model.backbone.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not torch.equal(before.model.head.weight, model.head.weight)
    assert all(not p.requires_grad for p in model.backbone.parameters())

    prompts = [p.prompt for p in world_pairs]
    chosen = [p.chosen for p in world_pairs]
    with embedding_cache(tmp_path / "cache"):
        via_cache = result.model.score(prompts, chosen)  # fills the cache
        cached = result.model.score(prompts, chosen)  # reads it
    torch.testing.assert_close(cached, via_cache, rtol=0, atol=0)
    save_training_output(result, tmp_path / "out")
    reloaded = load_scoring_model(tmp_path / "out" / "model")
    assert reloaded.model.frozen_backbone
    raw = reloaded.score(prompts, chosen)  # no cache: backbone + head on raw text
    torch.testing.assert_close(raw, via_cache, rtol=1e-5, atol=1e-5)
    # The reloaded backbone has the trained one's identity: it reads the entries training wrote.
    counter = _Counter(reloaded)
    with embedding_cache(tmp_path / "cache"):
        torch.testing.assert_close(reloaded.score(prompts, chosen), via_cache, rtol=0, atol=0)
    assert counter.rows == 0
    # ...and the plain forward over tokens (what a user without safealign computes) agrees.
    enc = reloaded.encode(prompts, chosen)
    with torch.no_grad():
        forward = reloaded.model(**enc)
    torch.testing.assert_close(forward, via_cache, rtol=1e-5, atol=1e-5)


def test_cache_hits_on_second_use_and_misses_for_another_backbone_or_text(world_pairs, tmp_path):
    scoring = build_scoring_model(_config(), kind="reward", seed=0)
    counter = _Counter(scoring)
    cache_dir = tmp_path / "embeddings"
    with embedding_cache(cache_dir):
        first = embed_pairs(scoring, world_pairs)
    rows = counter.rows
    assert rows == 2 * len(world_pairs)  # every (prompt, response) once (no duplicates here)
    assert list(cache_dir.rglob(f"*{CACHE_SUFFIX}"))
    with embedding_cache(cache_dir):  # a fresh cache object: read from disk, no forward pass
        second = embed_pairs(scoring, world_pairs)
    assert counter.rows == rows
    torch.testing.assert_close(second.embeddings, first.embeddings, rtol=0, atol=0)

    # Another backbone (another init seed: same architecture, other weights) misses.
    other = build_scoring_model(_config(), kind="reward", seed=1)
    other_counter = _Counter(other)
    with embedding_cache(cache_dir):
        other_pairs = embed_pairs(other, world_pairs)
    assert other_counter.rows == 2 * len(world_pairs)
    assert not torch.allclose(other_pairs.embeddings, first.embeddings)
    # Another text misses, only it; another max_length is another identity.
    with embedding_cache(cache_dir):
        scoring.embed(["a new prompt"], [world_pairs[0].chosen])
    assert counter.rows == rows + 1
    shorter = build_scoring_model(
        _config("reward_model.train.max_length=16"), kind="reward", seed=0
    )
    shorter_counter = _Counter(shorter)
    with embedding_cache(cache_dir):
        shorter.embed([world_pairs[0].prompt], [world_pairs[0].chosen])
    assert shorter_counter.rows == 1


def test_training_twice_in_one_cache_embeds_once(world_pairs, tmp_path):
    config = _config("reward_model.privacy.target_epsilon=null")
    calls = []
    original = EmbeddingCache.put

    def counting_put(self, identity, keys, embeddings):
        calls.append(len(keys))
        return original(self, identity, keys, embeddings)

    with pytest.MonkeyPatch.context() as patch, embedding_cache(tmp_path / "c"):
        patch.setattr(EmbeddingCache, "put", counting_put)
        a = train_reward_model(world_pairs, config=config, seed=0, progress=False)
        first = sum(calls)
        b = train_reward_model(world_pairs, config=config, seed=0, progress=False)
    assert first == 2 * len(world_pairs) and sum(calls) == first  # second run: all hits
    torch.testing.assert_close(a.model.model.head.weight, b.model.model.head.weight)


def test_mlp_cost_head_with_labels_calibrates_through_its_output_bias(world_pairs):
    overrides = ["cost_model.lora=null", "cost_model.head={layers: mlp, hidden_size: 8}",
                 "cost_model.train.epochs=1", "cost_model.train.batch_size=16"]  # fmt: skip
    config = load_config(None, overrides).cost_model
    result = train_cost_model(world_pairs, config=config, seed=0, progress=False)
    head = result.model.model.head
    assert isinstance(head, MLPHead) and head.bias is head.out.bias
    assert result.receipt.calibration_steps > 0
    assert "train/calibration_shift" in result.receipt.metrics


@pytest.mark.parametrize("unit", ["pair", "user"])
def test_head_mode_clips_each_unit_gradient(world_pairs, unit):
    """Per-unit clipping on embeddings: the step's clipped per-unit gradients equal a unit-by-unit
    reference (exact gradient of each unit's summed loss, clipped), with the noise switched off."""
    config = _config(f"reward_model.privacy.privacy_unit={unit}",
                     "reward_model.privacy.max_grad_norm=0.05")  # fmt: skip
    scoring = build_scoring_model(config, kind="reward", seed=0)
    data = embed_pairs(scoring, world_pairs)
    assert isinstance(data, EmbeddedPairs)
    units, num_units = privacy_units(world_pairs, unit)
    plan = plan_training(num_units, config)
    plan = type(plan)(**{**plan.__dict__, "noise_multiplier": 0.0})
    head = scoring.model.head
    inner = torch.optim.SGD(head.parameters(), lr=1.0)
    step = make_step(scoring.model, data, units, plan, config=config, kind="reward",
                     inner=inner, noise=None)  # fmt: skip
    chosen = torch.arange(num_units)
    reference = torch.zeros_like(head.weight)
    for u in range(num_units):
        rows = torch.nonzero(units == u).flatten()
        w = head.weight.detach().clone().requires_grad_(True)
        b = head.bias.detach().clone().requires_grad_(True)
        e = data.embeddings[rows]
        margin = (e[:, 0] @ w.T + b - e[:, 1] @ w.T - b).squeeze(-1)
        loss = -torch.nn.functional.logsigmoid(margin).sum()
        gw, gb = torch.autograd.grad(loss, (w, b))
        norm = torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum())
        reference += gw * min(1.0, 0.05 / float(norm))
    weight_before = head.weight.detach().clone()
    step(chosen)
    step.model.remove_hooks()
    expected = reference / max(1, round(plan.expected_batch_size))
    torch.testing.assert_close(weight_before - head.weight.detach(), expected, rtol=1e-4, atol=1e-7)


def test_response_text_ignores_the_prompt_and_has_its_own_cache_identity(world_pairs, tmp_path):
    config = _config("reward_model.head={text: response, normalize: true}")
    scoring = build_scoring_model(config, kind="reward", seed=0)
    responses = [p.chosen for p in world_pairs[:4]]
    with embedding_cache(tmp_path / "c"):
        a = scoring.embed(["a prompt"] * 4, responses)
        counter = _Counter(scoring)
        b = scoring.embed(["another prompt"] * 4, responses)
        assert counter.rows == 0  # one entry per response, whatever the prompt
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        # The response alone, one segment: what sentence-transformers' encode feeds the model.
        enc = scoring.tokenizer(responses, truncation=True, max_length=scoring.max_length,
                                padding=True, return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            direct = torch.nn.functional.normalize(
                scoring.model.embed(enc["input_ids"], enc["attention_mask"]), dim=-1
            )
        torch.testing.assert_close(a, direct, rtol=1e-5, atol=1e-5)
        # The same texts as (empty prompt, response) pairs are another identity: a miss.
        pair_mode = build_scoring_model(_config(), kind="reward", seed=0)
        pair_counter = _Counter(pair_mode)
        pair_mode.embed([""] * 4, responses)
        assert pair_counter.rows == 4
    with pytest.raises(ConfigError, match=r"reward_model.head.text"):
        load_config(None, [*HEAD, "reward_model.head={text: prompt}"])


def test_normalised_head_scores_each_text_alone_and_survives_save_and_load(world_pairs, tmp_path):
    """``head.normalize`` is a fixed per-text map (no statistic of the data, so nothing beyond the
    DP head is learnt from it): a text's score does not depend on the texts scored beside it, the
    head reads unit vectors, and the saved directory records it for raw-text scoring."""
    config = _config("reward_model.head={text: response, normalize: true}",
                     "reward_model.privacy.target_epsilon=null")  # fmt: skip
    result = train_reward_model(world_pairs, config=config, seed=0, progress=False)
    prompts, chosen = [p.prompt for p in world_pairs], [p.chosen for p in world_pairs]
    scores = result.model.score(prompts, chosen)
    alone = torch.cat(
        [result.model.score([p], [c]) for p, c in zip(prompts[:5], chosen[:5], strict=True)]
    )
    torch.testing.assert_close(alone, scores[:5], rtol=1e-5, atol=1e-5)
    norms = result.model.embed(prompts, chosen).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    save_training_output(result, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "model" / "scalar_model.json").read_text())
    assert (meta["embed_text"], meta["normalize"]) == ("response", True)
    reloaded = load_scoring_model(tmp_path / "out" / "model")
    torch.testing.assert_close(reloaded.score(prompts, chosen), scores, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the plain forward over tokens, as a user without safealign computes
        forward = reloaded.model(**reloaded.encode(prompts, chosen))
    torch.testing.assert_close(forward, scores, rtol=1e-5, atol=1e-5)
