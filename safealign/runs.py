"""Run directories: resumable stage outputs, and the key that signs the report.

A run directory holds one run's artefacts. A stage whose output already exists is loaded instead of
redone, so an interrupted ``safealign run`` resumes where it stopped and never trains (spends
privacy on) the same release twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safealign._atomic import atomic_write_bytes
from safealign.audits.keys import (
    Ed25519PrivateKey,  # for the annotation: only audits imports cryptography
    public_key_pem,
)
from safealign.audits.signing import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    generate_keypair,
    load_private_key,
)
from safealign.config import Config
from safealign.errors import DataError
from safealign.models.scalar import Kind, load_scoring_model
from safealign.privacy.identity import default_data_dir
from safealign.privacy.release import train_and_record
from safealign.privacy.training import PrivacyReceipt

DEMO_KEY_DIR = "demo-keys"


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


@dataclass(frozen=True)
class SigningKey:
    """The key that signs a run's report.

    Attributes:
        private_key: The Ed25519 private key.
        demo: True for the per-user throw-away demo key (no ``audit.signing_key`` configured).
        note: What was done, for the console: where the demo key lives and that it is not a
            real identity; ``None`` for a configured key.
    """

    private_key: Ed25519PrivateKey
    demo: bool
    note: str | None


def demo_key_dir() -> Path:
    """Where the per-user demo key pair lives: ``<data dir>/demo-keys``, never a run directory."""
    return default_data_dir() / DEMO_KEY_DIR


def signing_key(config: Config, out: Path) -> SigningKey:
    """The configured private key, else the per-user demo key (its public half copied into ``out``).

    The demo private key never goes into the run directory: that directory is handed to
    reviewers, and anyone holding the private key could sign a forged report that verifies
    against the pinned public key. Only ``out/keys/public.pem`` is written there.
    """
    if config.audit.signing_key is not None:
        return SigningKey(load_private_key(config.audit.signing_key), False, None)
    keys = demo_key_dir()
    if not (keys / PRIVATE_KEY_NAME).exists():
        try:
            generate_keypair(keys)
        except DataError:
            if not (keys / PRIVATE_KEY_NAME).exists():  # another run made it meanwhile: reuse it
                raise
    private_key = load_private_key(keys / PRIVATE_KEY_NAME)
    public = out / "keys" / PUBLIC_KEY_NAME
    public.parent.mkdir(parents=True, exist_ok=True)
    # Derived from the private key, not copied from demo-keys/public.pem, which a crash between
    # generate_keypair's two writes could leave missing.
    atomic_write_bytes(public, public_key_pem(private_key.public_key()), mode=0o644)
    # A run directory made before demo keys moved out holds its own demo private key: anyone
    # handed the directory could sign with it, so it goes.
    (out / "keys" / PRIVATE_KEY_NAME).unlink(missing_ok=True)
    note = (
        f"report signed with the per-user DEMO key {keys / PRIVATE_KEY_NAME}: NOT a real identity "
        "(the report says so, and `audit verify --strict` refuses it); its public key is in "
        f"{public}. For real reports make a key with `safealign keys generate --out DIR` and set "
        "audit.signing_key=DIR/private.pem"
    )
    return SigningKey(private_key, True, note)
