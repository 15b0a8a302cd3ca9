"""The TRL reward adapter: its numbers are the models' scores (r - λ·c), λ comes from policy.json,
and TRL's GRPOTrainer trains with it (a tiny GPT-2 policy built in code, CPU, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from safealign.cli import main
from safealign.errors import ConfigError
from safealign.integrations import RewardFunction, reward_function, reward_function_from_run
from safealign.integrations.trl import render_prompt
from safealign.models import load_scoring_model
from tests._tiny_run import CONFIG, TINY_WORLD

PROMPTS = ["how do i bake bread", "tell me about the weather", "hi"]
COMPLETIONS = ["you can bake it in an oven", "it is sunny", "hello there friend"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An aligned tiny run (DP reward and cost models, policy.json), λ set to 0.5 afterwards so
    that reading it is visible (the tiny world's constraint does not bind: its λ is 0)."""
    out = tmp_path_factory.mktemp("trl") / "run"
    overrides = [*TINY_WORLD, "groups.mode=none", "safety.cost_threshold=1",
                 f"budget.ledger={out.parent / 'ledger.sqlite'}"]  # fmt: skip
    assert main(["align", CONFIG, "--out", str(out), *overrides]) == 0
    policy = json.loads((out / "policy.json").read_text())
    policy["selection"]["lambda"] = 0.5
    (out / "policy.json").write_text(json.dumps(policy))
    return out


def _models(run_dir: Path):
    return load_scoring_model(run_dir / "reward/model"), load_scoring_model(run_dir / "cost/model")


def test_the_adapter_returns_the_models_scores_minus_lambda_cost(run_dir):
    reward, cost = _models(run_dir)
    r, c = reward.score(PROMPTS, COMPLETIONS), cost.score(PROMPTS, COMPLETIONS)
    alone = reward_function(run_dir / "reward/model")
    assert alone(prompts=PROMPTS, completions=COMPLETIONS) == r.tolist()
    penalised = reward_function(reward, cost=cost, lambda_=2.0)
    torch.testing.assert_close(
        torch.tensor(penalised(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=None)),
        r - 2.0 * c,
    )
    from_run = reward_function_from_run(run_dir)
    assert from_run.lambda_ == 0.5
    torch.testing.assert_close(
        torch.tensor(from_run(PROMPTS, COMPLETIONS)), r - 0.5 * c, rtol=1e-6, atol=1e-6
    )
    logged = {}
    from_run(PROMPTS, COMPLETIONS, log_metric=logged.__setitem__)
    assert logged["safealign_reward/cost"] == pytest.approx(float(c.mean()), abs=1e-6)


def test_conversational_prompts_and_completions_score_as_their_text(run_dir):
    reward, cost = _models(run_dir)
    fn = reward_function(reward, cost=cost, lambda_=1.0)
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    answers = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    assert fn(messages, answers) == fn(PROMPTS, COMPLETIONS)
    dialogue = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how do i bake bread"},
    ]
    assert render_prompt(dialogue) == (
        "be kind\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do i bake bread\n\nAssistant:"
    )
    with pytest.raises(ConfigError, match="role 'tool'"):
        render_prompt([{"role": "tool", "content": "x"}, {"role": "user", "content": "y"}])


def test_bad_combinations_are_refused(run_dir):
    reward, cost = _models(run_dir)
    with pytest.raises(ConfigError, match="give the cost model"):
        RewardFunction(reward=reward, lambda_=1.0)
    with pytest.raises(ConfigError, match="not a reward model"):
        reward_function(cost, cost=reward)
    with pytest.raises(ConfigError, match=">= 0"):
        reward_function(reward, cost=cost, lambda_=float("nan"))


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")
def test_grpo_trains_a_tiny_gpt2_with_the_adapter(run_dir, tmp_path):
    trl = pytest.importorskip("trl", reason="trl (the dev extra; Python >= 3.11) is not installed")
    from datasets import Dataset

    from safealign.models.causal import build_tiny_causal_lm

    policy, tokenizer = build_tiny_causal_lm(seed=0)
    # A conversational dataset: TRL renders prompts with the chat template and hands the reward
    # function lists of messages.
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    reward = reward_function_from_run(run_dir)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS * 2]})
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = trl.GRPOTrainer(
        model=str(tmp_path / "policy"),
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    logs = [
        entry for entry in trainer.state.log_history if "rewards/safealign_reward/mean" in entry
    ]
    assert len(logs) == 2 and all("safealign_reward/cost" in entry for entry in logs)
    trained = trainer.model
    assert any(not torch.equal(p.cpu(), before[n]) for n, p in trained.named_parameters())
