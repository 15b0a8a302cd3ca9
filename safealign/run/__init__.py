"""The run directory: a workspace opened once, and the stages as verbs.

A command opens one :class:`Workspace` (config, run directory, data, splits, reference sampler)
and calls the verbs it needs; :func:`run` calls them all, top to bottom, like the data flow in
DESIGN.md:

* :func:`train_model` / :func:`train_models`: the private reward and cost models
  (:mod:`~safealign.run.models`);
* :func:`align`: HC-RLHF step 1 (with MaxMin over groups), writes ``policy.json``
  (:mod:`~safealign.run.alignment`);
* :func:`certify`: HC-RLHF step 2, the one logged safety test, writes ``certificate.json``
  (:mod:`~safealign.run.certification`, the only code that unseals the safety split);
* :func:`generate_responses`: samples of a certified LM policy with its certified settings
  (:mod:`~safealign.run.generation`; the LM path itself is :mod:`~safealign.run.lm_align`);
* :func:`report`: the signed audit report (:mod:`~safealign.run.reporting`);
* :func:`audit_privacy`: the one-run empirical privacy audit (:mod:`~safealign.run.privacy_audit`).

File names live in :mod:`~safealign.run.paths`; ``policy.json`` in :mod:`~safealign.run.policy_file`.
"""

from safealign.run.alignment import Alignment, align
from safealign.run.certification import certify, certify_policy, unseal_safety_split
from safealign.run.generation import generate_responses, read_prompts
from safealign.run.models import TrainedModels, train_model, train_models
from safealign.run.paths import RunPaths
from safealign.run.preflight import preflight
from safealign.run.privacy_audit import audit_privacy
from safealign.run.recipe import DEMO_OVERRIDES, RunResult, demo_config, run
from safealign.run.reporting import SignedReport, report
from safealign.run.workspace import ReferenceSampler, Workspace

__all__ = [
    "DEMO_OVERRIDES",
    "Alignment",
    "ReferenceSampler",
    "RunPaths",
    "RunResult",
    "SignedReport",
    "TrainedModels",
    "Workspace",
    "align",
    "audit_privacy",
    "certify",
    "certify_policy",
    "demo_config",
    "generate_responses",
    "preflight",
    "read_prompts",
    "report",
    "run",
    "train_model",
    "train_models",
    "unseal_safety_split",
]
