"""Retries for the HTTP target: urllib3's Retry (exponential backoff, jitter, Retry-After),
plus a tally of why we retried for the job summary.

429, 500, 502, 503, 504 and connection/read errors are retried on POST too (embedding is
idempotent). A service scaling from zero answers 429/503 with Retry-After at first; urllib3
sleeps that long, otherwise backoff_factor * 2**(n-1) capped at backoff_max, plus jitter.
Retry-After is honoured up to max(backoff_max, RETRY_AFTER_MAX_S): a proxy answering
``Retry-After: 3600`` must not park a worker for an hour.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
# The longest Retry-After honoured, unless --backoff-max is longer: then that.
RETRY_AFTER_MAX_S = 60.0


class RetryTally:
    """Thread-safe count of retries by reason ('HTTP 503', 'ConnectionError', ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


class TalliedRetry(Retry):
    """urllib3 Retry that reports each retry it grants to a callback."""

    def __init__(
        self,
        *args: Any,
        on_retry: Callable[[str], None] | None = None,
        retry_after_cap: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_retry = on_retry
        self.retry_after_cap = retry_after_cap

    def new(self, **kw: Any) -> TalliedRetry:
        retry = super().new(**kw)
        retry.on_retry = self.on_retry
        retry.retry_after_cap = self.retry_after_cap
        return retry

    def parse_retry_after(self, retry_after: str) -> float:
        seconds = super().parse_retry_after(retry_after)
        if self.retry_after_cap is not None and seconds > self.retry_after_cap:
            log.info("Retry-After: %s is longer than %.1f s; waiting %.1f s", retry_after.strip(),
                     self.retry_after_cap, self.retry_after_cap)
            return self.retry_after_cap
        return seconds

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[override]
        retry = super().increment(method, url, response, error, _pool, _stacktrace)  # raises when exhausted
        if response is not None and response.status:
            reason = f"HTTP {response.status}"
        else:
            reason = type(error).__name__ if error else "unknown"
        log.info("retrying %s after %s (retry %d)", url, reason, len(retry.history))
        if self.on_retry is not None:
            self.on_retry(reason)
        return retry


def make_retry(
    max_retries: int,
    backoff_factor: float = 0.5,
    backoff_max: float = 30.0,
    jitter: float = 1.0,
    on_retry: Callable[[str], None] | None = None,
    statuses: tuple[int, ...] = RETRY_STATUSES,
    retry_after_max: float | None = None,
) -> TalliedRetry:
    """The policy every request of a job uses; returns the last response once retries run out.

    ``statuses``: the HTTP statuses retried. ``retry_after_max``: the longest Retry-After honoured
    (default max(backoff_max, RETRY_AFTER_MAX_S)).
    """
    return TalliedRetry(
        total=max_retries,
        status_forcelist=statuses,
        allowed_methods=None,  # POST too: embedding the same rows twice is harmless
        backoff_factor=backoff_factor,
        backoff_max=backoff_max,
        backoff_jitter=jitter,
        respect_retry_after_header=True,
        raise_on_status=False,
        on_retry=on_retry,
        retry_after_cap=max(backoff_max, RETRY_AFTER_MAX_S) if retry_after_max is None else retry_after_max,
    )
