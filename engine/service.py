"""The model behind the HTTP layer: loaded in the background, every model call on one thread.

The encoder is opaque here (it follows the model-layer contract in ARCHITECTURE.md); this module
imports neither flask nor torch, so the HTTP layer can be tested with any object that has
``info``, ``prepare_text``, ``encode_prepared_texts``, ``prepare_image`` and ``encode_images``.
Input work (tokenizing, image preprocessing) runs in the calling request thread; only model calls
go through the batcher. Text embeddings are cached (``TextCache``) ahead of all of it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import enum
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from engine import stages
from engine.batcher import Batcher, LoopHealth, Overloaded, Unbatched
from engine.cache import (IMAGE, TEXT, CacheStats, CachedText, NoSharedCache, SharedCache, TextCache,
                          VectorCache, text_digest, text_key)

log = logging.getLogger(__name__)



class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADED = "unloaded"  # not in memory: loads on first use (engine.models), or was evicted


class NotReady(RuntimeError):
    """The model is still loading (or not loaded: engine.models loads it), or failed to load."""

    def __init__(self, state: ModelState, model: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(f"model {model + ' ' if model else ''}{state.value}")
        self.state = state
        self.model = model
        self.retry_after_s = retry_after_s


class RequestTimedOut(TimeoutError):
    """The request's items were not encoded within its time budget; they were withdrawn from the queue."""


class ClientGone(RuntimeError):
    """The client disconnected while its items waited; they were withdrawn from the queue."""


class TextsTooLong(ValueError):
    """``truncate=False`` and these texts (indices) have more tokens than the model's context."""

    def __init__(self, indices: list[int], context_length: int) -> None:
        super().__init__(f"{len(indices)} texts exceed the context of {context_length} tokens")
        self.indices = indices
        self.context_length = context_length


@dataclass(frozen=True)
class TextResult:
    embeddings: np.ndarray    # (n, dim) float32
    truncated: list[int]      # indices of texts cut to the model's context
    tokens: list[int]         # tokens the model saw per text (special tokens included, after truncation)
    cache_hits: int = 0       # texts answered from the cache


# Errors after which a CUDA context is unusable (every later call fails too): the instance must be replaced.
# An out-of-memory is not one of them: the batcher retries that batch item by item.
_FATAL_DEVICE_ERRORS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "device-side assert", "illegal memory access")


def is_fatal_device_error(exc: BaseException) -> bool:
    return type(exc).__name__ != "OutOfMemoryError" and any(m in str(exc) for m in _FATAL_DEVICE_ERRORS)


# How often a waiting request checks whether its client is still there.
_CANCEL_POLL_S = 0.1
# How soon a request whose next window met a full queue tries again.
_FULL_QUEUE_RETRY_S = 0.01


