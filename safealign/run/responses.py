"""Certify another model's samples: ``safealign certify CONFIG --responses FILE``.

Bring your own samples: one response per safety prompt, sampled from your model with recorded
sampler settings, scored by a trained cost model, tested once (logged like every test). When the
policy's ``policy.json`` is given (``--policy``, or one in the run directory), prompts the policy
was aligned on are refused: the one-shot test is valid only on prompts selection never saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from safealign.constraints.attempts import attempt_safety, logged_test
from safealign.constraints.candidates import load_candidates
from safealign.constraints.hc_rlhf import Certificate, certify_samples
from safealign.data.io import iter_json_lines, parse_json
from safealign.data.near_duplicates import NearDuplicateIndex
from safealign.data.records import LabelledResponse, normalise_text
from safealign.data.records import fingerprint as records_fingerprint
from safealign.data.responses import load_responses
from safealign.errors import DataError
from safealign.models.scalar import load_scoring_model
from safealign.run.paths import POLICY_FILE, RunPaths
from safealign.run.policy_file import PolicyFile, load_policy_file
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
        DataError: a file is malformed, a prompt repeats, the model is not a cost model, or a
            prompt is one the policy was aligned on (naming the file and line).
        IsolationError: the certification log refuses a further test on this safety set.
    """
    config = ws.config
    settings = _sampler_settings(sampler_settings)
    rows = load_responses(responses)
    model = load_scoring_model(cost_model)
    if model.kind != "cost":
        raise DataError(
            f"this is a {model.kind} model; certification needs a cost model", path=str(cost_model)
        )
    prompts = [r["prompt"] for r in rows]
    if len({normalise_text(p) for p in prompts}) != len(prompts):
        raise DataError(
            "give exactly one sampled response per safety prompt (a prompt repeats, up to case, "
            "spacing, zero-width characters and edge punctuation)",
            path=str(responses),
        )
    checked = _refuse_aligned_prompts(ws, responses, prompts, policy)
    costs = model.score(prompts, [r["response"] for r in rows])
    safety_fp = records_fingerprint(LabelledResponse(prompt=p) for p in prompts)

    def test() -> Certificate:
        certificate = certify_samples(
            costs,
            safety=attempt_safety(config.safety),
            sampler_settings=settings,
            safety_fingerprint=safety_fp,
        )
        if checked is not None:
            return certificate
        unchecked = (
            "no policy.json was given (--policy, or one in --out): the prompts were not "
            "checked against the prompts the policy was aligned on"
        )
        return replace(certificate, assumptions=(*certificate.assumptions, unchecked))

    ws.out.mkdir(parents=True, exist_ok=True)
    path = ws.paths.certificate
    return logged_test(config.budget, config.safety, prompts, settings, path, test)


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
