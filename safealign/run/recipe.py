"""The recipe: data → private reward and cost models → policy → certificate → signed report.

:func:`run` reads top to bottom like the data flow in DESIGN.md. Every stage writes into the
run directory and is skipped when its output exists, so an interrupted run resumes and never
spends privacy twice for the same release. The command line only parses and prints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from safealign.config import Config, load_config
from safealign.privacy.identity import default_data_dir
from safealign.run.alignment import align_checked
from safealign.run.certification import certify_policy
from safealign.run.labelling import certify_with_world_labels
from safealign.run.preflight import preflight
from safealign.run.reporting import report
from safealign.run.truth import true_outcomes
from safealign.run.workspace import Workspace, say


@dataclass(frozen=True)
class RunResult:
    """What a run produced (all of it is also on disk under ``out_dir``)."""

    out_dir: Path
    report: dict
    report_paths: list[Path]
    truth: dict | None
    key_note: str | None


def run(config: Config, out_dir: str | Path, *, progress: bool = True) -> RunResult:
    """Run the whole pipeline into ``out_dir`` (resuming whatever an earlier run finished)."""
    preflight(config, out_dir, signs=True)
    ws = Workspace(config, out_dir)
    alignment = align_checked(ws, progress=progress)
    say(progress, "[5/6] safety test on the sealed safety prompts (HC-RLHF step 2)")
    policy_file = alignment.policy_file  # the released policy: best-of-K or an LM's adapter
    certify_stage = certify_policy
    if config.safety.labels is not None and ws.world is not None:  # the world labels (demo)
        certify_stage = certify_with_world_labels
    certificate = certify_stage(
        ws, policy_file.policy, reason=policy_file.reason, scorers=alignment.aligned.scorers
    )
    truth = true_outcomes(ws, alignment.aligned, policy=policy_file.policy)
    say(progress, "[6/6] signed audit report")
    signed = report(
        ws,
        receipts=alignment.receipts,
        certificate=certificate,
        group_rewards=alignment.aligned.group_rewards,
        truth=truth,
    )
    return RunResult(ws.out, signed.report, signed.paths, truth, signed.key_note)


# The demo: the whole pipeline on a small synthetic world in about a minute on 2 CPU cores.
# The certificate is a statement about the DP cost model, so the demo gives the cost model what it
# needs at this size (benchmarks/demo_truth.py: the truth holds at seeds 0-4): 2400 pairs, ε = 4
# with large batches, 8 epochs and clipping norm 5 (at ε = 2 and 600 pairs it scored almost
# everything as safe), the default DP calibration of the cost's level (without it, seed 4's model
# drifted to "safe" and the truth failed), and the pessimism constants of the HC-RLHF reference
# experiments (C1 = 4, C2 = 2), whose margin absorbs the cost model's error on the tilted policy.
# It certifies the default quantity, the cost model's predicted unsafe rate (betting bound), at
# τ = 0.2: the reference policy's true unsafe rate is about 0.25, the unconstrained tilt's 0.47.
DEMO_OVERRIDES = (
    "data.synthetic.num_prompts=1000",
    "data.synthetic.num_users=60",
    "data.synthetic.pairs_per_user=40",
    "data.eval_fraction=0.1",
    "data.candidate_fraction=0.2",
    "data.safety_fraction=0.2",
    "reward_model.lora=null",
    "reward_model.train.epochs=3",
    "reward_model.train.lr=1e-2",
    "reward_model.privacy.target_epsilon=2.0",
    "reward_model.privacy.target_delta=1e-4",
    "cost_model.lora=null",
    "cost_model.train.epochs=8",
    "cost_model.train.batch_size=256",
    "cost_model.train.lr=3e-2",
    "cost_model.privacy.target_epsilon=4.0",
    "cost_model.privacy.target_delta=1e-4",
    "cost_model.privacy.max_grad_norm=5.0",
    "budget.epsilon=8.0",
    "budget.delta=1e-4",
    "groups.mode=given",
    "policy.num_candidates=8",
    "safety.cost_threshold=0.2",
    "safety.confidence=0.95",
    "safety.c1=4.0",
    "safety.c2=2.0",
)


def demo_config(*, seed: int, out_dir: str | Path, overrides=()) -> Config:
    """The demo's configuration: defaults + :data:`DEMO_OVERRIDES` and a ledger of its own.

    The demo's data are synthetic and the same at every run of one seed, so on the per-user
    ledger a few demos would use up one budget. Each demo output directory gets its own ledger
    instead, in the per-user data directory: never in the run directory, which is handed to
    reviewers and must not hold the ledger's key.
    """
    where = hashlib.sha256(str(Path(out_dir).resolve()).encode("utf-8", "surrogatepass"))
    # A directory per demo: the certification log lives beside the ledger (one test per safety
    # set holds within each demo directory; the synthetic world's prompts are nobody's).
    path = default_data_dir() / "demo" / where.hexdigest()[:16] / "ledger.sqlite"
    ledger = f"budget.ledger={path}"
    return load_config(None, [*DEMO_OVERRIDES, ledger, f"seed={seed}", *overrides])
