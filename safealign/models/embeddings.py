"""Frozen-backbone embeddings, computed once per (backbone, text) and cached on disk.

With ``head`` set in a model config the backbone never changes, so the pooled state of a
(prompt, response) is a fixed function of the text: it is computed once, in batches, without
gradients and in eval mode (on the GPU when there is one), and every later use reads it back: the
reward model, the cost model, each group and EM model, each EM iteration, evaluation, the cost
model's calibration and a resumed run.

**Keys.** An entry is keyed by the backbone's *identity* and the text. The identity is a SHA-256
over everything the pooled vector depends on: every backbone tensor (names, dtypes, shapes,
bytes; not BERT's ``pooler``, which never reaches ``last_hidden_state``), the tokenizer's
serialised state, the pooling, ``max_length`` and what the encoder reads (``head.text``). A saved model reloaded
from its directory therefore hits the entries its training wrote; another backbone, another
checkpoint of the same architecture, another tokenizer or another truncation misses. The text key
is a SHA-256 of the length-prefixed UTF-8 prompt and response.

**Privacy.** Embeddings are a deterministic function of the private texts, and the text keys
are unkeyed hashes of them: the cache is *private data*, like the data file itself. It only ever
enters a release through DP training of the head (post-processing of the data by the mechanism,
not an output). It lives where the caller says, a run's ``embeddings/`` directory in the
pipeline, in files named ``*.embedding-cache.safetensors``: never listed in a report's manifest,
excluded from the release inventory (``safealign.audits.inventory.NOT_RELEASED``), to be deleted
before a run directory is shared. Files are safetensors (no pickle: a cache from elsewhere cannot
run code) and written atomically, one new shard per batch of misses.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import struct
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from safealign._atomic import atomic_write_bytes
from safealign.errors import DataError

CACHE_SUFFIX = ".embedding-cache.safetensors"
RUN_CACHE_DIR = "embeddings"  # the cache's directory inside a run (or a training's --out)
_DOMAIN = b"safealign.frozen-embedding.v1"
_ACTIVE: contextvars.ContextVar[EmbeddingCache | None] = contextvars.ContextVar(
    "safealign_embedding_cache", default=None
)
_IDENTITIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Modules whose weights never reach last_hidden_state: BERT's pooler, which AutoModel adds (freshly
# initialised) when it reloads a backbone saved without one, so hashing it would give a reloaded
# model another identity than the training that filled the cache.
_UNUSED_MODULES = frozenset({"pooler"})


class EmbeddingCache:
    """Embeddings by (backbone identity, text key), in memory and, with a ``directory``, on disk.

    Args:
        directory: Where shards live (``DIR/<identity>/<shard>.embedding-cache.safetensors``);
            None keeps entries in memory only (one training call without a run directory).
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._tables: dict[str, dict[bytes, torch.Tensor]] = {}

    def _table(self, identity: str) -> dict[bytes, torch.Tensor]:
        if identity not in self._tables:
            table: dict[bytes, torch.Tensor] = {}
            if self.directory is not None:
                for shard in sorted((self.directory / identity).glob(f"*{CACHE_SUFFIX}")):
                    table.update(_read_shard(shard))
            self._tables[identity] = table
        return self._tables[identity]

    def get(self, identity: str, keys: Sequence[bytes]) -> list[torch.Tensor | None]:
        table = self._table(identity)
        return [table.get(k) for k in keys]

    def put(self, identity: str, keys: Sequence[bytes], embeddings: torch.Tensor) -> None:
        """Store rows ``embeddings`` ``[n, H]`` under ``keys`` (and, on disk, as one new shard)."""
        if not keys:
            return
        embeddings = embeddings.detach().to("cpu", torch.float32).contiguous()
        table = self._table(identity)
        table.update(zip(keys, embeddings, strict=True))
        if self.directory is None:
            return
        folder = self.directory / identity
        folder.mkdir(parents=True, exist_ok=True)
        key_rows = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(-1, 32)
        name = hashlib.sha256(b"".join(keys)).hexdigest()[:32] + CACHE_SUFFIX
        payload = save({"keys": key_rows.clone(), "embeddings": embeddings})
        atomic_write_bytes(folder / name, payload, mode=0o600)


def _read_shard(path: Path) -> dict[bytes, torch.Tensor]:
    try:
        tensors = load_file(str(path))
        keys, rows = tensors["keys"], tensors["embeddings"]
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise DataError(
            f"embedding cache shard is unreadable ({type(exc).__name__}); delete it (it is "
            "recomputed from the data)",
            path=str(path),
        ) from None
    if (
        keys.dtype != torch.uint8
        or keys.dim() != 2
        or keys.shape[1] != 32
        or len(rows) != len(keys)
    ):
        raise DataError(
            "embedding cache shard has the wrong shape; delete it (it is recomputed from the data)",
            path=str(path),
        )
    return {bytes(k.tolist()): r for k, r in zip(keys, rows, strict=True)}


