"""The privacy-audit stage: a one-run empirical audit of the reward model's DP training."""

from __future__ import annotations

import json

from safealign._atomic import atomic_write_text
from safealign.errors import ConfigError
from safealign.privacy.audit import AuditResult, prepare_audit, run_privacy_audit
from safealign.privacy.release import budget_target, charge
from safealign.run.workspace import Workspace


def audit_privacy(
    ws: Workspace, *, num_canaries: int, noise_off: bool, progress: bool = True
) -> AuditResult:
    """One-run empirical privacy audit of the reward-model training, charged to the ledger.

    The audited run trains on the real training split (plus canaries), so it is a release like any
    other and is reserved in the ledger first. Switching the noise off is a non-private release:
    allowed only on the synthetic world, whose data is not anyone's.
    """
    config = ws.config
    if noise_off and config.data.source != "synthetic":
        raise ConfigError(
            "--no-noise trains without privacy; it is allowed only with data.source: synthetic"
        )
    if config.reward_model.backbone == "features":
        raise ConfigError(
            "reward_model.backbone: the privacy audit's canaries are random words, which the "
            "features backbone parses to one and the same input, so the audit could never detect "
            "anything; audit a text backbone (tiny, tiny-gpt2, or a Hugging Face model)"
        )
    model_config = config.reward_model
    setup = prepare_audit(
        ws.splits.train,
        config=model_config,
        seed=config.seed,
        num_canaries=num_canaries,
        noise_off=noise_off,
    )
    if not (setup.plan.private and not noise_off):
        result = run_privacy_audit(setup, config=model_config, seed=config.seed, progress=progress)
    else:
        privacy = model_config.privacy
        target = budget_target(
            config.budget, ws.pairs, privacy_unit=privacy.privacy_unit,
            dataset_id=config.data.dataset_id,
            target_deltas=[("reward_model.privacy.target_delta", privacy.target_delta)],
        )  # fmt: skip
        # The audit reports no steps: a failure after it started charges the whole plan.
        with charge(
            target, setup.plan.mechanism, label="privacy audit", accountant=privacy.accountant
        ):
            result = run_privacy_audit(
                setup, config=model_config, seed=config.seed, progress=progress
            )
    ws.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_text(ws.paths.privacy_audit, text)
    return result
