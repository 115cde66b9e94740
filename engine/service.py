"""The model behind the HTTP layer: loaded in the background, every model call on one thread.

The encoder is opaque here (it follows the model-layer contract in ARCHITECTURE.md); this module
imports neither flask nor torch, so the HTTP layer can be tested with any object that has
``info``, ``encode_text``, ``encode_images`` and ``prepare_image``.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from engine.batcher import Batcher, LoopHealth

log = logging.getLogger(__name__)

TEXT = "text"
IMAGE = "image"


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class NotReady(RuntimeError):
    """The model is still loading, or failed to load."""

    def __init__(self, state: ModelState) -> None:
        super().__init__(f"model {state.value}")
        self.state = state


class RequestTimedOut(TimeoutError):
    """The request's items were not encoded within its time budget; they were withdrawn from the queue."""


@dataclass(frozen=True)
class TextResult:
    embeddings: np.ndarray    # (n, dim) float32
    truncated: list[int]      # indices of texts cut to the model's context


class EmbeddingEngine:
    """Background model load + a Batcher. ``start`` is idempotent and safe to call after fork."""

    def __init__(self, load: Callable[[], Any], *, max_batch_size: int = 32, max_wait_s: float = 0.005,
                 queue_size: int = 256, stall_timeout_s: float = 120.0) -> None:
        self._load = load
        self._encoder: Any = None
        self._state = ModelState.LOADING
        self._load_error: BaseException | None = None
        self._loader: threading.Thread | None = None
        self._loader_pid: int | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._request_observer: Callable[[str, list[tuple[int, float]]], None] | None = None
        self._batcher = Batcher(self._run_batch, max_batch_size=max_batch_size, max_wait_s=max_wait_s,
                                queue_size=queue_size, stall_timeout_s=stall_timeout_s)

    @classmethod
    def from_settings(cls, settings: Any, load: Callable[[], Any]) -> "EmbeddingEngine":
        return cls(load, max_batch_size=settings.batch_max_size, max_wait_s=settings.batch_max_wait_ms / 1000,
                   queue_size=settings.queue_size, stall_timeout_s=settings.stall_timeout_s)

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading the model (once per process) and start the inference thread. Cheap when already started."""
        pid = os.getpid()
        if self._loader_pid == pid:
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

    def _load_model(self) -> None:
        started = time.monotonic()
        try:
            encoder = self._load()
        except BaseException as exc:  # noqa: BLE001 - report it through health, never crash silently
            log.error("model failed to load", exc_info=exc)
            self._load_error = exc
            self._state = ModelState.FAILED
        else:
            self._encoder = encoder
            self._batcher.start()
            self._state = ModelState.READY
            log.info("model loaded in %.1f s", time.monotonic() - started)
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

    def loop_health(self) -> LoopHealth:
        return self._batcher.health()

    def set_batch_observer(self, observer: Callable[[str, int, float], None] | None) -> None:
        self._batcher.set_batch_observer(observer)

    def set_request_observer(self, observer: Callable[[str, list[tuple[int, float]]], None] | None) -> None:
        """Call ``observer(kind, [(batch_size, queue_wait_s) per item])`` on the request thread once its items are done.

        Lets the HTTP layer log, per request, which batch sizes served it and how long it queued.
        """
        self._request_observer = observer

    # work ------------------------------------------------------------------------------------

    def prepare_image(self, image: Any) -> Any:
        """Image -> model input tensor. Runs in the caller's (request) thread, not the inference thread."""
        return self._require_encoder().prepare_image(image)

    def embed_texts(self, texts: Sequence[str], *, normalize: bool, timeout: float) -> TextResult:
        self._require_encoder()
        rows = self._wait(TEXT, self._batcher.submit(TEXT, normalize, list(texts)), timeout)
        return TextResult(embeddings=_stack([r[0] for r in rows]),
                          truncated=[i for i, r in enumerate(rows) if r[1]])

    def embed_images(self, tensors: Sequence[Any], *, normalize: bool, timeout: float) -> np.ndarray:
        self._require_encoder()
        return _stack(self._wait(IMAGE, self._batcher.submit(IMAGE, normalize, list(tensors)), timeout))

    def _require_encoder(self) -> Any:
        if self._state is not ModelState.READY:
            raise NotReady(self._state)
        return self._encoder

    def _wait(self, kind: str, futures: list[concurrent.futures.Future], timeout: float) -> list[Any]:
        done, not_done = concurrent.futures.wait(futures, timeout=timeout)
        if not_done:
            for f in not_done:
                f.cancel()  # a queued item is dropped; one already in a batch just finishes unread
            raise RequestTimedOut(f"{len(not_done)} of {len(futures)} items not encoded within {timeout:.1f} s")
        results = [f.result() for f in futures]
        if self._request_observer is not None:
            try:
                self._request_observer(kind, [(getattr(f, "batch_size", 0), getattr(f, "queue_wait_s", 0.0))
                                              for f in futures])
            except Exception:  # noqa: BLE001 - logging trouble must not fail an encoded request
                log.exception("request observer failed")
        return results

    def _run_batch(self, kind: str, normalize: Any, payloads: list[Any]) -> list[Any]:
        """Runs on the inference thread: the only place the model is called."""
        if kind == TEXT:
            encoded = self._encoder.encode_text(payloads, normalize=normalize)
            cut = set(encoded.truncated)
            return [(encoded.embeddings[i], i in cut) for i in range(len(payloads))]
        if kind == IMAGE:
            return list(self._encoder.encode_images(payloads, normalize=normalize))
        raise ValueError(f"unknown kind {kind!r}")


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, 0), np.float32)
