"""``policy.method: reinforce_lagrangian`` in a run: on-policy LM training (HC-RLHF reference code).

:func:`safealign.constraints.lm_policy.reinforce_lagrangian` trains the LoRA adapters on two fresh
samples per prompt per step with the return ``r - beta KL - lambda c'``, where ``c'`` is the
surrogate cost whose policy gradient is that of ``mean + k std`` of the metric (``k`` from
:func:`~safealign.constraints.bounds.pessimism_k` at ``n_b`` candidate prompts and ``n_s`` safety
prompts) and ``log lambda`` follows the bound's violation. The reward is the run's DP reward model,
or with groups ``sum_g w_g r_g`` with the MaxMin weights found on the base LM's own samples (the
tilting path's weights, from :func:`~safealign.run.lm_align` round 0). The cost is the safety
metric of the DP cost model's score, the quantity the certificate bounds.
"""

from __future__ import annotations

from pathlib import Path

from safealign.constraints.align import Scorers
from safealign.constraints.bounds import pessimism_k
from safealign.constraints.hc_rlhf import metric_range
from safealign.constraints.lm_policy import reinforce_lagrangian
from safealign.constraints.tilting import metric_costs
from safealign.run.lm_base import _derive, load_adapter_weights
from safealign.run.workspace import Workspace


def reinforce_adapter(
    ws: Workspace, model, tokenizer, prompts: list[str], scorers: Scorers, *, folder: Path
) -> None:
    """Train ``model``'s adapters in place, or load them from ``folder`` when a run resumes."""
    if (folder / "adapter_model.safetensors").is_file():
        load_adapter_weights(model, folder)
        return
    config = ws.config
    safety, rc = config.safety, config.policy.reinforce

    def reward_fn(p, y):
        if scorers.group_rewards is None:
            return scorers.reward.score(list(p), list(y)).double()
        weights = scorers.group_weights or {}
        return sum(weights[g] * m.score(list(p), list(y)).double()
                   for g, m in scorers.group_rewards.items())  # fmt: skip

    def cost_fn(p, y):
        raw = scorers.cost.score(list(p), list(y)).double()
        return metric_costs(raw, safety.metric, cost_range=metric_range(safety))

    k = pessimism_k(len(prompts), ws.splits.safety.num_prompts, confidence=safety.confidence,
                    c1=safety.c1, c2=safety.c2)  # fmt: skip
    reinforce_lagrangian(
        model, None, tokenizer, prompts, reward_fn=reward_fn, cost_fn=cost_fn,
        beta=config.policy.beta, cost_threshold=safety.cost_threshold, k_pessimism=k,
        steps=rc.steps, lr=rc.lr, lambda_lr=rc.lambda_lr, batch_size=rc.batch_size,
        seed=_derive(config.seed, 0x2E1), max_new_tokens=config.policy.sampler.max_new_tokens,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
