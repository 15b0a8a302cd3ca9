"""The align stage: data and splits, private models, candidates, MaxMin + pessimistic tilt
(HC-RLHF step 1); writes ``policy.json``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from safealign._atomic import atomic_write_text
from safealign.config import to_plain
from safealign.constraints.align import AlignResult, optimize_policy
from safealign.constraints.attempts import attempt_safety
from safealign.constraints.candidates import Candidates, load_alignment_candidates
from safealign.errors import ConfigError
from safealign.privacy.training import PrivacyReceipt
from safealign.run.certification import archive_certificate
from safealign.run.lm_align import align_lm
from safealign.run.lm_best_of_k import align_lm_best_of_k
from safealign.run.models import train_models
from safealign.run.policy_file import (
    FROM_FILE,
    FROM_REFERENCE,
    PolicyFile,
    policy_file_from,
    write_policy_file,
)
from safealign.run.preflight import preflight
from safealign.run.workspace import Workspace, say


@dataclass(frozen=True)
class Alignment:
    """What the align stage produced (``policy_file`` is also ``policy.json``)."""

    policy_file: PolicyFile
    policy_path: Path
    aligned: AlignResult
    receipts: list[PrivacyReceipt]


def align(
    ws: Workspace, *, candidates_path: str | Path | None = None, progress: bool = True
) -> Alignment:
    """Private models, candidates, MaxMin + pessimistic tilt; writes ``policy.json``.

    Models already in the run directory are loaded, not trained again, so re-running spends no
    privacy. A ``certificate.json`` left from a different earlier policy is moved to
    ``certificates/attempt-K.json`` (it no longer applies, and certificates are never deleted).

    Args:
        ws: The run's workspace.
        candidates_path: A candidates JSONL to align on instead of the reference sampler's
            samples; none of its prompts may be a sealed safety prompt.
        progress: Print one line per stage.

    Raises:
        ConfigError: an LM method (``distill``, ``reinforce_lagrangian``) with a
            ``candidates_path`` (it samples its own candidates).
        DataError: the candidates file is malformed or contains a safety prompt.
    """
    preflight(ws.config, ws.out)
    return align_checked(ws, candidates_path=candidates_path, progress=progress)


def align_checked(
    ws: Workspace, *, candidates_path: str | Path | None = None, progress: bool = True
) -> Alignment:
    """:func:`align` after the caller's pre-flight check (``run`` checks once for all stages)."""
    config = ws.config
    ws.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ws.paths.config, yaml.safe_dump(config.to_dict(), sort_keys=True))
    splits = ws.splits
    say(
        progress,
        f"[1/6] data: {len(ws.pairs)} pairs from {ws.pairs.name}; splits {json.dumps(splits.sizes())}",
    )
    if progress:  # a local note for the data holder (not a release: exact counts of private data)
        others = [*splits.train.prompts, *splits.eval.prompts, *splits.candidate.prompts]
        near = len(splits.safety.overlapping(others))
        say(progress, f"      {near} of {len(others)} other prompts are near-copies of safety "
            "prompts (Jaccard >= 0.8 on word 3-shingles); i.i.d. split draws, not refused")  # fmt: skip
    if config.policy.method != "best_of_k" or config.policy.model is not None:  # an LM policy
        return _align_lm(ws, candidates_path, progress=progress)
    # Candidates before models: a bad candidates file must fail before any privacy is spent.
    candidates, source, reference = _candidates(ws, candidates_path)
    models = train_models(ws, progress=progress)
    say(progress, "[4/6] policy: pessimistic tilting over candidates (HC-RLHF step 1)")
    with ws.embedding_cache():  # head models share one embedding per candidate text
        aligned = optimize_policy(
            candidates,
            models.scorers,
            policy=config.policy,
            safety=attempt_safety(config.safety),  # step 1 anticipates the attempt's confidence
            groups=config.groups,
            n_safety=splits.safety.num_prompts,
            seed=config.seed,
            reference_sampler=reference,
        )
    policy_file = policy_file_from(
        aligned,
        safety=to_plain(config.safety),
        models=models.dirs,
        candidates=source,
        data=ws.data_record(),
    )
    write_policy_file(policy_file, ws.paths.policy)
    # A certificate of an earlier policy must not sit beside the new one as if it were its own;
    # it is kept under certificates/ (the log and the report list every attempt).
    policy = aligned.selection.policy
    archive_certificate(ws.paths, None if policy is None else policy.sampler_settings())
    return Alignment(policy_file, ws.paths.policy, aligned, models.receipts)


def _align_lm(ws: Workspace, candidates_path, *, progress: bool) -> Alignment:
    """An LM policy (``distill``, ``reinforce_lagrangian``: :mod:`safealign.run.lm_align`; best-of-K
    over ``policy.model``: :mod:`safealign.run.lm_best_of_k`)."""
    if candidates_path is not None:
        raise ConfigError(
            f"align --candidates: policy.method {ws.config.policy.method!r} samples its own candidates from "
            "policy.model; drop --candidates, or use policy.method: best_of_k without policy.model"
        )
    best_of_k = ws.config.policy.method == "best_of_k"
    lm = (align_lm_best_of_k if best_of_k else align_lm)(ws, progress=progress)
    write_policy_file(lm.policy_file, ws.paths.policy)
    policy = lm.policy_file.policy
    archive_certificate(ws.paths, None if policy is None else policy.sampler_settings())
    return Alignment(lm.policy_file, ws.paths.policy, lm.aligned, lm.receipts)


def _candidates(ws: Workspace, path: str | Path | None) -> tuple[Candidates, dict, dict]:
    """The candidates to align on (the reference sampler's, or a file's), with their provenance.

    Returns:
        ``(candidates, source for policy.json, reference-sampler description for the policy)``.
    """
    seed = ws.config.seed + 1
    if path is None:
        candidates = ws.sampler.candidates(ws.splits.candidate.prompts, seed=seed)
        reference = ws.sampler.describe()
        source = {"source": FROM_REFERENCE, "reference_sampler": reference, "seed": seed}
        return candidates, source, reference
    candidates = load_alignment_candidates(path, safety=ws.splits.safety)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    reference = {"source": "candidates file", "path": str(path), "sha256": digest}
    source = {
        "source": FROM_FILE,
        "path": str(path),
        "sha256": digest,
        "num_prompts": len(candidates.prompts),
        "num_candidates": candidates.num_candidates,
    }
    return candidates, source, reference
