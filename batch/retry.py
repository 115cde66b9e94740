"""A tally of why requests were retried, for the job summary (the client, clipserve_client, retries them)."""

from __future__ import annotations

import threading
from collections import Counter


class RetryTally:
    """Thread-safe count of retries by reason ('HTTP 503', 'ConnectError', ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))
