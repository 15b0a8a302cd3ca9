"""Ed25519 key files: create, load and fingerprint the key pair that signs audit reports.

The private key is written with mode 0600 from creation; the public key is what a reviewer pins
(``safealign audit verify --public-key``). Loading names the file and says what is wrong with it
(missing, a public key where a private one is needed, encrypted, another algorithm).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from safealign._atomic import atomic_write_bytes
from safealign.errors import DataError

__all__ = [
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_pem",
    "raw_public_bytes",
]

PRIVATE_KEY_NAME = "private.pem"
PUBLIC_KEY_NAME = "public.pem"
_KEY_ID_HEX_CHARS = 16


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return the short fingerprint of a public key: SHA-256 hex of the raw 32 bytes, 16 chars."""
    return hashlib.sha256(raw_public_bytes(public_key)).hexdigest()[:_KEY_ID_HEX_CHARS]


def generate_keypair(
    out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Create a new Ed25519 key pair as ``private.pem`` and ``public.pem`` in ``out_dir``.

    The private key is PKCS8 PEM, unencrypted, in a file *created* with mode 0600 (never a wider
    mode, not even before a chmod); the public key is SubjectPublicKeyInfo PEM. Both writes are
    atomic. Publish ``public.pem`` (or its :func:`key_id`) so verifiers can pin it.

    Args:
        out_dir: The directory for the keys; created if missing.
        overwrite: Replace existing key files. Reports signed with the old key then verify only
            against the old ``public.pem``, so this is off by default.

    Returns:
        ``(private_path, public_path)``.

    Raises:
        DataError: If a key file exists and ``overwrite`` is False.
    """
    directory = Path(out_dir)
    private_path, public_path = directory / PRIVATE_KEY_NAME, directory / PUBLIC_KEY_NAME
    if not overwrite:
        for existing in (private_path, public_path):
            if existing.exists():
                raise DataError(
                    "a key already exists here; refusing to replace it, since reports signed "
                    "with it would no longer verify against the new public key "
                    "(pass overwrite=True to replace it, or choose another directory)",
                    path=str(existing),
                )
    directory.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = public_key_pem(private_key.public_key())
    # Private key first: a crash between the two writes leaves a usable private key whose public
    # half can be re-derived, never a public key whose private half is lost.
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    atomic_write_bytes(public_path, public_pem, mode=0o644)
    return private_path, public_path


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an unencrypted Ed25519 private key from a PKCS8 PEM file.

    Raises:
        DataError: If the file is missing or unreadable, is not a PEM private key, is
            encrypted, or holds a key of another algorithm. The message names the file.
    """
    data = _read_key_file(path)
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise DataError(
            f"this is a public key, but a private key is needed to sign (use {PRIVATE_KEY_NAME})",
            path=str(path),
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's signal for "this key is encrypted"
        raise DataError(
            "the private key is encrypted; safealign reads unencrypted PKCS8 keys "
            "(protect the file with its 0600 mode instead)",
            path=str(path),
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DataError(
            f"not a readable PEM private key ({exc}); expected the {PRIVATE_KEY_NAME} "
            "written by generate_keypair",
            path=str(path),
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise DataError(
            f"holds a {type(key).__name__}, but reports are signed with Ed25519 keys "
            "(create one with generate_keypair)",
            path=str(path),
        )
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a SubjectPublicKeyInfo PEM file.

    Raises:
        DataError: If the file is missing or unreadable, is not a PEM public key, or holds a key
            of another algorithm. The message names the file.
    """
    data = _read_key_file(path)
    if b"PRIVATE KEY-----" in data:
        # Never parse (or echo) a secret the caller did not mean to hand over.
        raise DataError(
            f"this is a private key; verification needs only the public key ({PUBLIC_KEY_NAME})",
            path=str(path),
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DataError(
            f"not a readable PEM public key ({exc}); expected the {PUBLIC_KEY_NAME} "
            "written by generate_keypair",
            path=str(path),
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise DataError(
            f"holds a {type(key).__name__}, but reports are signed with Ed25519 keys",
            path=str(path),
        )
    return key


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise DataError("key file not found", path=str(path)) from exc
    except OSError as exc:
        raise DataError(f"cannot read the key file ({exc.strerror})", path=str(path)) from exc


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of a public key, as ``generate_keypair`` writes ``public.pem``."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (what ``key_id`` hashes and reports embed)."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
