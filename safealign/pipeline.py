"""The recipe: data → private reward and cost models → policy → certificate → signed report.

``run(config, out_dir)`` reads top to bottom like the data flow in DESIGN.md. Every stage writes
into the run directory and is skipped when its output exists, so an interrupted run resumes and
never spends privacy twice for the same release. The command line only parses and prints.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from safealign._atomic import atomic_write_text
from safealign.audits.report import build_report, write_report_files
from safealign.audits.signing import load_private_key
from safealign.config import BudgetConfig, Config, config_from_dict, to_plain
from safealign.constraints.align import AlignResult, Scorers, align_policy, score_candidates
from safealign.constraints.attempts import (
    archive_certificate,
    attempt_safety,
    log_path,
    logged_test,
    resumable_certificate,
)
from safealign.constraints.group_rewards import normalize_group_rewards
from safealign.constraints.hc_rlhf import certify
from safealign.constraints.policy_file import (
    POLICY_FILE,
    PolicyFile,
    check_policy_file_matches,
    load_policy_file,
    policy_file_from,
    write_policy_file,
)
from safealign.constraints.tilting import TiltedPolicy, best_of_k_sampler
from safealign.data.io import check_readable
from safealign.data.records import PairDataset
from safealign.data.source import load_source, make_splits
from safealign.data.splits import CERTIFY, Splits
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError, DataError
from safealign.models.embeddings import CACHE_SUFFIX, RUN_CACHE_DIR, embedding_cache
from safealign.privacy.identity import default_data_dir, default_ledger_path
from safealign.privacy.release import LEGACY_LEDGER, open_ledger
from safealign.run_stages import (
    ReferenceSampler,
    candidates_stage,
    data_record,
    infeasible_certificate,
    ledger_summary,
    load_scorers,
    models_stage,
    released_fingerprints,
    report_groups,
    say,
    true_outcomes,
)
from safealign.runs import signing_key


@dataclass(frozen=True)
class RunResult:
    """What a run produced (all of it is also on disk under ``out_dir``)."""

    out_dir: Path
    report: dict
    report_paths: list[Path]
    truth: dict | None
    key_note: str | None


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
    from safealign.config import load_config

    where = hashlib.sha256(str(Path(out_dir).resolve()).encode("utf-8", "surrogatepass"))
    # A directory per demo: the certification log lives beside the ledger (one test per safety
    # set holds within each demo directory; the synthetic world's prompts are nobody's).
    path = default_data_dir() / "demo" / where.hexdigest()[:16] / "ledger.sqlite"
    ledger = f"budget.ledger={path}"
    return load_config(None, [*DEMO_OVERRIDES, ledger, f"seed={seed}", *overrides])


@dataclass(frozen=True)
class Alignment:
    """What the align stage produced (``policy_file`` is also ``out_dir/policy.json``)."""

    out_dir: Path
    policy_file: PolicyFile
    policy_path: Path
    aligned: AlignResult
    receipts: list
    pairs: PairDataset
    world: SyntheticWorld | None
    splits: Splits
    sampler: ReferenceSampler


def preflight(
    config: Config,
    out_dir: str | Path,
    *,
    signs: bool = False,
    trains: Sequence[str] = ("reward", "cost"),
) -> None:
    """Check everything a stage needs before it spends anything that cannot be given back.

    Privacy spent on a model and the one-shot safety test are gone once used, so a fault found at
    the end (an unreadable signing key, an unwritable ledger) must be found first: the config
    obeys every load-time rule (again: it may have been built in code), the data file can be
    read, the signing key (when the stage signs) is an Ed25519 private key, the output directory
    can be written, and the ledger (when a model in ``trains`` is private) opens.

    Raises:
        ConfigError, DataError, PrivacyError: the first fault, naming its key or file.
    """
    config_from_dict(config.to_dict(), source="config")
    if config.data.source != "synthetic":
        check_readable(config.data.source)
    if signs and config.audit.signing_key is not None:
        load_private_key(config.audit.signing_key)
    _check_writable_dir(Path(out_dir))
    if any(getattr(config, f"{kind}_model").privacy.target_epsilon is not None for kind in trains):
        _check_ledger(config.budget)


def _check_writable_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError("cannot use it as the output directory: it is not a directory", path=str(out))
    try:
        out.mkdir(parents=True, exist_ok=True)
        _probe(out)
    except OSError as exc:
        raise DataError(
            f"cannot use it as the output directory ({exc.strerror}); choose one you can write",
            path=str(out),
        ) from None


def _check_ledger(budget: BudgetConfig) -> None:
    """Open an existing ledger (its own checks run); for a new one, check it could be created
    without creating it: a refused command leaves no ledger behind."""
    path = default_ledger_path() if budget.ledger is None else Path(budget.ledger)
    if path.exists() or (budget.ledger is None and Path(LEGACY_LEDGER).is_file()):
        open_ledger(budget)
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(parent))
        _probe(parent)
    except OSError as exc:
        raise DataError(
            f"budget.ledger: cannot create the ledger here ({parent}: {exc.strerror}); set "
            "budget.ledger to a path in a directory you can write",
            path=str(path),
        ) from None


def _probe(directory: Path) -> None:
    """Create and delete a file in ``directory``: the one sure test that it can be written."""
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".safealign-preflight-")
    os.close(fd)
    os.unlink(probe)


def run(config: Config, out_dir: str | Path, *, progress: bool = True) -> RunResult:
    """Run the whole pipeline into ``out_dir`` (resuming whatever an earlier run finished)."""
    preflight(config, out_dir, signs=True)
    a = _align(config, out_dir, progress=progress)
    say(progress, "[5/6] safety test on the sealed safety prompts (HC-RLHF step 2)")
    selection = a.aligned.selection
    certificate = logged_certify_stage(
        config,
        a.out_dir,
        policy=selection.policy,
        reason=selection.message,
        scorers=a.aligned.scorers,
        splits=a.splits,
        sampler=a.sampler,
    )
    truth = (
        true_outcomes(a.world, a.aligned, a.splits, a.sampler, config)
        if a.world is not None
        else None
    )
    say(progress, "[6/6] signed audit report")
    report, paths, note = _report(
        config, a.out_dir, a.receipts, certificate, a.aligned, (a.pairs, a.splits), truth
    )
    return RunResult(a.out_dir, report, paths, truth, note)


def align_stage(
    config: Config,
    out_dir: str | Path,
    *,
    candidates_path: str | Path | None = None,
    progress: bool = True,
) -> Alignment:
    """Data and splits, private models, candidates, MaxMin + pessimistic tilt; writes policy.json.

    Models already in ``out_dir`` are loaded, not trained again, so re-running spends no privacy.
    A ``certificate.json`` left from a different earlier policy is moved to
    ``certificates/attempt-K.json`` (it no longer applies, and certificates are never deleted).

    Args:
        config: The run's configuration.
        out_dir: The run directory.
        candidates_path: A candidates JSONL to align on instead of the reference sampler's
            samples; none of its prompts may be a sealed safety prompt.
        progress: Print one line per stage.

    Raises:
        ConfigError: ``policy.method`` is not ``tilting``.
        DataError: the candidates file is malformed or contains a safety prompt.
    """
    preflight(config, out_dir)
    return _align(config, out_dir, candidates_path=candidates_path, progress=progress)


def _align(
    config: Config,
    out_dir: str | Path,
    *,
    candidates_path: str | Path | None = None,
    progress: bool = True,
) -> Alignment:
    if config.policy.method != "tilting":
        raise ConfigError(
            f"policy.method: the pipeline deploys the tilted best-of-K policy; {config.policy.method!r} "
            "(on-policy LM training) is available from safealign.constraints.lm_policy, not from run"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "config.resolved.yaml", yaml.safe_dump(config.to_dict(), sort_keys=True)
    )
    pairs, world = load_source(config)
    splits = make_splits(pairs, config)
    say(
        progress,
        f"[1/6] data: {len(pairs)} pairs from {pairs.name}; splits {json.dumps(splits.sizes())}",
    )
    if progress:  # a local note for the data holder (not a release: exact counts of private data)
        others = [*splits.train.prompts, *splits.eval.prompts, *splits.candidate.prompts]
        near = len(splits.safety.overlapping(others))
        say(progress, f"      {near} of {len(others)} other prompts are near-copies of safety "
            "prompts (Jaccard >= 0.8 on word 3-shingles); i.i.d. split draws, not refused")  # fmt: skip
    # Candidates before models: a bad candidates file must fail before any privacy is spent.
    sampler = ReferenceSampler(config, world, splits)
    candidates, source, reference = candidates_stage(config, sampler, splits, candidates_path)
    scorers, receipts, models = models_stage(config, out, pairs, splits, progress=progress)
    say(progress, "[4/6] policy: pessimistic tilting over candidates (HC-RLHF step 1)")
    with embedding_cache(out / RUN_CACHE_DIR):  # head models share one embedding per candidate
        aligned = align_policy(
            candidates,
            scorers,
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
        models=models,
        candidates=source,
        data=data_record(config, pairs, splits),
    )
    path = out / POLICY_FILE
    write_policy_file(policy_file, path)
    # A certificate of an earlier policy must not sit beside the new one as if it were its own;
    # it is kept under certificates/ (the log and the report list every attempt).
    policy = aligned.selection.policy
    archive_certificate(out, None if policy is None else policy.sampler_settings())
    return Alignment(out, policy_file, path, aligned, receipts, pairs, world, splits, sampler)


def certify_stage(
    config: Config,
    *,
    policy: TiltedPolicy | None,
    reason: str,
    scorers: Scorers,
    splits: Splits,
    sampler: ReferenceSampler,
) -> dict:
    """HC-RLHF step 2: the safety test of ``policy`` on the sealed safety prompts.

    Each safety prompt gets K fresh reference samples, scored by ``scorers``, and one of them is
    drawn by best-of-K with the policy's exact settings. With groups, the certificate's
    ``groups`` also bound each group's cost and normalised reward on the same picks (given
    groups on the safety prompts their pairs carry, EM clusters on all). Without a policy (step 1
    found none) the result is NSF without a test, carrying ``reason``.

    Returns:
        The certificate as plain data (``passed`` False means NSF: release nothing).
    """
    if policy is None:
        return infeasible_certificate(config, reason, splits.safety)
    names = list(scorers.group_rewards or ())

    def score_fresh(prompts):  # K fresh reference samples per safety prompt, scored by the models
        scored = score_candidates(
            sampler.candidates(prompts, seed=config.seed + 2, sealed=splits.safety), scorers
        )
        if scored.group_rewards is None:
            return scored.rewards, scored.costs, scored.log_p
        # Each group's reward normalised over the prompt's K fresh candidates, as in alignment:
        # BT rewards have no fixed zero, so only normalised rewards have a meaning to bound.
        normalized = normalize_group_rewards(
            scored.group_rewards, mode=config.groups.normalize, beta=policy.beta, log_p=scored.log_p
        )
        groups = dict(zip(names, normalized, strict=True))
        return scored.rewards, scored.costs, scored.log_p, groups

    sample = best_of_k_sampler(score_fresh, seed=config.seed)
    certificate = certify(
        policy,
        splits.safety,
        sample,
        safety=attempt_safety(config.safety),
        group_prompts="own" if config.groups.mode == "given" else "all",
        reward_normalization=config.groups.normalize,
    )
    return certificate.to_dict()


def certify_policy_stage(config: Config, out_dir: str | Path) -> dict:
    """Certify the policy that ``align_stage`` wrote to ``out_dir``; writes certificate.json.

    Raises:
        DataError: no (valid) policy.json in ``out_dir``, or it was aligned on a candidates file,
            whose model safealign's reference sampler cannot sample.
        ConfigError: ``config`` is not the configuration the policy was aligned with.
    """
    out = Path(out_dir)
    path = out / POLICY_FILE
    if not path.is_file():
        raise DataError(
            f"no {POLICY_FILE} in this directory: run `safealign align CONFIG --out {out}` first "
            "(or certify another model's samples with --responses)",
            path=str(out),
        )
    preflight(config, out, trains=())
    policy_file = load_policy_file(path)
    if policy_file.from_candidates_file and policy_file.policy is not None:
        raise DataError(
            f"the policy was aligned on candidates from {policy_file.candidates['path']} (your "
            "model's samples), and safealign's reference sampler cannot sample your model. Sample "
            "one response per safety prompt (prompts never used for alignment) with your own stack, "
            "deployed as policy.json's 'policy' says, then run: safealign certify CONFIG "
            f"--responses FILE --sampler-settings FILE --cost-model {out / policy_file.models.cost}",
            path=str(path),
            field="candidates",
        )
    pairs, world = load_source(config)
    splits = make_splits(pairs, config)
    sampler = ReferenceSampler(config, world, splits)
    check_policy_file_matches(
        policy_file,
        path,
        safety=to_plain(config.safety),
        data=data_record(config, pairs, splits),
        reference_sampler=sampler.describe(),
    )
    policy = policy_file.policy
    scorers = (
        None if policy is None else load_scorers(out, policy_file.models, policy_file.group_weights)
    )
    return logged_certify_stage(
        config,
        out,
        policy=policy,
        reason=policy_file.reason,
        scorers=scorers,
        splits=splits,
        sampler=sampler,
    )


def logged_certify_stage(config: Config, out: Path, *, policy, splits: Splits, **stage) -> dict:
    """:func:`certify_stage` as one logged attempt on its safety set; writes certificate.json.

    The certificate already in ``out`` is returned as it is when the log shows it is this very
    policy's test (a resumed run, a repeated ``certify``): that is no new attempt. Otherwise the
    certification log records the attempt before the test runs, or refuses it (exit 2) when the
    set's declared ``safety.attempts`` are used up. Step 1's NSF runs no test and is not logged.

    Raises:
        IsolationError: the log refuses a further test on this safety set.
    """
    path = out / "certificate.json"
    test = functools.partial(certify_stage, config, policy=policy, splits=splits, **stage)
    if policy is None:
        certificate = test()
        atomic_write_text(path, json.dumps(certificate, indent=2, sort_keys=True) + "\n")
        return certificate
    prompts = splits.safety.unseal(purpose=CERTIFY).prompts  # the set's identity, for the log
    settings = policy.sampler_settings()
    reused = resumable_certificate(config.budget, prompts, settings, path)
    if reused is not None:
        return reused
    return logged_test(config.budget, config.safety, prompts, settings, path, test)


def _report(config, out, receipts, certificate, aligned, data, truth):
    pairs, splits = data
    ledger = ledger_summary(config, pairs.fingerprint)
    groups = aligned.group_rewards and report_groups(aligned.group_rewards, certificate)
    key = signing_key(config, out)
    # Every file of the run except the report and its renderings (hashed in the signed
    # renderings manifest), a configured private key placed inside the run, and the ledger: a
    # live database whose bytes change as it is read (its state is in privacy.ledger). Nor the
    # frozen-backbone embedding cache: private data, whose hashes would let anyone test guesses.
    ledger_path = Path(config.budget.ledger or default_ledger_path()).resolve()
    log = str(log_path(config.budget).resolve())  # the certification log: a live database too
    secret = Path(config.audit.signing_key).resolve() if config.audit.signing_key else None
    artifacts = [
        p
        for p in sorted(out.rglob("*"))
        if p.is_file()
        and not p.is_symlink()
        and p.name not in {"report.json", "report.html", "report.md"}
        and not p.name.endswith(CACHE_SUFFIX)
        and p.resolve() != secret
        and not p.resolve().name.startswith(ledger_path.name)
        and not str(p.resolve()).startswith(log)
    ]
    extra = {"true_outcomes": truth} if truth else None
    report = build_report(
        receipts=[r.to_dict() for r in receipts],
        ledger=ledger,
        certificate=certificate,
        groups=groups,
        # Commitments, not SHA-256, for the private splits (run_stages.released_fingerprints).
        splits={
            "fingerprints": released_fingerprints(config, pairs, splits)["splits"],
            "sizes": splits.sizes(),
        },
        config=config.to_dict(),
        artifacts=artifacts,
        base_dir=out,
        extra=extra,
    )
    signed, paths = write_report_files(
        report, out, formats=config.audit.formats, private_key=key.private_key, demo_key=key.demo
    )
    return signed, paths, key.note
