"""Embedding caches: an in-process LRU of text embeddings (level 1), and a shared cache many instances use
(level 2: Redis in production, behind the ``SharedCache`` interface, so this package never imports a client).

Zero-shot scoring sends the same labels and prompts again and again ("a photo of a {label}"), and
the same product photo arrives by URL, base64 and upload. A cached text skips tokenization, the queue
and the model; a cached image also skips fetching-to-decode and preprocessing. Every key is built here
from hashes and the served model's identity only, so nothing a client sends can name another model's
(or another precision's) entry; values are raw float32 bytes, checked for length on the way back.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Protocol, Sequence

import numpy as np
import orjson

KEY_VERSION = b"clipserve:v1"
TEXT, IMAGE, SEARCH = "text", "image", "search"

# Texts longer than this are keyed by their digest: texts may be up to MAX_TEXT_CHARS (a million
# characters), and thousands of them as keys would hold gigabytes.
_LONGEST_KEPT_TEXT = 512
_TEXT_HEADER = struct.Struct("<BH")  # truncated, tokens


def text_key(text: str, normalize: bool) -> Hashable:
    """The level-1 key of a text: the text itself when short, else its SHA-256."""
    if len(text) <= _LONGEST_KEPT_TEXT:
        return text, normalize
    return text_digest(text), normalize


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class CachedText:
    vector: np.ndarray  # (dim,) float32, read-only
    truncated: bool
    tokens: int


class TextCache:
    """Thread-safe LRU of ``key -> CachedText``; ``capacity`` 0 disables it (every lookup misses)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, CachedText] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> CachedText | None:
        if not self.capacity:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, vector: np.ndarray, truncated: bool, tokens: int) -> None:
        if not self.capacity:
            return
        vector = np.array(vector, dtype=np.float32)  # a copy: callers may reuse their batch array
        vector.setflags(write=False)
        with self._lock:
            self._entries[key] = CachedText(vector, truncated, tokens)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class SharedCache(Protocol):
    """A cache every instance shares (``infra.redis_cache.RedisCache``). It may vanish at any time: calls never
    raise, a failure reads as misses and writes are dropped, and ``state`` says why."""

    state: str  # "ok", "open" (failing: skipped until it is tried again) or "unconfigured"

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def put_many(self, items: Sequence[tuple[bytes, bytes]], ttl_s: int) -> None: ...

    def generation(self, name: bytes) -> int | None:
        """A counter that ``bump`` raises (None when the cache cannot be read: do not cache then)."""

    def bump(self, name: bytes) -> None: ...


class NoSharedCache:
    """No shared cache configured: every lookup misses, nothing is stored."""

    state = "unconfigured"

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [None] * len(keys)

    def put_many(self, items: Sequence[tuple[bytes, bytes]], ttl_s: int) -> None:
        pass

    def generation(self, name: bytes) -> int | None:
        return None

    def bump(self, name: bytes) -> None:
        pass


class CacheStats:
    """Lookups by (level, kind, result) since start: /stats and /metrics read the same counts."""

    def __init__(self) -> None:
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    def add(self, level: str, kind: str, hits: int, misses: int) -> None:
        with self._lock:
            self._counts[(level, kind, "hit")] += hits
            self._counts[(level, kind, "miss")] += misses

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._counts)


class VectorCache:
    """The level-2 cache as the engine and the service use it: keys from the served model's identity and a
    content digest, values as raw float32 bytes (texts with their truncation and token count)."""

    def __init__(self, shared: SharedCache, ttl_s: int, stats: CacheStats) -> None:
        self.shared = shared
        self.ttl_s = ttl_s
        self.stats = stats
        self._identity: bytes | None = None

    @property
    def enabled(self) -> bool:
        return not isinstance(self.shared, NoSharedCache)

    def bind(self, info: Any) -> None:
        """Key everything by the model that makes the vectors: variant, weights fingerprint, and what changes
        their last bits (precision, runtime, device)."""
        parts = [info.variant, info.weights, info.precision, info.runtime, info.device, str(info.dim)]
        self._identity = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32].encode()

    def key(self, kind: str, normalize: bool, digest: bytes) -> bytes:
        assert self._identity is not None, "bind() the model first"
        return b":".join([KEY_VERSION, kind.encode(), self._identity, b"n" if normalize else b"r", digest.hex().encode()])

    def get_vectors(self, kind: str, keys: Sequence[bytes], dim: int) -> list[np.ndarray | None]:
        found = [_vector(raw, dim) for raw in self.shared.get_many(keys)] if keys else []
        self.stats.add("l2", kind, sum(v is not None for v in found), sum(v is None for v in found))
        return found

    def put_vectors(self, keys: Sequence[bytes], vectors: Sequence[np.ndarray]) -> None:
        if keys:
            self.shared.put_many([(k, np.asarray(v, "<f4").tobytes()) for k, v in zip(keys, vectors, strict=True)],
                                 self.ttl_s)

    def get_answer(self, key: bytes) -> Any:
        """A stored answer (JSON), or None; an unreadable one is a miss."""
        [raw] = self.shared.get_many([key])
        try:
            answer = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError:
            answer = None
        self.stats.add("l2", SEARCH, answer is not None, answer is None)
        return answer

    def put_answer(self, key: bytes, answer: Any, ttl_s: int) -> None:
        self.shared.put_many([(key, orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY))], ttl_s)

    def get_texts(self, keys: Sequence[bytes], dim: int) -> list[CachedText | None]:
        found = [_text(raw, dim) for raw in self.shared.get_many(keys)] if keys else []
        self.stats.add("l2", TEXT, sum(v is not None for v in found), sum(v is None for v in found))
        return found

    def put_texts(self, keys: Sequence[bytes], entries: Sequence[CachedText]) -> None:
        if keys:
            self.shared.put_many([(k, _TEXT_HEADER.pack(e.truncated, min(e.tokens, 65535))
                                   + np.asarray(e.vector, "<f4").tobytes()) for k, e in zip(keys, entries, strict=True)],
                                 self.ttl_s)


def _vector(raw: bytes | None, dim: int) -> np.ndarray | None:
    """A stored vector, or None when there is none or it has the wrong length (a corrupt or foreign value: a miss,
    overwritten when the fresh vector is stored)."""
    if raw is None or len(raw) != 4 * dim:
        return None
    vector = np.frombuffer(raw, "<f4").astype(np.float32)
    return vector if np.isfinite(vector).all() else None


def _text(raw: bytes | None, dim: int) -> CachedText | None:
    if raw is None or len(raw) != _TEXT_HEADER.size + 4 * dim:
        return None
    truncated, tokens = _TEXT_HEADER.unpack_from(raw)
    vector = _vector(raw[_TEXT_HEADER.size:], dim)
    if vector is None or truncated > 1:
        return None
    vector.setflags(write=False)
    return CachedText(vector, bool(truncated), tokens)
