"""The certify stage: HC-RLHF step 2, the one logged safety test of an aligned policy.

:func:`unseal_safety_split` is the only code in safealign that unseals the sealed safety split
(``tests/run/test_seal_owner.py`` checks that nothing else calls the unseal primitive). It runs
once per test, after every refusal that costs nothing (the config's checks, the certification
log's attempt count), and hands the records to the cost-model scoring of fresh samples and to
:func:`safealign.constraints.hc_rlhf.certify`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from safealign.config import to_plain
from safealign.constraints.align import Scorers, normalized_groups, score_candidates
from safealign.constraints.attempts import (
    attempt_safety,
    logged_test,
    plain_settings,
    resumable_certificate,
    same_settings,
)
from safealign.constraints.candidates import Candidates
from safealign.constraints.designated import designate_certificate
from safealign.constraints.hc_rlhf import Certificate, untested_certificate, write_certificate
from safealign.constraints.hc_rlhf import certify as safety_test
from safealign.constraints.tilting import TiltedPolicy, best_of_k_sampler
from safealign.data.records import PairDataset
from safealign.data.splits import CERTIFY, SealedDataset, SealedPromptSet
from safealign.errors import ConfigError, DataError, IsolationError
from safealign.models.policy_artifact import LMBestOfKPolicy, LMPolicy
from safealign.run.lm_best_of_k import check_deployed, check_matches_config, deploy
from safealign.run.lm_certify import policy_dirs, run_lm_safety_test
from safealign.run.models import load_scorers
from safealign.run.paths import POLICY_FILE, RunPaths
from safealign.run.policy_file import check_policy_file_matches, load_policy_file
from safealign.run.preflight import preflight
from safealign.run.workspace import Workspace


class Labelling(Protocol):
    """What labelled certification (:mod:`safealign.run.labelling`) needs from the safety test."""

    def observe(self, fresh: Any, scored: Any) -> None:
        """The fresh candidates and their scores, as the sampler sees them (best-of-K)."""

    def observe_responses(self, prompts: Any, responses: Any) -> None:
        """The one response an LM policy sampled per safety prompt, in order."""

    def finish(self, certificate: Certificate, policy: TiltedPolicy) -> Certificate:
        """The certificate to log, from the test's own (called after sampling)."""


def unseal_safety_split(sealed: SealedDataset) -> PairDataset:
    """The safety split's records, for the safety test: the one caller of the unseal primitive.

    A designated set (``safety.prompts``, a :class:`~safealign.data.splits.SealedPromptSet`)
    unseals to its prompts (:class:`~safealign.data.splits.DesignatedPrompts`: ``prompts`` and
    ``fingerprint``, all the safety test reads).

    Raises:
        IsolationError: ``sealed`` is not a :class:`SealedDataset` (only a sealed split
            guarantees that nothing else read the safety prompts).
    """
    if not isinstance(sealed, SealedDataset):
        raise IsolationError(
            f"certify needs the sealed safety split (a SealedDataset), got {type(sealed).__name__}: "
            "only a sealed split guarantees that nothing else read the safety prompts"
        )
    return sealed.unseal(purpose=CERTIFY)


def certify(ws: Workspace, *, labelling: Labelling | None = None) -> Certificate:
    """Certify the policy that :func:`safealign.run.alignment.align` wrote; writes certificate.json.

    Raises:
        DataError: no (valid) policy.json in the run directory, or it was aligned on a
            candidates file, whose model safealign's reference sampler cannot sample.
        ConfigError: the config is not the configuration the policy was aligned with.
        IsolationError: the certification log refuses a further test on this safety set.
    """
    out, path = ws.out, ws.paths.policy
    if not path.is_file():
        raise DataError(
            f"no {POLICY_FILE} in this directory: run `safealign align CONFIG --out {out}` first "
            "(or certify another model's samples with --responses)",
            path=str(out),
        )
    preflight(ws.config, out, trains=(), certifies=True)
    policy_file = load_policy_file(path)
    if policy_file.from_candidates_file and policy_file.policy is not None:
        raise DataError(
            f"the policy was aligned on candidates from {policy_file.candidates['path']} (your "
            "model's samples), and safealign's reference sampler cannot sample your model. Sample "
            "one response per safety prompt (prompts never used for alignment) with your own stack, "
            f"deployed as {POLICY_FILE}'s 'policy' says, then run: safealign certify CONFIG "
            f"--responses FILE --sampler-settings FILE --cost-model {out / policy_file.models.cost}",
            path=str(path),
            field="candidates",
        )
    safety = to_plain(ws.config.safety)
    if safety["prompts"] is not None:  # a moved file is the same set: its fingerprint is compared
        safety["prompts"] = policy_file.safety.get("prompts", safety["prompts"])
    check_policy_file_matches(
        policy_file,
        path,
        safety=safety,
        data=ws.data_record(),
        reference_sampler=ws.sampler.describe(),
    )
    policy = policy_file.policy
    if isinstance(policy, LMBestOfKPolicy):
        check_matches_config(policy, ws, path=path)
    scorers = None
    if policy is not None:
        scorers = load_scorers(out, policy_file.models, policy_file.group_weights,
                               group_cost_lambdas=policy_file.group_cost_lambdas)  # fmt: skip
    return certify_policy(
        ws, policy, reason=policy_file.reason, scorers=scorers, labelling=labelling
    )


