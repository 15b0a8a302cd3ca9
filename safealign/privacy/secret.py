"""Secret randomness for every DP mechanism: Poisson sampling, DP-SGD noise, calibration, EM counts.

Why secret: a DP guarantee holds only if the adversary does not know the mechanism's random
draws. The config ``seed`` is published (``receipt.json``, ``config.resolved.yaml``,
``report.json``); when the noise came from it, retraining with the published seed reproduced the
released DP model bit for bit on D and not on a neighbour D - x, so membership was decided with
certainty (effective ε infinite). So every DP draw comes from :func:`secret_generator` (or
:func:`shared_secret_generator` under ``torchrun``): 32 bytes from the operating system's CSPRNG
(:func:`secrets.token_bytes`), never derived from the seed, never logged, written, returned or
checkpointed. DP runs are therefore not bit-reproducible, by design; everything else (splits,
initialisation, non-private runs) still follows the seed.

Why not ``torch.Generator().manual_seed(secrets.randbits(63))``: the CPU generator (MT19937)
keeps only the low 32 bits of a seed (``manual_seed(s)`` and ``manual_seed(s + 2**32)`` draw the
same numbers), so a released calibration shift or noisy count could be matched against all 2^32
seeds. Instead the 32 secret bytes are expanded with SHAKE-256 into all 624 words of the
generator's state (19968 bits). A CUDA generator (Philox) takes a 64-bit key, which is used in
full. MT19937 and Philox are not cryptographic generators, but the adversary never sees their raw
output, only noisy sums of clipped gradients; the draws Opacus turns into noise are made
floating-point safe by ``secure_mode`` (:mod:`.dp_sgd`).

Tests that need repeatable DP runs replace :func:`_secret_material` (``tests/conftest.py``); no
config key or environment variable can, so a released run can never have seedable DP noise.
"""

from __future__ import annotations

import hashlib
import secrets

import torch
import torch.distributed as dist

from safealign.privacy.distributed import Ranks

SECRET_BYTES = 32
_MT_WORDS = 624  # MT19937's state: 624 uint32 words
# torch's CPU generator state (CPUGeneratorImplState): the 624 words sit at byte 24, one per
# 8-byte slot (little-endian), in a 5056-byte record. Checked on every use (see _cpu_generator).
_CPU_STATE_BYTES, _CPU_WORDS_AT = 5056, 24


def _secret_material() -> bytes:
    """32 bytes from the OS CSPRNG: the only source of DP randomness (tests replace it)."""
    return secrets.token_bytes(SECRET_BYTES)


def secret_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` whose whole state is secret (module doc).

    Each call draws new secret bytes, so two generators (e.g. sampling and noise) are
    independent; nothing about the draw is kept outside the generator itself.
    """
    return _generator_from(_secret_material(), torch.device(device))


def shared_secret_generator(ranks: Ranks, device: str | torch.device = "cpu") -> torch.Generator:
    """:func:`secret_generator`, identical on every rank of the process group.

    Rank 0 draws the secret bytes and broadcasts them in memory over the process group (never to
    a file or a log), so every rank draws the same Poisson batch (see
    :func:`~safealign.privacy.distributed.share_of_batch`). Only the sampler is shared: noise is
    added on rank 0 alone, from its own :func:`secret_generator`.
    """
    material = _secret_material()
    if ranks.distributed:
        on = "cuda" if dist.get_backend() == "nccl" else "cpu"
        buffer = torch.tensor(list(material), dtype=torch.uint8, device=on)
        dist.broadcast(buffer, src=0)
        material = bytes(buffer.cpu().tolist())
    return _generator_from(material, torch.device(device))


def _generator_from(material: bytes, device: torch.device) -> torch.Generator:
    """The generator that ``material`` (secret bytes) determines, on ``device``."""
    if len(material) != SECRET_BYTES:
        raise ValueError(f"need {SECRET_BYTES} secret bytes, got {len(material)}")
    if device.type == "cpu":
        return _cpu_generator(material)
    generator = torch.Generator(device=device)
    key = hashlib.shake_256(b"safealign/philox-key\0" + material).digest(8)
    return generator.manual_seed(int.from_bytes(key, "little"))


def _cpu_generator(material: bytes) -> torch.Generator:
    """A CPU generator whose 624 MT19937 words are a SHAKE-256 expansion of ``material``.

    Starts from a fresh generator (its recorded ``initial_seed`` is torch's default, so it says
    nothing about the state) and overwrites only the state words; ``set_state`` then
    ``get_state`` must give the words back, or torch's layout changed and we refuse.
    """
    generator = torch.Generator()
    state = generator.get_state().clone()
    if state.numel() != _CPU_STATE_BYTES:
        raise RuntimeError(
            f"torch's CPU generator state is {state.numel()} bytes, not {_CPU_STATE_BYTES}: "
            "safealign cannot seed it secretly with this torch version"
        )
    stream = hashlib.shake_256(b"safealign/mt19937-state\0" + material).digest(4 * _MT_WORDS)
    words = torch.tensor(
        [int.from_bytes(stream[i : i + 4], "little") for i in range(0, len(stream), 4)],
        dtype=torch.int64,
    )
    end = _CPU_WORDS_AT + 8 * _MT_WORDS
    state[_CPU_WORDS_AT:end] = words.view(torch.uint8)  # little-endian on every torch platform
    generator.set_state(state)
    if not torch.equal(generator.get_state()[_CPU_WORDS_AT:end], state[_CPU_WORDS_AT:end]):
        raise RuntimeError("torch's CPU generator did not take a secret state; refusing to train")
    return generator
