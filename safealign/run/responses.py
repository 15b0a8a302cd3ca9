"""Certify another model's samples: ``safealign certify CONFIG --responses FILE``.

Bring your own samples: one response per safety prompt, sampled from your model with recorded
sampler settings, scored by a trained cost model, tested once (logged like every test). When the
policy's ``policy.json`` is given (``--policy``, or one in the run directory), prompts the policy
was aligned on are refused: the one-shot test is valid only on prompts selection never saw.

Every input is checked before the test is logged (:func:`check_responses_inputs`): a fault found
after the log's ``begin`` would cost an attempt, or reach the user as a fault of the bound.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from safealign.constraints.attempts import attempt_safety, logged_test
from safealign.constraints.candidates import load_candidates
from safealign.constraints.hc_rlhf import Certificate, certify_samples, check_sample_size
from safealign.data.io import iter_json_lines, parse_json
from safealign.data.near_duplicates import NearDuplicateIndex
from safealign.data.records import LabelledResponse, normalise_text
from safealign.data.records import fingerprint as records_fingerprint
from safealign.data.responses import load_responses
from safealign.errors import ConfigError, DataError
from safealign.models.scalar import ScoringModel, load_scoring_model
from safealign.run.paths import POLICY_FILE, RunPaths
from safealign.run.policy_file import PolicyFile, load_policy_file
from safealign.run.preflight import preflight_responses
from safealign.run.workspace import Workspace


def certify_responses(
    ws: Workspace,
    *,
    responses: str | Path,
    sampler_settings: str | Path,
    cost_model: str | Path,
    policy: str | Path | None = None,
) -> Certificate:
    """The logged safety test of ``responses`` (one per safety prompt); writes certificate.json.

    Args:
        ws: The workspace (its config's safety section and ledger; its run directory).
        responses: JSONL of ``{"prompt", "response"}``, one line per safety prompt.
        sampler_settings: JSON object of how the responses were sampled.
        cost_model: A trained cost model's directory.
        policy: The policy's ``policy.json`` (default: the run directory's, if there is one).

    Raises:
        DataError, ConfigError: any input fails :func:`check_responses_inputs` (nothing logged).
        IsolationError: the certification log refuses a further test on this safety set.
    """
    config = ws.config
    inputs = check_responses_inputs(
        ws,
        responses=responses,
        sampler_settings=sampler_settings,
        cost_model=cost_model,
        policy=policy,
    )
    prompts = inputs.prompts
    costs = inputs.model.score(prompts, inputs.responses)
    safety_fp = records_fingerprint(LabelledResponse(prompt=p) for p in prompts)

    def test() -> Certificate:
        certificate = certify_samples(
            costs,
            safety=attempt_safety(config.safety),
            sampler_settings=inputs.settings,
            safety_fingerprint=safety_fp,
        )
        if inputs.checked_against is not None:
            return certificate
        unchecked = (
            "no policy.json was given (--policy, or one in --out): the prompts were not "
            "checked against the prompts the policy was aligned on"
        )
        return replace(certificate, assumptions=(*certificate.assumptions, unchecked))

    path = ws.paths.certificate
    return logged_test(config.budget, config.safety, prompts, inputs.settings, path, test)


@dataclass(frozen=True)
class ResponsesInputs:
    """What ``certify --responses`` reads, checked (:func:`check_responses_inputs`)."""

    settings: dict
    prompts: list[str]
    responses: list[str]
    model: ScoringModel
    checked_against: Path | None


def check_responses_inputs(
    ws: Workspace,
    *,
    responses: str | Path,
    sampler_settings: str | Path,
    cost_model: str | Path,
    policy: str | Path | None = None,
) -> ResponsesInputs:
    """Every check of ``certify --responses``, before the test is logged (arguments as there).

    The pre-flight (config, writable ``--out`` and certificate path, certification log), the
    sampler settings, each line of the responses file, one response per prompt, enough
    responses for the configured bound, a cost model, and no prompt the policy was aligned on.

    Raises:
        DataError: naming the file, and the line and field where there is one.
        ConfigError: the config, or a bound the number of responses does not allow.
    """
    preflight_responses(ws.config, ws.out)
    settings = _sampler_settings(sampler_settings)
    rows = load_responses(responses)
    prompts = [r["prompt"] for r in rows]
    _check_one_per_prompt(responses, prompts)
    _check_enough(ws, responses, len(rows))
    model = load_scoring_model(cost_model)
    if model.kind != "cost":
        raise DataError(
            f"this is a {model.kind} model; certification needs a cost model", path=str(cost_model)
        )
    checked = _refuse_aligned_prompts(ws, responses, prompts, policy)
    return ResponsesInputs(settings, prompts, [r["response"] for r in rows], model, checked)


def _check_one_per_prompt(responses: str | Path, prompts: list[str]) -> None:
    lines = [n for n, _ in iter_json_lines(responses)]
    first: dict[str, int] = {}
    for line, prompt in zip(lines, prompts, strict=True):
        earlier = first.setdefault(normalise_text(prompt), line)
        if earlier != line:
            raise DataError(
                f"field 'prompt' repeats the prompt of line {earlier} (up to case, spacing, "
                "zero-width characters and edge punctuation): give exactly one sampled response "
                "per safety prompt",
                path=str(responses),
                line=line,
                field="prompt",
            )


def _check_enough(ws: Workspace, responses: str | Path, n: int) -> None:
    """The bound's sample-size rules, here so that they name the file and run before the log."""
    if n < 2:
        raise DataError(
            f"an upper bound needs at least 2 responses, one per safety prompt (got {n})",
            path=str(responses),
        )
    try:
        check_sample_size(ws.config.safety, n)
    except ConfigError as exc:
        raise DataError("; ".join(exc.problems), path=str(responses)) from None


