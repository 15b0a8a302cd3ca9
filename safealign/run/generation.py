"""``safealign generate``: sample the certified LM policy of a run directory, exactly as certified.

The policy is the base and adapter that ``policy.json`` names (their files hash-checked), sampled
with the adapter directory's ``generation_config.json``, which must hold exactly the sampler
settings the certificate covers; or, for best-of-K over an LM, the base LM sampled K times with
``policy/generation_config.json`` and resampled by the recorded tilt over the scores of the
recorded scoring models (every directory hash-checked: :mod:`~safealign.run.lm_best_of_k`). Without a passing certificate for this very policy nothing is
sampled, unless the caller asks for an uncertified policy explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from safealign.constraints.attempts import same_settings
from safealign.data.io import parse_json
from safealign.errors import DataError
from safealign.models.causal import generate
from safealign.models.policy_artifact import LMBestOfKPolicy, LMPolicy, read_sampler_settings
from safealign.run.lm_best_of_k import generate_best_of_k
from safealign.run.lm_certify import load_deployed
from safealign.run.paths import POLICY_DIR, POLICY_FILE, RunPaths
from safealign.run.policy_file import load_policy_file


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per non-empty line) or a JSONL file (``"prompt"`` per line).

    Raises:
        DataError: unreadable, empty, or a JSONL line without a string ``prompt`` (naming the line).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the prompts file ({exc})", path=str(path)) from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            obj = parse_json(line, path=str(path), line=number)
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise DataError("expected an object with a string 'prompt'", path=str(path),
                                line=number, field="prompt")  # fmt: skip
            prompts.append(obj["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise DataError("no prompts in the file", path=str(path))
    return prompts


def certified_policy(
    out: str | Path, *, allow_uncertified: bool = False
) -> LMPolicy | LMBestOfKPolicy:
    """The run directory's LM policy, checked to be the one its certificate passed.

    Raises:
        DataError: no policy.json, no LM policy in it, no passing certificate of it (unless
            ``allow_uncertified``), or a generation_config.json other than the certified one.
    """
    paths = RunPaths(Path(out))
    if not paths.policy.is_file():
        raise DataError(f"no {POLICY_FILE} here: not a run directory of an aligned policy",
                        path=str(paths.root))  # fmt: skip
    policy = load_policy_file(paths.policy).policy
    if not isinstance(policy, LMPolicy | LMBestOfKPolicy):
        what = (
            "no policy (no solution found)"
            if policy is None
            else "a best-of-K policy over the reference sampler"
        )
        raise DataError(f"it holds {what}, not a language model to sample; align with "
                        "policy.method: distill, or best_of_k with policy.model",
                        path=str(paths.policy))  # fmt: skip
    if not allow_uncertified:
        _check_certified(paths, policy)
    folder = paths.root / (policy.adapter_dir if isinstance(policy, LMPolicy) else POLICY_DIR)
    on_disk = read_sampler_settings(folder)
    if on_disk != policy.sampler:
        raise DataError(
            f"holds {on_disk.to_dict()}, not the certified sampler {policy.sampler.to_dict()}",
            path=str(folder / "generation_config.json"),
        )
    return policy


def generate_responses(
    out: str | Path, prompts: Sequence[str], *, seed: int = 0, allow_uncertified: bool = False
) -> list[dict]:
    """One response per prompt from the certified policy of run directory ``out``.

    Returns:
        ``[{"prompt", "response", "sampler"}]``, reproducible in ``seed``.
    """
    policy = certified_policy(out, allow_uncertified=allow_uncertified)
    if isinstance(policy, LMBestOfKPolicy):
        return generate_best_of_k(Path(out), policy, prompts, seed=seed)
    model, tokenizer = load_deployed(Path(out), policy)
    settings = policy.sampler.to_dict()
    responses = generate(model, tokenizer, list(prompts), num_samples=1, seed=seed, **settings)
    return [{"prompt": p, "response": r[0], "sampler": settings}
            for p, r in zip(prompts, responses, strict=True)]  # fmt: skip


def _check_certified(paths: RunPaths, policy: LMPolicy | LMBestOfKPolicy) -> None:
    try:
        certificate = json.loads(paths.certificate.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        certificate = None
    ok = isinstance(certificate, dict) and certificate.get("result") == "certified"
    if not ok or not same_settings(certificate.get("sampler_settings"), policy.sampler_settings()):
        raise DataError(
            "no passing certificate of this policy here: run `safealign certify` first (or pass "
            "--uncertified to sample a policy that no safety test covers)",
            path=str(paths.certificate),
        )
