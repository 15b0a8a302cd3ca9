"""HC-RLHF step 2 for a language-model policy, and the synthetic world's truth about it.

The safety test samples the *deployed artefact*: the base model and the PEFT adapter that
``policy.json`` names, after checking that their files still have the recorded SHA-256 (a
certificate about other bytes would certify something that is not deployed), with exactly the
recorded sampler settings and seed, one response per sealed safety prompt, scored by the DP cost
model. The safety prompts come unsealed from
:func:`safealign.run.certification.unseal_safety_split`, the one caller of the unseal primitive;
nothing here unseals anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

from safealign.constraints.align import Scorers
from safealign.constraints.attempts import attempt_safety
from safealign.constraints.hc_rlhf import Certificate
from safealign.constraints.hc_rlhf import certify as safety_test
from safealign.constraints.tilting import SafetySample
from safealign.data.records import PairDataset
from safealign.errors import DataError
from safealign.models.causal import generate, policy_device
from safealign.models.policy_artifact import ADAPTER_FILES, LMPolicy, load_policy_model, tree_sha256
from safealign.run.lm_align import sampler_of
from safealign.run.lm_base import BaseModel, _derive, base_path, load_base
from safealign.run.lm_groups import base_normalized_group_rewards
from safealign.run.workspace import Workspace

#: Responses per prompt when measuring the truth of an LM (eval and candidate prompts only).
TRUTH_SAMPLES = 4


def policy_dirs(out: Path, policy: LMPolicy) -> tuple[Path, Path]:
    """The base and adapter directories of ``policy``, checked against their recorded hashes.

    Raises:
        DataError: a directory is missing, or its files are not the ones aligned and recorded.
    """
    base = Path(policy.base_dir)
    base = base if base.is_absolute() else out / base
    adapter = out / policy.adapter_dir
    for where, names, recorded, what in (
        (base, None, policy.base_sha256, "base model"),
        (adapter, ADAPTER_FILES, policy.adapter_sha256, "adapter"),
    ):
        if not where.is_dir():
            raise DataError(f"the policy's {what} directory is missing", path=str(where))
        actual = tree_sha256(where, names)
        if actual != recorded:
            raise DataError(
                f"the {what}'s files changed since alignment (SHA-256 {actual[:12]}…, policy.json "
                f"records {recorded[:12]}…): it is not the policy that was aligned; align again",
                path=str(where),
            )
    return base, adapter


def load_deployed(out: Path, policy: LMPolicy):
    """The deployed model (base + adapter, hash-checked) and its tokenizer, on the policy device."""
    base, adapter = policy_dirs(out, policy)
    model, tokenizer = load_policy_model(base, adapter)
    return model.to(policy_device()), tokenizer


def run_lm_safety_test(
    ws: Workspace,
    policy: LMPolicy,
    *,
    scorers: Scorers,
    safety_pairs: PairDataset,
    labelling=None,
) -> Certificate:
    """HC-RLHF step 2 on the unsealed ``safety_pairs``: one response per safety prompt from the
    deployed LM with its recorded settings and seed, scored by the cost model (not logged:
    :func:`safealign.run.certification.certify_policy` logs the attempt). With groups (on a split
    of the preference data, not a designated set), the certificate's ``groups`` also bound each
    group's cost and reward of the same responses, the rewards normalised against K base-LM
    samples per prompt (:mod:`.lm_groups`). With ``labelling`` (:mod:`safealign.run.labelling`)
    the sampled texts go to it, and so does the certificate."""
    model, tokenizer = load_deployed(ws.out, policy)
    config = ws.config
    batch = config.policy.sampler.batch_size

    def sample_costs(deployed: LMPolicy, prompts: tuple[str, ...]) -> torch.Tensor | SafetySample:
        responses = generate(model, tokenizer, list(prompts), num_samples=1, seed=deployed.seed,
                             batch_size=batch, **deployed.sampler.to_dict())  # fmt: skip
        picked = [row[0] for row in responses]
        if labelling is not None:
            labelling.observe_responses(prompts, picked)
        costs = scorers.cost.score(list(prompts), picked).double()
        if scorers.group_rewards is None or config.safety.prompts is not None:
            return costs
        base, _ = policy_dirs(ws.out, deployed)
        groups = base_normalized_group_rewards(
            load_base(BaseModel(deployed.base_model, base, deployed.base_sha256), seed=config.seed),
            prompts, picked, scorers,
            num_samples=config.policy.num_candidates, sampler=deployed.sampler,
            seed=_derive(deployed.seed, 0x6A0), batch_size=batch,
            mode=config.groups.normalize, beta=config.policy.beta,
        )  # fmt: skip
        return SafetySample(costs, groups)

    certificate = safety_test(
        policy, safety_pairs, sample_costs, safety=attempt_safety(config.safety),
        group_prompts="own" if config.groups.mode == "given" else "all",
        reward_normalization=config.groups.normalize,
    )  # fmt: skip
    return certificate if labelling is None else labelling.finish(certificate, policy)


def lm_true_outcomes(ws: Workspace, policy: LMPolicy | None) -> dict | None:
    """The released LM's and its base's TRUE expected cost and rewards on their own generations
    (synthetic world only, else None), for the eval and candidate prompts (never the sealed
    safety prompts), :data:`TRUTH_SAMPLES` responses per prompt with the deployment sampler."""
    world, config = ws.world, ws.config
    if world is None:
        return None
    prompts = list(ws.splits.eval.prompts) + list(ws.splits.candidate.prompts)
    sampler, seed = sampler_of(ws), _derive(config.seed, 0x7207)
    models = {"reference": load_base(BaseModel("base", base_path(ws), ""), seed=config.seed)}
    if policy is not None:
        models["released"] = load_deployed(ws.out, policy)
    out = {}
    for name, (model, tokenizer) in models.items():
        texts = generate(model, tokenizer, prompts, num_samples=TRUTH_SAMPLES, seed=seed,
                         batch_size=config.policy.sampler.batch_size, **sampler.to_dict())  # fmt: skip
        flat_p = [p for p in prompts for _ in range(TRUTH_SAMPLES)]
        flat_y = [y for row in texts for y in row]
        cost = world.true_cost(flat_p, flat_y)
        rewards = {
            g: float(world.true_reward(flat_p, flat_y, g).mean()) for g in world.group_weights
        }
        out[name] = {
            "expected_cost": float(cost.mean()),
            "unsafe_rate": float((cost > 0).mean()),
            "reward": rewards,
            "population_reward": float(sum(world.group_weights[g] * v for g, v in rewards.items())),
        }
    out["cost_threshold"] = config.safety.cost_threshold
    out["metric"] = config.safety.metric
    out["prompts"] = len(prompts)
    out["samples_per_prompt"] = TRUTH_SAMPLES
    if "released" in out:
        key = "expected_cost" if config.safety.metric == "expected_cost" else "unsafe_rate"
        out["guarantee_holds"] = bool(out["released"][key] <= config.safety.cost_threshold)
    return out
