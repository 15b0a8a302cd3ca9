"""Attacks on the secrecy of DP randomness (issue 12, finding 1) and on checkpoints (issue 18).

The adversary holds every released value (receipt, config with its seed, report) and every record
but one. If the DP draws followed the seed, retraining with it reproduced the release bit for bit
on D and not on D - x: membership with certainty. These tests take the real CSPRNG
(``secret_randomness``); the rest of the suite uses repeatable bytes (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from safealign import _atomic
from safealign.config import load_config
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import DataError
from safealign.groups.em import _noisy_log_prior
from safealign.models.pairs import encode_pairs
from safealign.models.scalar import build_scoring_model, load_scoring_model
from safealign.privacy import secret
from safealign.privacy.calibration import fit_shift
from safealign.privacy.dp_sgd import make_step
from safealign.privacy.loop import CHECKPOINT_KEYS, checkpoint_step
from safealign.privacy.plan import TrainingPlan
from safealign.privacy.training import save_training_output, train_reward_model

OVERRIDES = [
    "data.synthetic.num_users=8",
    "data.synthetic.pairs_per_user=12",
    "data.synthetic.num_prompts=60",
    "reward_model.train.batch_size=16",
    "reward_model.train.epochs=1",
    "reward_model.train.lr=0.01",
    "reward_model.privacy.target_epsilon=1.0",
    "reward_model.privacy.target_delta=1e-2",
    "reward_model.privacy.accountant=rdp",
    "budget.delta=1e-2",
]


@pytest.fixture(scope="module")
def config():
    return load_config(None, OVERRIDES)


@pytest.fixture(scope="module")
def pairs(config):
    return SyntheticWorld(config.data.synthetic, seed=config.seed).pairs


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def test_replaying_a_release_with_its_published_values_does_not_reproduce_it(
    config, pairs, tmp_path, secret_randomness
):
    """Measured on the seeded code: the replay was bit-identical (max |Δw| = 0)."""
    released = train_reward_model(pairs, config=config.reward_model, seed=0, progress=False)
    save_training_output(released, tmp_path)
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["private"] and receipt["seed"] == 0  # the seed is public
    replay = train_reward_model(
        pairs, config=config.reward_model, seed=receipt["seed"], progress=False
    )
    # What the attacker compares: the released model's scores with the replay's.
    prompts, responses = [p.prompt for p in pairs[:32]], [p.chosen for p in pairs[:32]]
    published = load_scoring_model(tmp_path / "model").score(prompts, responses)
    torch.testing.assert_close(published, released.model.score(prompts, responses))
    assert float((published - replay.model.score(prompts, responses)).abs().max()) > 1e-3
    # The noise alone moves each weight by about σ·C·lr per step: far above float error.
    assert _max_difference(released.model.model, replay.model.model) > 1e-3


def test_non_private_training_stays_reproducible_from_the_seed(config, pairs, secret_randomness):
    privacy = dataclasses.replace(config.reward_model.privacy, target_epsilon=None)
    plain = dataclasses.replace(config.reward_model, privacy=privacy)
    a = train_reward_model(pairs, config=plain, seed=0, progress=False).model.model
    b = train_reward_model(pairs, config=plain, seed=0, progress=False).model.model
    assert _max_difference(a, b) == 0.0


def test_calibration_shift_is_not_a_function_of_the_data(secret_randomness):
    g = torch.Generator().manual_seed(0)
    costs = torch.randn(500, 2, generator=g, dtype=torch.float64)
    unsafe = (torch.rand(500, 2, generator=g, dtype=torch.float64) < 0.3).double()
    weights = torch.full((500, 2), 0.5, dtype=torch.float64)

    def shift(noise_multiplier: float, sample_rate: float) -> float:
        return fit_shift(
            costs, unsafe, weights, torch.arange(500), 500, sample_rate=sample_rate,
            noise_multiplier=noise_multiplier, max_grad_norm=1.0, steps=10,
        )  # fmt: skip

    assert shift(1.5, 0.1) != shift(1.5, 0.1)  # same data, same arguments: fresh noise
    assert shift(0.0, 1.0) == shift(0.0, 1.0)  # and nothing else in it is random


def test_em_count_noise_is_fresh_on_every_call(secret_randomness):
    members = [set("abcdefgh"), set("ijk")]
    first, mechanisms = _noisy_log_prior(members, 2.0)
    second, _ = _noisy_log_prior(members, 2.0)
    assert not torch.equal(first, second)
    assert mechanisms[0].noise_multiplier == 2.0


def test_secret_generators_are_independent_and_not_recoverable_from_their_seed(
    secret_randomness,
):
    a, b = secret.secret_generator(), secret.secret_generator()
    draws = torch.rand(8, generator=a)
    assert not torch.equal(draws, torch.rand(8, generator=b))
    # torch's CPU generator keeps only the low 32 bits of manual_seed: a seeded generator would
    # be one of 2^32. The secret one's state is set whole; its recorded seed reproduces nothing.
    assert a.initial_seed() == torch.Generator().initial_seed()
    again = torch.Generator().manual_seed(a.initial_seed())
    assert not torch.equal(draws, torch.rand(8, generator=again))
    low, high = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1 + 2**32)
    assert torch.equal(torch.rand(8, generator=low), torch.rand(8, generator=high))  # still so


def test_the_same_secret_bytes_give_the_same_generator():
    material = bytes(range(32))
    a = secret._generator_from(material, torch.device("cpu"))
    b = secret._generator_from(material, torch.device("cpu"))
    c = secret._generator_from(bytes(31) + b"\1", torch.device("cpu"))
    assert torch.equal(torch.randn(16, generator=a), torch.randn(16, generator=b))
    assert not torch.equal(torch.randn(16, generator=a), torch.randn(16, generator=c))


def test_dp_noise_uses_the_floating_point_safe_gaussian(config, pairs):
    scoring = build_scoring_model(config.reward_model, kind="reward", seed=0)
    data = encode_pairs(scoring, pairs[:4])
    params = [p for p in scoring.model.parameters() if p.requires_grad]
    step = make_step(
        scoring.model, data, torch.arange(4), TrainingPlan(True, 4, 0.5, 1, 1.0, 2.0),
        config=config.reward_model, kind="reward", inner=torch.optim.SGD(params, lr=0.1),
        noise=secret.secret_generator(),
    )  # fmt: skip
    assert step.optimizer.secure_mode
    step.model.remove_hooks()


class _Interrupted(Exception):
    pass


def _interrupted_run(config, pairs, checkpoint: Path, at: int = 3) -> None:
    def crash(step):
        if step == at:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_reward_model(
            pairs, config=config.reward_model, seed=0, checkpoint=checkpoint, on_step=crash,
            progress=False,
        )  # fmt: skip


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def test_a_checkpoint_holds_no_generator_state(config, pairs, tmp_path, secret_randomness):
    checkpoint = tmp_path / "ckpt.pt"
    _interrupted_run(config, pairs, checkpoint)
    payload = torch.load(checkpoint, weights_only=True)
    assert set(payload) == CHECKPOINT_KEYS, set(payload)  # no "sampler", no "noise"
    # A generator's state is a uint8 tensor (5056 bytes on CPU, 16 on CUDA); weights are floats.
    assert all(t.is_floating_point() or t.numel() <= 1 for t in _tensors(payload))
    assert checkpoint_step(checkpoint) == 3


class _Hostile:
    """A pickle that runs code when loaded: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_hostile_checkpoint_is_refused_not_run(config, pairs, tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"step": 1, "trainable": {}, "optimizer": _Hostile(marker), "plan": {}}, checkpoint)
    with pytest.raises(DataError, match="refused to load checkpoint.*no code in it was run"):
        train_reward_model(
            pairs, config=config.reward_model, seed=0, checkpoint=checkpoint, progress=False
        )
    with pytest.raises(DataError, match="refused to load checkpoint"):
        checkpoint_step(checkpoint)  # what the release path reads before resuming
    assert not marker.exists()


def test_resume_sweeps_the_temporary_file_a_killed_write_left(config, pairs, tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpt.pt"
    _interrupted_run(config, pairs, checkpoint)
    # A write killed before its rename: atomic_write_bytes' own temp file, left behind.
    with monkeypatch.context() as patch:
        patch.setattr(_atomic.os, "replace", _killed)
        patch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
        with pytest.raises(_Interrupted):
            _atomic.atomic_write_bytes(checkpoint, b"half")
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.pt.")]
    assert len(left) == 1
    unrelated = [tmp_path / ".ckpt.pt.notes.tmp", tmp_path / "ckpt.pt.bak"]
    for path in unrelated:
        path.write_text("keep")
    train_reward_model(pairs, config=config.reward_model, seed=0, checkpoint=checkpoint,
                       progress=False)  # fmt: skip
    assert not left[0].exists()
    assert all(path.exists() for path in unrelated)


def _killed(src, dst):
    os.stat(src)  # the temp file is complete on disk: the process dies before the rename
    raise _Interrupted