class EmbeddingEngine:
    """One model: its background load, its caches, and the batcher its model calls go through. ``start`` is
    idempotent and safe to call after fork.

    Alone, an engine owns its Batcher. Several engines (engine.models.ModelSet) share one: each submits in its
    own lane under its ``name``, and the set decides when each loads and unloads."""

    def __init__(self, load: Callable[[], Any], *, max_batch_size: int = 32, max_wait_s: float = 0.005,
                 queue_size: int = 256, stall_timeout_s: float = 120.0, batching: bool = True,
                 max_queue_wait_s: float | None = None,
                 text_cache_size: int = 0, shared_cache: SharedCache | None = None, cache_ttl_s: int = 86400,
                 name: str = "", batcher: Batcher | Unbatched | None = None,
                 cache_stats: CacheStats | None = None, initial_state: ModelState = ModelState.LOADING) -> None:
        """``shared_cache``: the level-2 cache every instance shares (texts behind the in-process LRU, and images);
        None = none. ``batcher``: a batcher shared with other engines (None: this engine makes its own);
        ``cache_stats``: counts shared with them; ``initial_state`` UNLOADED: not loaded until its ModelSet loads it
        (``reserve``, then ``load_now``)."""
        self.name = name
        self._load = load
        self._encoder: Any = None
        self._info: Any = None  # the last loaded model's facts, kept when it is unloaded
        self._state = initial_state
        self._load_error: BaseException | None = None
        self._loader: threading.Thread | None = None
        self._loader_pid: int | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._request_observer: Callable[[str, list[tuple[int, float]], int], None] | None = None
        self._cache = TextCache(text_cache_size)
        self.cache_stats = cache_stats or CacheStats()
        self.vectors = VectorCache(shared_cache or NoSharedCache(), cache_ttl_s, self.cache_stats)
        self._preparing = 0  # requests between starting their input work and queueing its result
        self._waiting = 0  # requests with items queued or running
        self._window = max_batch_size  # a request's items queued or running at once (_Flow)
        self.device_error: str | None = None  # a CUDA error that left the context unusable
        self.load_seconds: float | None = None  # how long the last load took
        self.on_first_ready: Callable[[], None] | None = None  # called once, after the first load (a log line)
        self.batch_counts: collections.Counter = collections.Counter()  # (kind, "calls" | "items") -> count
        self._batcher: Batcher | Unbatched
        self._owns_batcher = batcher is None
        if batcher is not None:
            self._batcher = batcher
        elif batching:
            self._batcher = Batcher(self._run_batch, max_batch_size=max_batch_size, max_wait_s=max_wait_s,
                                    queue_size=queue_size, stall_timeout_s=stall_timeout_s,
                                    max_queue_wait_s=max_queue_wait_s,
                                    more_coming=lambda: self._preparing > 0)
        else:
            self._batcher = Unbatched(self._run_batch, stall_timeout_s=stall_timeout_s)

    @classmethod
    def from_settings(cls, settings: Any, load: Callable[[], Any],
                      shared_cache: SharedCache | None = None, **kwargs: Any) -> "EmbeddingEngine":
        return cls(load, max_batch_size=settings.batch_max_size, max_wait_s=settings.batch_max_wait_ms / 1000,
                   queue_size=settings.queue_size, stall_timeout_s=settings.stall_timeout_s,
                   max_queue_wait_s=settings.queue_wait_budget_s,
                   batching=settings.batching, text_cache_size=settings.text_cache_size, shared_cache=shared_cache,
                   cache_ttl_s=settings.cache_ttl_s, **kwargs)

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading the model (once per process) and start the inference thread. Cheap when already started.
        An engine of a ModelSet leaves both to the set."""
        pid = os.getpid()
        if self._loader_pid == pid or not self._owns_batcher:
            return
        with self._lock:
            if self._loader_pid == pid:
                return
            self._loader_pid = pid
            if self._state is ModelState.READY:
                self._batcher.start()  # loaded before a fork: the encoder came along, the thread did not
            elif self._state is ModelState.LOADING:
                self._loader = threading.Thread(target=self._load_model, name="clipserve-load", daemon=True)
                self._loader.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._batcher.shutdown(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the model loaded (True) or failed / the timeout passed (False)."""
        self._ready.wait(timeout)
        return self._state is ModelState.READY

    def load_now(self) -> bool:
        """Load the model in this thread (engine.models' loader); True when it is ready. A failed load is final."""
        with self._lock:
            if self._state in (ModelState.READY, ModelState.FAILED):
                return self._state is ModelState.READY
            self._state = ModelState.LOADING
            self._ready.clear()
        self._load_model()
        return self._state is ModelState.READY

    def unload(self) -> bool:
        """Drop the model (engine.models evicts it for another one); False, and nothing done, while requests use it.
        Its facts (``info``) and caches stay: a reload serves the same vectors."""
        with self._lock:
            if self._state is not ModelState.READY or self._preparing or self._waiting:
                return False
            self._state = ModelState.UNLOADED
            self._ready.clear()
            self._encoder = None
        return True

    def reserve(self) -> bool:
        """Mark an unloaded model as loading (engine.models, before ``load_now``, so no other load starts it)."""
        with self._lock:
            if self._state is not ModelState.UNLOADED:
                return False
            self._state = ModelState.LOADING
            self._ready.clear()
            return True

    @property
    def busy_preparing(self) -> bool:
        return self._preparing > 0

    @property
    def busy(self) -> bool:
        """A request is preparing inputs for this model, or has items queued or running."""
        return bool(self._preparing or self._waiting)

    def _load_model(self) -> None:
        started = time.monotonic()
        try:
            encoder = self._load()
        except BaseException as exc:  # noqa: BLE001 - report it through health, never crash silently
            log.error("model %s failed to load", self.name or "", exc_info=exc)
            self._load_error = exc
            self._state = ModelState.FAILED
        else:
            self._encoder = encoder
            self._info = encoder.info
            if self.vectors.enabled:
                self.vectors.bind(encoder.info)
            if self._owns_batcher:
                self._batcher.start()
            first = self.load_seconds is None
            self.load_seconds = time.monotonic() - started
            self._state = ModelState.READY
            log.info("model %s loaded in %.1f s", self.name or encoder.info.variant, self.load_seconds)
            if first and self.on_first_ready is not None:
                try:
                    self.on_first_ready()
                except Exception:  # noqa: BLE001 - a log line must not fail the load
                    log.exception("the ready callback failed")
        finally:
            self._ready.set()

    # state -----------------------------------------------------------------------------------

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def load_error(self) -> BaseException | None:
        return self._load_error

    @property
    def info(self) -> Any:
        """The encoder's ModelInfo; raises NotReady before the model is loaded."""
        return self._require_encoder().info

    @property
    def known_info(self) -> Any:
        """The model's ModelInfo from its last load (also while unloaded), or None if it never loaded."""
        return self._info

    def loop_health(self) -> LoopHealth:
        return self._batcher.health()

    def set_batch_observer(self, observer: Callable[[str, int, float], None] | None) -> None:
        self._batcher.set_batch_observer(observer)

    def set_batch_tracer(self, tracer: Any) -> None:
        """See engine.batcher.BatchTracer (the unbatched runner has no shared calls to tie together)."""
        if hasattr(self._batcher, "set_batch_tracer"):
            self._batcher.set_batch_tracer(tracer)

    def queued(self) -> int:
        """This model's items waiting in the (possibly shared) queue."""
        return self._batcher.depth_by_lane().get(self.name, 0)

    def set_request_observer(self, observer: Callable[[str, list[tuple[int, float]], int], None] | None) -> None:
        """Call ``observer(kind, [(batch_size, queue_wait_s) per encoded item], cache_hits)`` on the request
        thread once its items are done.

        Lets the HTTP layer log, per request, which batch sizes served it, how long it queued and what
        the cache answered.
        """
        self._request_observer = observer

    # work ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Wrap a request's input work (and its submit): while any request is inside, a batch that has
        room waits (up to the batching window) for its items rather than running without them."""
        with self._lock:
            self._preparing += 1
        try:
            yield
        finally:
            with self._lock:
                self._preparing -= 1
            self._batcher.poke()

    def prepare_image(self, image: Any) -> Any:
        """Image -> model input tensor. Runs in the caller's (request) thread, not the inference thread."""
        return self._require_encoder().prepare_image(image)

    def prepare_encoded_image(self, data: bytes, image_format: str, mode: str) -> Any | None:
        """Encoded image -> model input made by the encoder itself (on its device), or None; request thread."""
        return self._require_encoder().prepare_encoded_image(data, image_format, mode)

    def embed_texts(self, texts: Sequence[str], *, normalize: bool, timeout: float, truncate: bool = True,
                    cancelled: Callable[[], bool] | None = None) -> TextResult:
        """Embed texts: cached ones from the cache, the rest tokenized here and encoded in batches.

        ``truncate=False`` raises TextsTooLong before any model call if a text exceeds the context.
        ``cancelled`` (polled while waiting) tells that the client went away: its items are withdrawn.
        """
        encoder = self._require_encoder()
        with self.preparing(), stages.clock.timing("tokenize"):
            entries, hits = self._look_up(texts, normalize, encoder.info.dim)
            todo = [t for t, e in entries.items() if e is None]
            # A request larger than a batch is tokenized a window at a time, as its windows go to the model, so
            # a thousand texts do not hold the GIL in one piece; truncate=False must see every text first.
            lazily = truncate and len(todo) > self._window
            payloads = todo if lazily else [encoder.prepare_text(t) for t in todo]
            if not truncate:
                too_long = [i for i, t in enumerate(texts) if (entries[t] or payloads[todo.index(t)]).truncated]
                if too_long:
                    raise TextsTooLong(too_long, encoder.info.context_length)
            flow = self._flow(TEXT, normalize, payloads, encoder.prepare_text if lazily else None) if todo else None
        if flow is not None:
            vectors = self._wait(flow, timeout, cancelled, cache_hits=hits)
            for text, prepared, vector in zip(todo, flow.payloads, vectors, strict=True):
                entries[text] = CachedText(vector, prepared.truncated, prepared.tokens)
                self._cache.put(text_key(text, normalize), vector, prepared.truncated, prepared.tokens)
            if self.vectors.enabled:
                self.vectors.put_texts([self._text_l2_key(t, normalize) for t in todo], [entries[t] for t in todo])
        else:
            self._observe(TEXT, [], hits)
        rows = [entries[t] for t in texts]
        return TextResult(embeddings=_stack([r.vector for r in rows]),
                          truncated=[i for i, r in enumerate(rows) if r.truncated],
                          tokens=[r.tokens for r in rows], cache_hits=hits)

    def _look_up(self, texts: Sequence[str], normalize: bool, dim: int) -> tuple[dict[str, CachedText | None], int]:
        """text -> CachedText (a hit in this process's LRU, else in the shared cache: one round trip for all) or
        None, each distinct text once; and the number of hits."""
        entries: dict[str, CachedText | None] = {}
        for text in texts:
            if text not in entries:
                entries[text] = self._cache.get(text_key(text, normalize))
        missed = [t for t, e in entries.items() if e is None]
        self.cache_stats.add("l1", TEXT, len(entries) - len(missed), len(missed))
        if missed and self.vectors.enabled:
            found = self.vectors.get_texts([self._text_l2_key(t, normalize) for t in missed], dim)
            for text, entry in zip(missed, found):
                if entry is not None:
                    entries[text] = entry
                    self._cache.put(text_key(text, normalize), entry.vector, entry.truncated, entry.tokens)
        return entries, sum(e is not None for e in entries.values())

    def _text_l2_key(self, text: str, normalize: bool) -> bytes:
        return self.vectors.key(TEXT, normalize, text_digest(text))

    # images in the shared cache, keyed by their encoded bytes (the service loads them) ------------------

    def cached_images(self, datas: Sequence[bytes], normalize: bool) -> tuple[list[bytes], list[np.ndarray | None]]:
        """(keys, the shared cache's vectors or None) for images given as their bytes: one round trip for all.
        The same picture sent by URL, base64 or upload has the same bytes, so the same key."""
        self._require_encoder()
        keys = [self.vectors.key(IMAGE, normalize, hashlib.sha256(d).digest()) for d in datas]
        return keys, self.vectors.get_vectors(IMAGE, keys, self.info.dim)

    def store_images(self, keys: Sequence[bytes], vectors: Sequence[np.ndarray]) -> None:
        self.vectors.put_vectors(keys, vectors)

    def embed_images(self, tensors: Sequence[Any], *, normalize: bool, timeout: float,
                     cancelled: Callable[[], bool] | None = None) -> np.ndarray:
        self._require_encoder()
        with self.preparing():
            flow = self._flow(IMAGE, normalize, list(tensors))
        return _stack(self._wait(flow, timeout, cancelled))

    def _require_encoder(self) -> Any:
        if self._state is not ModelState.READY:
            raise NotReady(self._state)
        return self._encoder

    def _flow(self, kind: str, normalize: bool, payloads: list[Any],
              prepare: Callable[[Any], Any] | None = None) -> "_Flow":
        """Start a request's model work: its first window of items goes to the queue now (429 if it is full)."""
        flow = _Flow(self._batcher, kind, (self.name, normalize), payloads, window=self._window, prepare=prepare,
                     lane=self.name)
        flow.submit_more()
        return flow

    def _wait(self, flow: "_Flow", timeout: float, cancelled: Callable[[], bool] | None,
              cache_hits: int = 0) -> list[Any]:
        with self._lock:
            self._waiting += 1
        try:
            return self._wait_for(flow, timeout, cancelled, cache_hits)
        finally:
            with self._lock:
                self._waiting -= 1

    def _wait_for(self, flow: "_Flow", timeout: float, cancelled: Callable[[], bool] | None,
                  cache_hits: int) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            step = remaining if cancelled is None else min(remaining, _CANCEL_POLL_S)
            if flow.wait_some(max(0.0, step)):
                break
            if time.monotonic() >= deadline:
                left = flow.withdraw()
                raise RequestTimedOut(f"{left} of {flow.size} items not encoded within {timeout:.1f} s")
            if cancelled is not None and cancelled():
                left = flow.withdraw()
                raise ClientGone(f"the client left with {left} of {flow.size} items not encoded")
        results = [f.result() for f in flow.futures]
        self._observe(flow.kind, [(getattr(f, "batch_size", 0), getattr(f, "queue_wait_s", 0.0))
                                  for f in flow.futures], cache_hits)
        return results

    def _observe(self, kind: str, served: list[tuple[int, float]], cache_hits: int) -> None:
        if self._request_observer is not None:
            try:
                self._request_observer(kind, served, cache_hits)
            except Exception:  # noqa: BLE001 - logging trouble must not fail an encoded request
                log.exception("request observer failed")

    def _run_batch(self, kind: str, options: Any, payloads: list[Any]) -> list[Any]:
        """Runs on the inference thread: the only place the model is called. ``options``: (model name, normalize)."""
        _, normalize = options
        self.batch_counts[kind, "calls"] += 1
        self.batch_counts[kind, "items"] += len(payloads)
        try:
            if kind == TEXT:
                return list(self._encoder.encode_prepared_texts(payloads, normalize=normalize))
            if kind == IMAGE:
                return list(self._encoder.encode_images(payloads, normalize=normalize))
        except Exception as exc:
            if is_fatal_device_error(exc) and self.device_error is None:
                log.error("the GPU is unusable; /health reports unhealthy so the instance is replaced", exc_info=exc)
                self.device_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise
        raise ValueError(f"unknown kind {kind!r}")


