"""The uniformly random subset of responses that get trusted labels (package doc: why it makes
the labelled triples an i.i.d. sample)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from safealign.errors import ConfigError
from safealign.privacy.secret import secret_generator


@dataclass(frozen=True)
class LabelSubset:
    """The responses chosen for trusted labelling: positions among the ``n`` scored ones.

    Attributes:
        n: Responses that were scored (one per safety prompt).
        indices: Positions of the chosen responses in ``[0, n)``, distinct, in draw order (the
            order the rectifier's betting bound takes them in).
    """

    n: int
    indices: tuple[int, ...]

    @property
    def m(self) -> int:
        return len(self.indices)


def draw_label_subset(n: int, m: int) -> LabelSubset:
    """A uniformly random subset of ``m`` of ``n`` responses, drawn with fresh secret randomness.

    Uniform and independent of every response and score, which is what makes the labelled
    triples an i.i.d. sample (module doc). The randomness is fresh OS entropy
    (:func:`~safealign.privacy.secret.secret_generator`), not the public config seed: with a
    seed-derived subset whoever picks the seed, the policy or the responses knows in advance
    which responses a human will judge, and can make exactly those look safe. Call it after the
    responses are sampled and record the returned indices.

    Raises:
        ConfigError: ``m`` is not an integer with ``2 <= m <= n``.
    """
    if not (_is_int(n) and _is_int(m) and 2 <= m <= n):
        raise ConfigError(
            f"labels: the subset to label needs 2 <= m <= n responses (got m={m!r}, n={n!r})"
        )
    order = torch.randperm(int(n), generator=secret_generator())[: int(m)]
    return LabelSubset(n=int(n), indices=tuple(int(i) for i in order))


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
