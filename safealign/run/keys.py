"""The key that signs a run's report: the configured one, else the per-user demo key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safealign._atomic import atomic_write_bytes
from safealign.audits.keys import (
    Ed25519PrivateKey,  # for the annotation: only audits imports cryptography
    public_key_pem,
)
from safealign.audits.signing import PRIVATE_KEY_NAME, generate_keypair, load_private_key
from safealign.config import Config
from safealign.errors import DataError
from safealign.privacy.identity import default_data_dir
from safealign.run.paths import RunPaths

DEMO_KEY_DIR = "demo-keys"


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
    paths = RunPaths(Path(out))
    public = paths.public_key
    public.parent.mkdir(parents=True, exist_ok=True)
    # Derived from the private key, not copied from demo-keys/public.pem, which a crash between
    # generate_keypair's two writes could leave missing.
    atomic_write_bytes(public, public_key_pem(private_key.public_key()), mode=0o644)
    # A run directory made before demo keys moved out holds its own demo private key: anyone
    # handed the directory could sign with it, so it goes.
    paths.stale_private_key.unlink(missing_ok=True)
    note = (
        f"report signed with the per-user DEMO key {keys / PRIVATE_KEY_NAME}: NOT a real identity "
        "(the report says so, and `audit verify --strict` refuses it); its public key is in "
        f"{public}. For real reports make a key with `safealign keys generate --out DIR` and set "
        "audit.signing_key=DIR/private.pem"
    )
    return SigningKey(private_key, True, note)