class _Flow:
    """One request's items fed to the batcher a window at a time.

    A request never has more than ``window`` items (one batch) queued or running: a request of two
    thousand texts then fits the bounded queue, and the batcher's fair share lets other requests' items
    into every batch instead of behind all of it. The first window is refused whole when the queue is
    full (429); later ones wait for room, within the request's deadline."""

    def __init__(self, batcher: Any, kind: str, options: Any, payloads: list[Any], window: int,
                 prepare: Callable[[Any], Any] | None = None, lane: Any = None) -> None:
        """``prepare``: applied to each payload just before it is queued (None: payloads are ready)."""
        self._batcher = batcher
        self.kind = kind
        self._options = options
        self._lane = lane
        self.payloads = list(payloads)  # prepared in place as they are queued
        self._prepare = prepare
        self._prepared_upto = 0 if prepare is not None else len(payloads)
        self._window = window
        self._group = object()
        self.futures: list[concurrent.futures.Future] = []

    @property
    def size(self) -> int:
        return len(self.payloads)

    def submit_more(self) -> None:
        """Queue the next items, up to a window in flight; on a full queue after the first, try again later."""
        in_flight = sum(not f.done() for f in self.futures)
        start = len(self.futures)
        part = self.payloads[start:start + self._window - in_flight]
        if not part:
            return
        end = start + len(part)
        if self._prepared_upto < end:
            for k in range(self._prepared_upto, end):
                self.payloads[k] = self._prepare(self.payloads[k])
            self._prepared_upto = end
            part = self.payloads[start:end]
        try:
            self.futures += self._batcher.submit(self.kind, self._options, part, group=self._group,
                                                 bulk=self.size > self._window, lane=self._lane)
        except Overloaded:
            if not self.futures:
                raise

    def wait_some(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for progress, queueing more as items finish; True once every item is done."""
        deadline = time.monotonic() + timeout
        while True:
            self.submit_more()
            not_done = [f for f in self.futures if not f.done()]
            if not not_done and len(self.futures) == self.size:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not_done:
                concurrent.futures.wait(not_done, timeout=remaining, return_when=concurrent.futures.FIRST_COMPLETED)
            else:  # nothing in flight and the queue was full: give it a moment
                time.sleep(min(remaining, _FULL_QUEUE_RETRY_S))

    def withdraw(self) -> int:
        """Drop what is still queued (an item already in a batch just finishes unread); returns how many were
        not encoded, the never-submitted ones included."""
        for f in self.futures:
            f.cancel()
        return self.size - sum(f.done() and not f.cancelled() for f in self.futures)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, 0), np.float32)
