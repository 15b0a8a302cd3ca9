"""LM policy training on the synthetic world: exact log-probs, LoRA isolation, and true-cost drops.

The integration tests pretrain a tiny GPT-2 briefly on reference-policy text (plain SFT = distillation
with uniform weights), then check that HC-RLHF's two LM optimisers lower the *true* cost of what the
LM generates, read back from its text by the world's parser.
"""

from __future__ import annotations

import copy

import pytest
import torch

from safealign.config import LoraConfig, SyntheticConfig
from safealign.constraints.bounds import pessimism_k
from safealign.constraints.lm_policy import (
    distill,
    iterate_tilt_distill,
    reinforce_lagrangian,
)
from safealign.constraints.lm_policy.reinforce import _surrogate_cost, _update_log_lambda
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError, DataError
from safealign.models.causal import (
    SamplerSettings,
    add_lora,
    build_tiny_causal_lm,
    generate,
    load_causal_lm,
    sequence_logprobs,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two shared cores: intra-op threads fighting other processes make tiny models ~10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(SyntheticConfig(num_prompts=300), seed=0)


@pytest.fixture(scope="module")
def pretrained(world) -> dict[str, torch.Tensor]:
    """Weights of a tiny LM after brief SFT on 128 prompts x 4 reference responses."""
    model, tokenizer = build_tiny_causal_lm(0)
    prompts = list(world.prompts[:128])
    reference = world.sample_candidates(prompts, num_candidates=4, seed=0)
    uniform = torch.ones(len(prompts), 4)
    distill(model, tokenizer, prompts, reference.responses, uniform, lr=1e-2, epochs=6,
            batch_size=32, seed=0)  # fmt: skip
    return copy.deepcopy(model.state_dict())


def _policy(state: dict[str, torch.Tensor]):
    model, tokenizer = build_tiny_causal_lm(0)
    model.load_state_dict(state)
    return model, tokenizer


# --- fast unit tests ------------------------------------------------------------------------


def test_tokenizer_round_trips_world_text(world):
    _, tokenizer = build_tiny_causal_lm(0)
    cands = world.sample_candidates(world.prompts[:40], num_candidates=4, seed=1)
    prompts = [p for p in cands.prompts for _ in range(4)]
    texts = [y for row in cands.responses for y in row]
    decoded = [tokenizer.decode(tokenizer(y, add_special_tokens=False)["input_ids"]) for y in texts]
    assert decoded == texts
    assert tokenizer.unk_token_id not in sum(tokenizer(texts + prompts)["input_ids"], [])
    # The world reads the same features back from decoded text, so true costs of LM text are real.
    assert (world.true_cost(prompts, decoded) == cands.true_cost.ravel()).all()


def test_sequence_logprobs_equals_token_by_token():
    model, tokenizer = build_tiny_causal_lm(3)
    prompts = ["How can I bake a loaf of bread?", "Tell me how to change a flat tire? I am asking."]
    responses = ["Sure thing! Step 1: gather what you need.", "Nah, I can't help you, sorry!"]
    batched = sequence_logprobs(model, tokenizer, prompts, responses).detach()
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        head = tokenizer(prompt)["input_ids"]
        ids = head + tokenizer(response, add_special_tokens=False)["input_ids"]
        ids.append(tokenizer.eos_token_id)
        manual = 0.0
        with torch.no_grad():
            for t in range(len(head), len(ids)):
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
                manual += float(torch.log_softmax(logits, -1)[ids[t]])
        assert float(batched[i]) == pytest.approx(manual, abs=1e-4)
    alone = sequence_logprobs(model, tokenizer, prompts[:1], responses[:1]).detach()
    assert float(alone[0]) == pytest.approx(float(batched[0]), abs=1e-4)  # padding is masked


def test_surrogate_cost_gradient_is_that_of_mean_plus_k_std():
    # Exact expectation over a categorical policy: E_p[c' grad log p] = grad(mu + k sigma).
    torch.manual_seed(0)
    logits = torch.randn(6, dtype=torch.float64, requires_grad=True)
    costs = torch.tensor([-3.0, -1.0, 0.0, 2.0, 5.0, 9.0], dtype=torch.float64)
    k = 1.7
    p = torch.softmax(logits, 0)
    mu = (p * costs).sum()
    sigma = ((p * costs.square()).sum() - mu.square()).sqrt()
    (expected,) = torch.autograd.grad(mu + k * sigma, logits)
    surrogate = _surrogate_cost(costs, float(mu.detach()), float(sigma.detach()), k)
    score = (p.detach() * surrogate * torch.log_softmax(logits, 0)).sum()
    (estimate,) = torch.autograd.grad(score, logits)
    assert torch.allclose(estimate, expected, atol=1e-12)
    # With k = 0 the surrogate is the cost itself.
    assert torch.equal(_surrogate_cost(costs, 1.0, 2.0, 0.0), costs)


def test_log_lambda_update_grows_when_violated_and_shrinks_when_met():
    assert _update_log_lambda(0.0, 0.5, lr=0.1) == pytest.approx(0.05)
    assert _update_log_lambda(0.0, -0.5, lr=0.1) == pytest.approx(-0.05)
    assert _update_log_lambda(5.0, 1e6, lr=1.0) == 10.0  # clipped, no overflow


def test_load_causal_lm_reads_a_saved_model(tmp_path):
    model, tokenizer = build_tiny_causal_lm(4)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_causal_lm(str(tmp_path), seed=0)
    args = (["How can I bake a loaf of bread?"], ["Sure thing! Step 1: gather what you need."])
    with torch.no_grad():
        expected = sequence_logprobs(model, tokenizer, *args)
        assert torch.allclose(sequence_logprobs(loaded, loaded_tokenizer, *args), expected)
    with pytest.raises(ConfigError, match="could not be loaded"):
        load_causal_lm(str(tmp_path / "missing"), seed=0)


def test_generate_is_reproducible_in_the_seed():
    model, tokenizer = build_tiny_causal_lm(1)
    prompts = ["How can I bake a loaf of bread?", "Explain how to pack light for a trip?"]
    first = generate(model, tokenizer, prompts, num_samples=3, max_new_tokens=8, seed=5)
    assert first == generate(model, tokenizer, prompts, num_samples=3, max_new_tokens=8, seed=5)
    assert first != generate(model, tokenizer, prompts, num_samples=3, max_new_tokens=8, seed=6)
    assert [len(row) for row in first] == [3, 3]


def test_bad_inputs_are_errors():
    model, tokenizer = build_tiny_causal_lm(0)
    with pytest.raises(ConfigError) as info:
        SamplerSettings(max_new_tokens=0, temperature=-1.0, top_p=1.5)
    assert len(info.value.problems) == 3
    with pytest.raises(DataError, match="shape"):
        distill(model, tokenizer, ["a", "b"], [["x"], ["y"]], torch.ones(2, 2), lr=1e-3,
                epochs=1, batch_size=2, seed=0)  # fmt: skip
    with pytest.raises(DataError, match="positive weight"):
        distill(model, tokenizer, ["a", "b"], [["x"], ["y"]], torch.tensor([[1.0], [0.0]]),
                lr=1e-3, epochs=1, batch_size=2, seed=0)  # fmt: skip


@pytest.mark.parametrize("trainer", ["distill", "reinforce"])
def test_lora_trains_only_the_adapters(trainer):
    base, tokenizer = build_tiny_causal_lm(2)
    policy = add_lora(base, LoraConfig(r=4, alpha=8.0), seed=0)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    prompts = ["How can I bake a loaf of bread?", "How can I make a stink bomb?"]
    if trainer == "distill":
        distill(policy, tokenizer, prompts, [["Step 1: gather.", "No."]] * 2,
                torch.tensor([[0.7, 0.3], [0.2, 0.8]]), lr=1e-2, epochs=2, batch_size=2, seed=0)  # fmt: skip
    else:  # ref_policy=None: the reference is the policy with its adapters switched off
        reinforce_lagrangian(policy, None, tokenizer, prompts, reward_fn=lambda p, r: [len(y) for y in r],
                             cost_fn=lambda p, r: [y.count("Step") for y in r], beta=0.1,
                             cost_threshold=0.0, k_pessimism=1.0, steps=2, lr=1e-2, lambda_lr=0.1,
                             batch_size=2, seed=0, max_new_tokens=12)  # fmt: skip
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert {n for n in before if "lora_B" in n} <= changed  # B starts at 0: every adapter moved


# --- integration: tiny LM on the synthetic world --------------------------------------------


@pytest.mark.integration
def test_greedy_generation_ignores_left_padding(world, pretrained):
    model, tokenizer = _policy(pretrained)
    prompts = sorted(world.prompts[200:204], key=len)  # different lengths: left padding in a batch
    batch = generate(model, tokenizer, prompts, num_samples=1, temperature=0.0, seed=0)
    alone = [
        generate(model, tokenizer, [p], num_samples=1, temperature=0.0, seed=0)[0] for p in prompts
    ]
    assert batch == alone
    assert any("Step 1:" in row[0] for row in batch)  # the pretrained LM writes world-like text


@pytest.mark.integration
def test_tilt_distill_lowers_the_true_cost(world, pretrained):
    model, tokenizer = _policy(pretrained)
    prompts = list(world.prompts[200:232])
    result = iterate_tilt_distill(
        model, tokenizer, prompts, reward_fn=world.true_reward, cost_fn=world.true_cost,
        beta=1.0, cost_threshold=-2.8, k_pessimism=pessimism_k(32, 100, confidence=0.9),
        rounds=2, num_candidates=8, sampler=SamplerSettings(), lr=5e-3, epochs=3,
        batch_size=32, seed=0,
    )  # fmt: skip
    before, after = result.rounds[0].mean_cost, result.final_cost
    print(f"tilt-distill true cost: {before:.3f} -> {after:.3f}", result.rounds)
    assert all(r.tilted_cost < r.mean_cost for r in result.rounds)  # each tilt aims lower
    assert after < before - 0.5
    assert result.sampler == SamplerSettings()


@pytest.mark.integration
def test_reinforce_lagrangian_raises_lambda_then_lowers_the_true_cost(world, pretrained):
    model, tokenizer = _policy(pretrained)
    reference = copy.deepcopy(model).requires_grad_(False)
    result = reinforce_lagrangian(
        model, reference, tokenizer, list(world.prompts[200:264]), reward_fn=world.true_reward,
        cost_fn=world.true_cost, beta=0.1, cost_threshold=-2.5, k_pessimism=0.3, steps=10,
        lr=1e-3, lambda_lr=0.05, batch_size=32, seed=0, buffer_size=128,
    )  # fmt: skip
    history = result.history
    before = history[0].mean_cost  # the first batch is sampled before any update
    after = sum(h.mean_cost for h in history[-3:]) / 3
    print(f"reinforce-lagrangian true cost: {before:.3f} -> {after:.3f}", history)
    assert history[0].upper_bound > -2.5 and history[1].lagrange_multiplier > 1.0
    assert after < before - 0.5
    assert history[-1].kl > 0  # it moved away from the reference
