"""Distributed DP-SGD under torchrun (2 CPU ranks, gloo) is the single-process mechanism: same
batches, noise once, the same divisor; so the same ε, the same model, and identical ranks.

DP randomness is secret, so the torchrun job runs through ``torchrun_entry.py``, which makes the
secret bytes repeatable and different on each rank: the job then equals a single-process run
with rank 0's bytes only if rank 0's sampler really reaches every rank."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safealign.config import load_config
from safealign.data.source import load_source, make_splits
from safealign.models.scalar import build_scoring_model, load_scoring_model
from safealign.privacy import secret
from safealign.privacy.accounting import Mechanism, compute_epsilon
from safealign.privacy.distributed import Ranks, share_of_batch
from safealign.privacy.training import train_reward_model

CONFIG = """\
seed: 0
data:
  source: synthetic
  eval_fraction: 0.1
  candidate_fraction: 0.1
  safety_fraction: 0.1
  synthetic: {num_users: 8, pairs_per_user: 12, num_prompts: 60}
reward_model:
  backbone: tiny
  train: {epochs: 1, batch_size: 16, lr: 0.01}
  privacy: {target_epsilon: 2.0, target_delta: 0.01, accountant: rdp}
budget: {epsilon: 10, delta: 0.01}
"""
DIGEST = re.compile(r"rank (\d+)/2: trainable parameters sha256 ([0-9a-f]{64})")
LEFT = re.compile(r"rank (\d+): process-group threads after shutdown: (\d+)")
ENTRY = Path(__file__).with_name("torchrun_entry.py")


def _rank_bytes(rank: int):
    spec = importlib.util.spec_from_file_location("torchrun_entry", ENTRY)
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    return entry.rank_bytes(rank)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shares_partition_the_batch_and_balance_it():
    chosen = torch.tensor([0, 3, 4, 7, 9, 10, 11])
    for world_size in (1, 2, 3, 8):
        shares = [share_of_batch(chosen, Ranks(r, world_size)) for r in range(world_size)]
        assert sorted(torch.cat(shares).tolist()) == chosen.tolist()  # each unit exactly once
        sizes = [len(s) for s in shares]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("target_epsilon", "mode"),
    [(2.0, "hooks"), (None, "hooks"), (2.0, "ghost")],
    ids=["private", "non-private", "private-ghost"],
)
def test_two_ranks_match_each_other_and_the_single_process_run(
    tmp_path, monkeypatch, target_epsilon, mode
):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(CONFIG)
    overrides = [
        f"reward_model.privacy.target_epsilon={'null' if target_epsilon is None else target_epsilon}",
        f"reward_model.privacy.grad_sample_mode={mode}",
    ]
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        f"--master_port={_free_port()}",
        str(ENTRY), str(config_path), "--out", str(out), *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]

    digests = dict(DIGEST.findall(run.stdout))
    assert sorted(digests) == ["0", "1"], run.stdout
    assert digests["0"] == digests["1"]  # every rank ends with the same parameters
    # The process group is gone before exit on both ranks: one left alive is destroyed during
    # interpreter teardown, which aborted a rank at random (SIGABRT after a correct run).
    assert dict(LEFT.findall(run.stdout)) == {"0": "0", "1": "0"}, run.stdout[-2000:]

    # The same data, plan and seed on one process with rank 0's secret bytes: same schedule,
    # same ε, (nearly) same model.
    monkeypatch.setattr(secret, "_secret_material", _rank_bytes(0))
    config = load_config(config_path, overrides)
    pairs, _ = load_source(config)
    splits = make_splits(pairs, config)
    single = train_reward_model(
        splits.train, config=config.reward_model, seed=config.seed, progress=False
    )
    receipt = json.loads((out / "receipt.json").read_text())
    for key in (
        "private",
        "sample_rate",
        "steps",
        "noise_multiplier",
        "num_units",
        "dataset_fingerprint",
        "grad_sample_mode",
    ):
        assert receipt[key] == getattr(single.receipt, key), key
    if target_epsilon is None:
        assert receipt["epsilon"] is None and single.receipt.epsilon is None
    else:
        assert receipt["epsilon"] == pytest.approx(single.receipt.epsilon, rel=1e-12)
        expected = compute_epsilon(
            Mechanism(receipt["noise_multiplier"], receipt["sample_rate"], receipt["steps"]),
            target_delta=receipt["target_delta"],
            accountant="rdp",
        ).epsilon
        assert receipt["epsilon"] == pytest.approx(expected, rel=1e-12)
        assert receipt["epsilon"] <= target_epsilon

    # Same batches and the same (rank-0) noise: the released model is the single-process one up to
    # float summation order. Noise added on both ranks, a wrong divisor, or a rank sampling from
    # its own secret bytes instead of rank 0's would break this.
    distributed = load_scoring_model(out / "model")
    prompts = [p.prompt for p in splits.train[:16]]
    responses = [p.chosen for p in splits.train[:16]]
    before = build_scoring_model(config.reward_model, kind="reward", seed=config.seed)
    moved = (single.model.score(prompts, responses) - before.score(prompts, responses)).abs().max()
    assert moved > 1e-3  # training did move the model, so the comparison below means something
    torch.testing.assert_close(
        distributed.score(prompts, responses),
        single.model.score(prompts, responses),
        atol=1e-4,
        rtol=1e-4,
    )