def certify_policy(
    ws: Workspace,
    policy: TiltedPolicy | LMPolicy | LMBestOfKPolicy | None,
    *,
    reason: str,
    scorers: Scorers | None,
    labelling: Labelling | None = None,
) -> Certificate:
    """The safety test of ``policy`` as one logged attempt on its safety set; writes
    certificate.json.

    The certificate already in the run directory is returned as it is when the log shows it is
    this very policy's test (a resumed run, a repeated ``certify``): that is no new attempt.
    Otherwise the certification log records the attempt before the test runs, or refuses it
    (exit 2) when the set's declared ``safety.attempts`` are used up. Without a policy (step 1
    found none) the result is NSF without a test, carrying ``reason``: it is not logged.

    With ``labelling`` (``safety.labels``: :mod:`safealign.run.labelling`), the test's sampled
    responses go to it and the certificate it returns (awaiting labels) is the one logged.

    Raises:
        IsolationError: the log refuses a further test on this safety set.
        ConfigError: ``safety.labels`` is declared, no ``labelling`` is given and no logged
            certificate of this policy exists.
    """
    config, path, sealed = ws.config, ws.paths.certificate, ws.splits.safety
    if policy is None:
        certificate = untested_certificate(
            attempt_safety(config.safety), reason=reason, safety_fingerprint=sealed.fingerprint
        )
        if isinstance(sealed, SealedPromptSet):  # the set is named even when no test ran
            certificate = replace(certificate, safety_set=sealed.record)
        write_certificate(certificate, path)
        return certificate
    if isinstance(policy, LMPolicy):  # changed model files: refused before the log counts a try
        policy_dirs(ws.out, policy)
    elif isinstance(policy, LMBestOfKPolicy):
        check_deployed(ws.out, policy)
    safety_pairs = unseal_safety_split(sealed)
    prompts, settings = safety_pairs.prompts, policy.sampler_settings()  # the set's identity
    reused = resumable_certificate(config.budget, prompts, settings, path)
    if reused is not None:
        return reused
    if config.safety.labels is not None and labelling is None:
        raise ConfigError(
            "safety.labels is declared: certify with `safealign certify CONFIG --out OUT "
            "--export-labelling FILE`, label FILE, then `--labels LABELS` (or remove safety.labels)"
        )
    if isinstance(policy, LMPolicy):
        test = functools.partial(run_lm_safety_test, labelling=labelling)
    elif isinstance(policy, LMBestOfKPolicy):
        test = run_lm_best_of_k_test  # labelled or designated: refused at load (config.policy)
    else:
        test = functools.partial(run_safety_test, labelling=labelling)

    def run_test() -> Certificate:
        certificate = test(ws, policy, scorers=scorers, safety_pairs=safety_pairs)
        if isinstance(sealed, SealedPromptSet):  # stated over THIS finite prompt set
            certificate = designate_certificate(certificate, sealed.record)
        return certificate

    return logged_test(config.budget, config.safety, prompts, settings, path, run_test)


def run_safety_test(
    ws: Workspace,
    policy: TiltedPolicy,
    *,
    scorers: Scorers,
    safety_pairs: PairDataset,
    labelling: Labelling | None = None,
) -> Certificate:
    """HC-RLHF step 2 on the unsealed ``safety_pairs`` (not logged: :func:`certify_policy` logs).

    Each safety prompt gets K fresh reference samples, scored by ``scorers``, and one of them is
    drawn by best-of-K with the policy's exact settings (:func:`best_of_k_test`).
    """
    seed = ws.config.seed

    def fresh(prompts):  # K fresh reference samples per safety prompt
        return ws.sampler.candidates(prompts, seed=seed + 2, safety_pairs=safety_pairs)

    certificate = best_of_k_test(
        ws, policy, policy, fresh, scorers=scorers, safety_pairs=safety_pairs,
        resample_seed=seed, labelling=labelling,
    )  # fmt: skip
    return certificate if labelling is None else labelling.finish(certificate, policy)