@contextlib.contextmanager
def embedding_cache(directory: str | Path | None) -> Iterator[EmbeddingCache]:
    """Make a cache in ``directory`` the one every frozen-backbone embedding uses inside the block.

    ``directory`` None: keep the cache already active, or else use a memory-only one.
    """
    current = _ACTIVE.get()
    if directory is None and current is not None:
        yield current
        return
    cache = EmbeddingCache(directory)
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)


def active_cache() -> EmbeddingCache | None:
    """The cache set by the innermost :func:`embedding_cache` block, or None."""
    return _ACTIVE.get()


def text_key(prompt: str, response: str) -> bytes:
    """SHA-256 of the length-prefixed UTF-8 prompt and response (unambiguous for any texts)."""
    digest = hashlib.sha256(_DOMAIN)
    for text in (prompt, response):
        raw = text.encode("utf-8", "surrogatepass")
        digest.update(struct.pack(">Q", len(raw)))
        digest.update(raw)
    return digest.digest()


def backbone_identity(
    backbone: torch.nn.Module,
    tokenizer,
    *,
    pooling: str,
    max_length: int,
    text: str = "prompt_response",
) -> str:
    """Hex SHA-256 of everything the pooled embedding depends on (module doc), ``text`` being what
    the encoder reads (``head.text``); remembered per backbone object, whose weights are frozen in
    head mode."""
    remembered = _IDENTITIES.get(backbone)
    settings = f"{pooling}|{max_length}|{type(tokenizer).__name__}"
    if text != "prompt_response":  # the original identity string, so older caches still hit
        settings += f"|text={text}"
    if remembered is not None and remembered[0] == settings:
        return remembered[1]
    digest = hashlib.sha256(_DOMAIN + settings.encode())
    digest.update(_tokenizer_state(tokenizer).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        if name.split(".")[0] in _UNUSED_MODULES:
            continue
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    identity = digest.hexdigest()
    _IDENTITIES[backbone] = (settings, identity)
    return identity


def _tokenizer_state(tokenizer) -> str:
    """The fast tokenizer's serialised state without its call-time truncation and padding (set by
    each call and saved with it, so a reloaded tokenizer would otherwise look different; the
    identity's ``max_length`` covers them)."""
    core = getattr(tokenizer, "backend_tokenizer", None)
    if core is None:  # the feature parser: no learnt state beyond its class and slots
        return repr(sorted(vars(tokenizer).items()))
    state = json.loads(core.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return json.dumps(state, sort_keys=True)


def cached_embeddings(
    identity: str,
    keys: Sequence[bytes],
    compute: Callable[[list[int]], torch.Tensor],
    *,
    batch_size: int,
    lengths: Callable[[list[int]], Sequence[int]] | None = None,
) -> torch.Tensor:
    """Rows ``[n, H]`` for ``keys``, in the order of ``keys``: from the active cache where present,
    else ``compute(index)`` on batches of the missing (distinct) positions, whose rows are then
    stored. ``compute`` runs under :func:`torch.inference_mode`.

    ``lengths(missing)``, when given, returns the token length of each missing position: batches
    are then cut from the positions sorted longest first (stable), as sentence-transformers'
    ``encode`` does, so a ``compute`` that pads to the longest row of its batch pads little. The
    rows are the same as in input order up to float noise (each row is masked from the others)."""
    cache = active_cache()
    found = cache.get(identity, keys) if cache is not None else [None] * len(keys)
    first: dict[bytes, int] = {}
    for i, (key, row) in enumerate(zip(keys, found, strict=True)):
        if row is None and key not in first:
            first[key] = i
    missing = list(first.values())
    if lengths is not None and missing:
        size = list(lengths(missing))
        order = sorted(range(len(missing)), key=lambda j: -size[j])
        missing = [missing[j] for j in order]
    computed: dict[bytes, torch.Tensor] = {}
    for start in range(0, len(missing), batch_size):
        index = missing[start : start + batch_size]
        with torch.inference_mode():
            rows = compute(index).detach().to("cpu", torch.float32)
        rows = rows.clone()  # outside inference mode: a normal tensor, usable by autograd later
        batch_keys = [keys[i] for i in index]
        computed.update(zip(batch_keys, rows, strict=True))
        if cache is not None:
            cache.put(identity, batch_keys, rows)
    out = [row if row is not None else computed[key] for key, row in zip(keys, found, strict=True)]
    return torch.stack(out) if out else torch.zeros(0)
