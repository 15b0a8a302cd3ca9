"""Run directories: resumable stage outputs and the demo signing key.

A run directory holds one run's artefacts. A stage whose output already exists is loaded instead of
redone, so an interrupted ``safealign run`` resumes where it stopped and never trains (spends
privacy on) the same release twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from safealign.audits.signing import generate_keypair, load_private_key
from safealign.config import Config
from safealign.models.scalar import Kind, load_scoring_model
from safealign.privacy.release import train_and_record
from safealign.privacy.training import PrivacyReceipt

DEMO_KEY_NOTE = "demo key pair made for this run: NOT a real identity; configure audit.signing_key"


def record_training(config: Config, *, kind: Kind, out: Path, pairs, splits, progress: bool):
    """Train ``kind`` on the training split under the source dataset's ledger budget, into ``out``."""
    return train_and_record(
        splits.train,
        kind=kind,
        config=config.reward_model if kind == "reward" else config.cost_model,
        budget=config.budget,
        source=pairs,
        dataset_id=config.data.dataset_id,
        seed=config.seed,
        out_dir=out,
        eval_pairs=splits.eval,
        progress=progress,
    )


def trained_model(config: Config, *, kind: Kind, out: Path, pairs, splits, progress: bool):
    """The stage's model and receipt, loaded when ``out/receipt.json`` exists, else trained now."""
    receipt_path = out / "receipt.json"
    if not receipt_path.exists():
        record_training(config, kind=kind, out=out, pairs=pairs, splits=splits, progress=progress)
    receipt = PrivacyReceipt(**json.loads(receipt_path.read_text()))
    return load_scoring_model(out / "model"), receipt


def signing_key(config: Config, out: Path):
    """The configured private key, or a demo key pair made in ``out/keys`` (with a note saying so)."""
    if config.audit.signing_key is not None:
        return load_private_key(config.audit.signing_key), None
    keys = out / "keys"
    if not (keys / "private.pem").exists():
        generate_keypair(keys)
    return load_private_key(keys / "private.pem"), DEMO_KEY_NOTE
