"""The configured search backend in a running service: opened once per process, in the background.

The index opens in its own thread, beside the model load (gunicorn's worker starts both), so a large
index read into memory does not wait for the model or the other way round. Until it is open, search
routes answer 503 ``index_loading``; if it fails, they answer 503 and, when the backend is part of the
service's health (an embedded index), so does ``/health``.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from typing import Any, Callable

from search.errors import BackendTimeout, SearchError, Unavailable
from search.query import SearchBackend

log = logging.getLogger(__name__)


class State(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class NotOpen(SearchError):
    """The backend is still opening, or failed to."""

    def __init__(self, state: State, reason: str | None, retry_after_s: float | None = None) -> None:
        super().__init__(f"the search index is {state.value}" + (f": {reason}" if reason else ""))
        self.state = state
        self.retry_after_s = retry_after_s


class SearchService:
    def __init__(self, open_backend: Callable[[], SearchBackend], *, part_of_health: bool,
                 retry_after_s: float | None = None) -> None:
        """`retry_after_s`: a backend that could not be reached (a server) is tried again by a search at most
        this often; None: a failure is final (an index folder that does not open will not start to)."""
        self._open = open_backend
        self.part_of_health = part_of_health
        self.retry_after_s = retry_after_s
        self._retryable = False
        self._tried_at = 0.0
        self._backend: SearchBackend | None = None
        self._state = State.LOADING
        self._reason: str | None = None
        self._started_pid: int | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.open_seconds: float | None = None

    def start(self) -> None:
        """Begin opening (once per process; cheap afterwards)."""
        if self._started_pid == os.getpid():
            return
        with self._lock:
            if self._started_pid == os.getpid():
                return
            self._started_pid = os.getpid()
            if self._state is State.LOADING:
                threading.Thread(target=self._run, name="clipserve-index", daemon=True).start()

    def _run(self) -> None:
        started = self._tried_at = time.monotonic()
        try:
            backend = self._open()
        except Exception as exc:  # noqa: BLE001 - reported through health and every search answer
            self._retryable = self.retry_after_s is not None and isinstance(exc, (Unavailable, BackendTimeout))
            log.log(logging.WARNING if self._retryable else logging.ERROR, "search index failed to open: %s", exc,
                    exc_info=not isinstance(exc, (RuntimeError, SearchError)))
            self._reason = str(exc)
            self._state = State.FAILED
        else:
            self._backend = backend
            self.open_seconds = time.monotonic() - started
            self._state = State.READY
            log.info("search index opened in %.2f s", self.open_seconds)
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        self._done.wait(timeout)
        return self._state is State.READY

    @property
    def state(self) -> State:
        return self._state

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def backend(self) -> SearchBackend:
        if self._backend is None and self._retryable and time.monotonic() - self._tried_at >= self.retry_after_s:
            with self._lock:
                if self._backend is None and time.monotonic() - self._tried_at >= self.retry_after_s:
                    self._run()  # in this request, bounded by the backend's own timeout
        if self._backend is None:
            raise NotOpen(self._state, self._reason, self.retry_after_s if self._retryable else None)
        return self._backend

    def describe(self) -> dict[str, Any]:
        """For GET /: the backend's state and, once open, what it serves."""
        described: dict[str, Any] = {"state": self._state.value}
        if self._reason:
            described["reason"] = self._reason
        if self._backend is not None:
            info = self._backend.info()
            described.update(backend=info.backend, writable=self._backend.writable, index=info.public(),
                             details=info.details, columns=self._backend.columns(), thumbnails=info.thumbnails)
        return described

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