def _sampler_settings(path: str | Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the sampler settings ({exc})", path=str(path)) from None
    settings = parse_json(text, path=str(path))  # strict: see safealign.data.io
    if not isinstance(settings, dict) or not settings:
        raise DataError(
            "sampler settings must be a non-empty JSON object (model, temperature, top_p, ...)",
            path=str(path),
        )
    return settings


def _refuse_aligned_prompts(
    ws: Workspace, responses: str | Path, prompts: list[str], policy: str | Path | None
) -> Path | None:
    """Refuse responses to prompts the policy was aligned on (normalised copies or near-copies).
    Returns the policy.json checked against, or None when there is none."""
    path = Path(policy) if policy else RunPaths(ws.out).policy
    if policy is None and not path.is_file():
        return None
    policy_file = load_policy_file(path)
    index = NearDuplicateIndex(
        _aligned_prompts(policy_file, path, lambda: _candidate_split(ws, policy_file, path))
    )
    lines = [n for n, _ in iter_json_lines(responses)]
    for line, prompt in zip(lines, prompts, strict=True):
        if index.match(prompt) is not None:
            raise DataError(
                f"this prompt is one the policy was aligned on ({path}), or a near-copy of one "
                "(same normalised text, or Jaccard >= 0.8 on word 3-shingles): the safety test is "
                "valid only on prompts the policy was never optimised on; sample responses for "
                "fresh safety prompts",
                path=str(responses),
                line=line,
                field="prompt",
            )
    return path


def _candidate_split(ws: Workspace, policy_file: PolicyFile, path: Path):
    """The candidate split the policy was aligned on: the config's data, checked by commitment."""
    recorded = policy_file.data.get("dataset_fingerprint")
    if ws.data_record()["dataset_fingerprint"] != recorded:
        raise DataError(
            "the policy was aligned on other data than this config's (the dataset commitments "
            "differ), so its candidate prompts cannot be checked: certify with the config and "
            "budget.ledger that align used",
            path=str(path),
            field="data",
        )
    return ws.splits.candidate.prompts


def _aligned_prompts(
    policy_file: PolicyFile, path: str | Path, candidate_split: Callable[[], Sequence[str]]
) -> tuple[str, ...]:
    """The prompts ``policy_file``'s policy was optimised on, for ``certify --responses``.

    A candidates file's prompts (the file must still be at its recorded path with its recorded
    SHA-256), or, for the reference sampler's candidates, the candidate split's
    (``candidate_split()``: the config's data, whose commitment the caller checks).

    Raises:
        DataError: the candidates file is missing or changed since alignment.
    """
    if not policy_file.from_candidates_file:
        return tuple(candidate_split())
    source = Path(policy_file.candidates["path"])
    digest = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else None
    if digest != policy_file.candidates["sha256"]:
        raise DataError(
            f"the policy was aligned on candidates from {source}, which is "
            f"{'missing' if digest is None else 'changed'} (its SHA-256 is in {POLICY_FILE}); "
            "restore that file so certification can check that no safety prompt was aligned on",
            path=str(path),
            field="candidates",
        )
    return load_candidates(source).prompts