def run_lm_best_of_k_test(
    ws: Workspace, policy: LMBestOfKPolicy, *, scorers: Scorers | None, safety_pairs: PairDataset
) -> Certificate:
    """The safety test of best-of-K over an LM: K samples per safety prompt from the recorded base
    LM with the recorded sampler and seed, scored by the recorded scoring models (loaded from
    the run directory, hash-checked; ``scorers`` is not used), one drawn by the recorded tilt."""
    deployed = deploy(ws.out, policy, batch_size=ws.config.policy.sampler.batch_size)
    # λ_g set only the units of the reported group rewards (policy.json), not the deployed picks.
    lambdas = None if scorers is None else scorers.group_cost_lambdas
    return best_of_k_test(
        ws, policy, deployed.tilted, lambda prompts: deployed.candidates(prompts, seed=policy.seed),
        scorers=dataclasses.replace(deployed.scorers, group_cost_lambdas=lambdas),
        safety_pairs=safety_pairs, resample_seed=policy.resample_seed,
    )  # fmt: skip


def best_of_k_test(
    ws: Workspace,
    deployed: Any,
    tilted: TiltedPolicy,
    fresh: Callable[[tuple[str, ...]], Candidates],
    *,
    scorers: Scorers,
    safety_pairs: PairDataset,
    resample_seed: int,
    labelling: Labelling | None = None,
) -> Certificate:
    """The safety test of a best-of-K resampler (not logged): ``fresh(prompts)`` draws K candidates
    per safety prompt (the reference sampler's, or an LM's: :mod:`~safealign.run.lm_best_of_k`),
    ``scorers`` score them and ``tilted`` picks one per prompt, seeded by ``resample_seed``; the
    certificate records ``deployed.sampler_settings()``. With groups, its ``groups`` also bound
    each group's cost and normalised reward on the same picks (given groups on the safety prompts
    their pairs carry, EM clusters on all).
    """
    config = ws.config
    names = list(scorers.group_rewards or ())

    def score_fresh(prompts):
        cands = fresh(prompts)
        scored = score_candidates(cands, scorers)
        if labelling is not None:  # it keeps the texts of the responses the sampler picks
            labelling.observe(cands, scored)
        if scored.group_rewards is None:
            return scored.rewards, scored.costs, scored.log_p
        # Each group's reward normalised over the prompt's K fresh candidates, as in alignment
        # (regret: against each group's constrained optimum, at its recorded λ_g): BT rewards
        # have no fixed zero, so only normalised rewards have a meaning to bound.
        normalized = normalized_groups(scored, scorers, beta=tilted.beta, safety=config.safety,
                                       mode=config.groups.normalize)  # fmt: skip
        groups = dict(zip(names, normalized, strict=True))
        return scored.rewards, scored.costs, scored.log_p, groups

    sampler = best_of_k_sampler(score_fresh, seed=resample_seed, unit=config.safety.unit)
    return safety_test(
        deployed,
        safety_pairs,
        lambda _deployed, prompts: sampler(tilted, prompts),
        safety=attempt_safety(config.safety),
        group_prompts="own" if config.groups.mode == "given" else "all",
        reward_normalization=config.groups.normalize,
    )


def archive_certificate(paths: RunPaths, settings: Mapping[str, Any] | None):
    """Keep ``certificate.json`` of an earlier policy as ``certificates/attempt-K.json``.

    Certificates are never deleted: a new policy moves the old one aside (``untested-M.json``
    for one of no logged attempt: step 1's NSF), so the directory keeps every test it ran.

    Returns:
        The archived path, or None when there was nothing to move (or it is this policy's).
    """
    path = paths.certificate
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        old = {}
    old = old if isinstance(old, dict) else {}
    if same_settings(old.get("sampler_settings"), plain_settings(settings or {})):
        return None
    attempts = old.get("attempts")
    number = attempts.get("number") if isinstance(attempts, dict) else None
    name = f"attempt-{number}" if isinstance(number, int) else "untested"
    folder = paths.certificates
    folder.mkdir(exist_ok=True)
    target, copy = folder / f"{name}.json", 1
    while target.exists():  # e.g. several untested ones, or a copied directory's attempt K
        copy += 1
        target = folder / f"{name}-copy{copy}.json"
    path.replace(target)
    return target
