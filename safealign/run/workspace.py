"""The workspace of one run: its config, its directory, its data, splits and reference sampler.

Every command opens one :class:`Workspace` and hands it to the stages it runs, so the data are
loaded and split once per command, the same way everywhere. Loading is lazy: a stage that is
refused before it needs the data (no ``policy.json`` to certify) never reads them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import cached_property
from pathlib import Path

from safealign.config import Config
from safealign.constraints.candidates import (
    Candidates,
    candidates_from_pairs,
    candidates_from_texts,
)
from safealign.data.records import PairDataset
from safealign.data.source import load_source, make_splits
from safealign.data.splits import Splits
from safealign.data.synthetic import SyntheticWorld
from safealign.models.embeddings import EmbeddingCache, embedding_cache
from safealign.privacy.training import commit_fingerprint, ledger_commitment_key
from safealign.run.paths import RunPaths

#: Splits whose plain fingerprints may be published: the report declares them public inputs.
PUBLIC_SPLITS = ("candidate", "safety")


def say(progress: bool, message: str) -> None:
    """Print one progress line (flushed) when ``progress`` is on."""
    if progress:
        print(message, flush=True)


class ReferenceSampler:
    """K reference responses per prompt: the synthetic world's sampler, or the data's own responses.

    Without a world, a prompt's candidates are the distinct responses it has in the preference data
    (the data-collection policy's samples); for safety prompts those are read from the unsealed
    safety pairs that only certification holds (:func:`safealign.run.certification.unseal_safety_split`).
    """

    def __init__(self, config: Config, world: SyntheticWorld | None, splits: Splits) -> None:
        self.world, self.num_candidates, self.splits = world, config.policy.num_candidates, splits

    def describe(self) -> dict:
        if self.world is not None:
            return {
                "source": "synthetic world reference policy",
                "num_candidates": self.num_candidates,
                "world_seed": self.world.seed,
            }
        return {"source": "responses in the preference data (data-collection policy)"}

    def candidates(
        self, prompts, *, seed: int, safety_pairs: PairDataset | None = None
    ) -> Candidates:
        """Candidates for ``prompts``: the world's samples, else the responses of ``safety_pairs``
        (the unsealed safety split, for the safety test) or of the candidate split."""
        if self.world is not None:
            cands = self.world.sample_candidates(
                list(prompts), num_candidates=self.num_candidates, seed=seed
            )
            return candidates_from_texts(cands.prompts, cands.responses, source="synthetic world")
        pairs = safety_pairs if safety_pairs is not None else self.splits.candidate
        by_prompt = candidates_from_pairs(pairs)
        order = {p: i for i, p in enumerate(by_prompt.prompts)}
        rows = [by_prompt.responses[order[p]] for p in prompts]
        return candidates_from_texts(tuple(prompts), rows, source=by_prompt.source)


class Workspace:
    """One run's config, directory, data, splits and reference sampler (data loaded once, lazily).

    Attributes:
        config: The run's configuration.
        paths: The run directory's file names.
    """

    def __init__(self, config: Config, out_dir: str | Path) -> None:
        self.config = config
        self.paths = RunPaths(Path(out_dir))

    @property
    def out(self) -> Path:
        """The run directory."""
        return self.paths.root

    def embedding_cache(self) -> AbstractContextManager[EmbeddingCache]:
        """The run's frozen-backbone embedding cache, active inside the ``with`` block: every
        reward, cost and group model and every candidate scoring of this run share it."""
        return embedding_cache(self.paths.embeddings)

    @cached_property
    def _source(self) -> tuple[PairDataset, SyntheticWorld | None]:
        return load_source(self.config)

    @property
    def pairs(self) -> PairDataset:
        """Every pair of ``data.source``."""
        return self._source[0]

    @property
    def world(self) -> SyntheticWorld | None:
        """The synthetic world (``data.source: synthetic``), else None."""
        return self._source[1]

    @cached_property
    def splits(self) -> Splits:
        """Train / eval / candidate / (sealed) safety splits as the config says."""
        return make_splits(self.pairs, self.config)

    @cached_property
    def sampler(self) -> ReferenceSampler:
        """The run's reference sampler."""
        return ReferenceSampler(self.config, self.world, self.splits)

    @property
    def commitment_key(self) -> bytes:
        """The secret that keys every published commitment of a run: the config's ledger's key."""
        return ledger_commitment_key(self.config.budget.ledger)

    def released_fingerprints(self) -> dict:
        """The data identities a run publishes: keyed commitments to the private data, plain
        SHA-256 only of the splits the report declares public (:data:`PUBLIC_SPLITS`).

        Returns:
            ``{"dataset": commitment, "splits": {split: commitment or sha256}}``.
        """
        key = self.commitment_key
        return {
            "dataset": commit_fingerprint(key, self.pairs.fingerprint),
            "splits": {
                name: fp if name in PUBLIC_SPLITS else commit_fingerprint(key, fp)
                for name, fp in self.splits.fingerprints().items()
            },
        }

    def data_record(self) -> dict:
        """What policy.json records of the data, so certification can check it sees the same
        splits (commitments compare as equal for equal data under one key)."""
        released = self.released_fingerprints()
        return {
            "dataset": self.pairs.name,
            "dataset_fingerprint": released["dataset"],
            "split_fingerprints": released["splits"],
            "n_safety": self.splits.safety.num_prompts,
        }
