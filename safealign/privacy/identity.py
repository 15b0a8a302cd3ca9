"""Where private bookkeeping lives, and the secret that keys every hash of private data.

Two things must never sit in a run directory, which is handed to reviewers: the privacy ledger
(the budget belongs to the people in the data, not to a working directory) and the key that
turns private values into commitments. Both live in a per-user data directory:
``$SAFEALIGN_HOME`` if set, else ``$XDG_DATA_HOME/safealign``, else ``~/.local/share/safealign``.

The key (32 bytes from the OS CSPRNG, file mode 0600) sits beside the ledger it serves. A
keyed hash (HMAC-SHA256) of a private value can be published or stored: without the key it is
a random-looking string, so someone who holds every record but one cannot test a guess of the
missing one against it, as they could against a plain SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

from safealign.data.records import PreferencePair, normalise_text
from safealign.errors import ConfigError

KEY_FILE_SUFFIX = ".key"
_KEY_BYTES = 32


def default_data_dir() -> Path:
    """The per-user directory of safealign's private state (ledger, its key, demo keys)."""
    home = os.environ.get("SAFEALIGN_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "safealign"


def default_ledger_path() -> Path:
    """The default privacy ledger: one per user, whatever the working directory."""
    return default_data_dir() / "ledger.sqlite"


def ledger_key(ledger_path: Path | str) -> bytes:
    """The secret key beside ``ledger_path`` (``<ledger>.key``), created on first use.

    Raises:
        ConfigError: the key file exists but is not a valid key, or cannot be created.
    """
    path = Path(ledger_path)
    path = path.with_name(path.name + KEY_FILE_SUFFIX)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _create_key(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the ledger key ({exc.strerror})") from exc
    if len(data) != _KEY_BYTES:
        raise ConfigError(
            f"{path}: a ledger key is {_KEY_BYTES} bytes, this file has {len(data)} "
            "(restore it from a backup: without it no earlier data can be recognised)"
        )
    return data


def _create_key(path: Path) -> bytes:
    key = secrets.token_bytes(_KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:  # mkstemp: mode 0600
                handle.write(key)
                handle.flush()
                os.fsync(handle.fileno())
            # link() fails if the key exists: two processes creating it at once agree on one,
            # and nobody ever reads a half-written key.
            os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except FileExistsError:
        return ledger_key(path.with_name(path.name[: -len(KEY_FILE_SUFFIX)]))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the ledger key ({exc.strerror})") from exc
    return key


def keyed_digest(key: bytes, *parts: str | bytes) -> str:
    """HMAC-SHA256 of ``parts`` (length-prefixed, so part boundaries matter), as hex."""
    return _digest(hmac.new(key, digestmod=hashlib.sha256), parts)


def _digest(mac: hmac.HMAC, parts) -> str:
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        mac.update(len(data).to_bytes(8, "big") + data)
    return mac.hexdigest()


def unit_keys(key: bytes, pairs: Iterable[PreferencePair], privacy_unit: str) -> set[str]:
    """Keyed hashes of the privacy units in ``pairs``, as the ledger stores them.

    A pair is its normalised prompt and its two normalised responses, in either order (which one
    was chosen, and every label, are not part of its identity: relabelling a pair does not make it
    a new one). Pair keys are always included; with ``privacy_unit='user'`` the normalised user
    id of every pair is added (the unit user-level DP protects).
    """
    keys = set()
    base = hmac.new(key, digestmod=hashlib.sha256)  # copied per unit: the key is set up once
    for pair in pairs:
        responses = sorted((normalise_text(pair.chosen), normalise_text(pair.rejected)))
        keys.add(_digest(base.copy(), ("pair", normalise_text(pair.prompt), *responses)))
        if privacy_unit == "user" and pair.user_id is not None:
            keys.add(_digest(base.copy(), ("user", normalise_text(pair.user_id))))
    return keys


def declared_key(key: bytes, dataset_id: str) -> str:
    """The keyed hash of a declared dataset identity (``data.dataset_id``), normalised."""
    return keyed_digest(key, "dataset_id", normalise_text(dataset_id))


def dataset_key(key: bytes, fingerprint: str) -> str:
    """The keyed hash of a dataset's exact fingerprint (never store the plain SHA-256)."""
    return keyed_digest(key, "dataset", fingerprint)
