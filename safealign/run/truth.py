"""The synthetic world's ground truth about a run: what the released policy truly costs.

Only the synthetic world knows the true cost and rewards of a response; the report carries them
under ``extra.true_outcomes`` so the certificate can be checked against the truth (demo,
``benchmarks/demo_truth.py``).
"""

from __future__ import annotations

import torch

from safealign.constraints.align import AlignResult, score_candidates
from safealign.constraints.tilting import TiltedPolicy
from safealign.run.designated import set_truth
from safealign.run.lm_best_of_k import truth_candidates
from safealign.run.lm_certify import lm_true_outcomes
from safealign.run.workspace import Workspace


def true_outcomes(ws: Workspace, aligned: AlignResult, *, policy=None) -> dict | None:
    """The released policy's TRUE expected cost and rewards (synthetic world only, else None),
    on fresh reference candidates for the eval and candidate prompts (never the sealed safety
    prompts); for an LM policy (``policy.model`` set), on its own generations
    (:func:`~safealign.run.lm_certify.lm_true_outcomes`, ``policy`` the released LMPolicy), or
    for best-of-K over an LM, on K fresh samples of the base LM per prompt."""
    world, splits, sampler, config = ws.world, ws.splits, ws.sampler, ws.config
    if world is None:
        return None
    best_of_k = config.policy.method == "best_of_k"
    if config.policy.model is not None and not best_of_k:
        out = lm_true_outcomes(ws, policy)
        designated = set_truth(ws)  # a designated set: the truth of what its certificate bounds
        return out if designated is None else {**out, "designated_set": designated}
    prompts = list(splits.eval.prompts) + list(splits.candidate.prompts)
    if config.policy.model is None:
        cands = sampler.candidates(prompts, seed=config.seed + 3)
    else:  # best-of-K over an LM: K of its own samples per prompt (reference: the bare LM)
        cands = truth_candidates(ws, prompts)
    scored = score_candidates(cands, aligned.scorers)
    flat_prompts, flat_responses = cands.flat()
    shape = scored.costs.shape
    true_cost = torch.tensor(
        world.true_cost(flat_prompts, flat_responses).reshape(shape), dtype=torch.float64
    )
    true_rewards = {
        g: torch.tensor(
            world.true_reward(flat_prompts, flat_responses, g).reshape(shape), dtype=torch.float64
        )
        for g in world.group_weights
    }
    policies = {"reference": torch.full(shape, 1.0 / shape[1], dtype=torch.float64)}
    policy = aligned.selection.policy
    if policy is not None:
        policies["released"] = policy.probabilities(
            scored.rewards, scored.costs, log_p=scored.log_p
        )
        greedy = TiltedPolicy(beta=policy.beta, lambda_=0.0, num_candidates=policy.num_candidates)
        policies["unconstrained"] = greedy.probabilities(
            scored.rewards, scored.costs, log_p=scored.log_p
        )
    out = {name: _values(q, true_cost, true_rewards, world) for name, q in policies.items()}
    out["cost_threshold"] = config.safety.cost_threshold
    out["metric"] = config.safety.metric
    out["prompts"] = len(prompts)
    if "released" in out:
        key = "expected_cost" if config.safety.metric == "expected_cost" else "unsafe_rate"
        out["guarantee_holds"] = bool(out["released"][key] <= config.safety.cost_threshold)
    return out


def _values(q, true_cost, true_rewards, world) -> dict:
    rewards = {g: float((q * r).sum(-1).mean()) for g, r in true_rewards.items()}
    return {
        "expected_cost": float((q * true_cost).sum(-1).mean()),
        "unsafe_rate": float((q * (true_cost > 0)).sum(-1).mean()),
        "reward": rewards,
        "population_reward": float(sum(world.group_weights[g] * v for g, v in rewards.items())),
    }
