"""Candidate sets: K responses per prompt from a reference sampler, as texts and score tensors.

Three sources, one type:
- the synthetic world's reference sampler (with ground truth);
- a JSONL file a team produced with its own serving stack, one object per line:
  ``{"prompt": str, "responses": [str, ...], "logprobs": [float, ...]?}`` — ``logprobs`` are the
  reference policy's log-probabilities of the responses (omit them when the responses were sampled
  from the reference: uniform weights are then exact);
- the responses already present in preference pairs (K = 2 per prompt), for real data without a
  sampler.

Prompts may have different numbers of responses: the tensors are padded to the largest K, and
padded slots get reference log-probability −∞ so every solver gives them zero mass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from safealign.data.io import iter_json_lines
from safealign.data.records import PairDataset
from safealign.data.splits import SealedDataset
from safealign.errors import DataError
from safealign.models.scalar import ScoringModel


@dataclass(frozen=True)
class Candidates:
    """Responses per prompt and the reference log-probabilities ``[N, K]`` (−∞ marks padding)."""

    prompts: tuple[str, ...]
    responses: tuple[tuple[str, ...], ...]
    log_p: torch.Tensor
    source: str

    @property
    def num_candidates(self) -> int:
        return self.log_p.shape[1]

    def flat(self) -> tuple[list[str], list[str]]:
        """Prompt and response of every real (non-padded) slot, row-major."""
        prompts, responses = [], []
        for prompt, row in zip(self.prompts, self.responses, strict=True):
            prompts.extend([prompt] * len(row))
            responses.extend(row)
        return prompts, responses

    def score(self, model: ScoringModel, *, batch_size: int = 256) -> torch.Tensor:
        """``[N, K]`` scores of every candidate (padding slots score 0 and carry no mass)."""
        prompts, responses = self.flat()
        values = model.score(prompts, responses, batch_size=batch_size).double()
        out = torch.zeros(self.log_p.shape, dtype=torch.float64)
        mask = torch.isfinite(self.log_p)
        out[mask] = values
        return out


def _log_p(
    rows: Sequence[Sequence[str]], logprobs: Sequence[Sequence[float] | None]
) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), -math.inf, dtype=torch.float64)
    for i, (row, lp) in enumerate(zip(rows, logprobs, strict=True)):
        out[i, : len(row)] = torch.tensor(lp, dtype=torch.float64) if lp is not None else 0.0
    return out


def candidates_from_texts(
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    *,
    source: str,
    logprobs: Sequence[Sequence[float] | None] | None = None,
) -> Candidates:
    """Candidates from in-memory texts (e.g. the synthetic world's reference samples)."""
    logprobs = logprobs if logprobs is not None else [None] * len(prompts)
    rows = tuple(tuple(r) for r in responses)
    return Candidates(tuple(prompts), rows, _log_p(rows, logprobs), source)


def candidates_from_pairs(pairs: PairDataset) -> Candidates:
    """The distinct responses each prompt has in ``pairs`` (the data-collection policy's samples)."""
    by_prompt: dict[str, dict[str, None]] = {}
    for pair in pairs:
        seen = by_prompt.setdefault(pair.prompt, {})
        seen.setdefault(pair.chosen)
        seen.setdefault(pair.rejected)
    prompts = list(by_prompt)
    return candidates_from_texts(
        prompts, [list(by_prompt[p]) for p in prompts], source=f"pairs:{pairs.name}"
    )


def load_candidates(path: str | Path) -> Candidates:
    """Read a candidates JSONL file (schema in the module docstring).

    Raises:
        DataError: naming the file, line and field of the first bad record.
    """
    path = str(path)
    prompts, rows, logprobs = [], [], []
    seen: set[str] = set()
    for line, obj in iter_json_lines(path):

        def bad(message: str, field: str, line: int = line) -> DataError:
            return DataError(message, path=path, line=line, field=field)

        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad("field 'prompt' must be a non-empty string", "prompt")
        if prompt in seen:
            raise bad(
                "this prompt already appeared on an earlier line; give all its responses on one line",
                "prompt",
            )
        responses = obj.get("responses")
        if (
            not isinstance(responses, list)
            or not responses
            or not all(isinstance(r, str) for r in responses)
        ):
            raise bad("field 'responses' must be a non-empty list of strings", "responses")
        lp = obj.get("logprobs")
        if lp is not None and (
            not isinstance(lp, list)
            or len(lp) != len(responses)
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in lp
            )
        ):
            raise bad(
                f"field 'logprobs' must be a list of {len(responses)} finite numbers (one per response)",
                "logprobs",
            )
        seen.add(prompt)
        prompts.append(prompt)
        rows.append(responses)
        logprobs.append(lp)
    if any(lp is None for lp in logprobs) and any(lp is not None for lp in logprobs):
        raise DataError("give 'logprobs' on every line or on none", path=path)
    return candidates_from_texts(prompts, rows, source=path, logprobs=logprobs)


def load_alignment_candidates(path: str | Path, *, safety: SealedDataset) -> Candidates:
    """Read a candidates file to align on: :func:`load_candidates` plus what alignment needs.

    HC-RLHF step 1 needs at least two prompts (the bound uses their standard deviation), and none
    of them may be a safety prompt: the one-shot safety test is valid only on prompts the policy
    was never optimised on (Chittepu et al. 2025, Sec. 4). Membership is checked with
    :meth:`SealedDataset.overlapping`, which does not unseal the split.

    Raises:
        DataError: naming the file (and the line of the first safety prompt found).
    """
    path = str(path)
    candidates = load_candidates(path)
    if len(candidates.prompts) < 2:
        raise DataError(
            f"alignment needs candidates for at least 2 prompts (got {len(candidates.prompts)})",
            path=path,
        )
    hits = safety.overlapping(candidates.prompts)
    if hits:
        first = candidates.prompts[hits[0]]
        line = next(n for n, obj in iter_json_lines(path) if obj.get("prompt") == first)
        raise DataError(
            f"this prompt is one of the sealed safety prompts or a near-copy of one ({len(hits)} "
            f"of the {len(candidates.prompts)} candidate prompts are: same normalised text, or "
            "Jaccard >= 0.8 on word 3-shingles); the safety test is valid only on prompts the "
            "policy was never optimised on, so remove every such prompt from the candidates file",
            path=path,
            line=line,
            field="prompt",
        )
    return candidates
