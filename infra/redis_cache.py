"""The shared cache on Redis (Memorystore, ElastiCache, a local redis-server): ``engine.cache.SharedCache``.

A cache may vanish at any time and nothing but speed may change, so every call fails open: short
timeouts (REDIS_TIMEOUT_MS), at most one retry, and a circuit breaker. The first failure opens it:
for REDIS_RETRY_S every call is skipped (misses, dropped writes: the model answers as if no cache were
configured), then calls try Redis again, and one of the kind that failed (a read, or a write: a full Redis
with noeviction refuses writes and still answers reads) closes it on success. A warning is logged when
it opens and when it closes, never per request. Nothing is logged of keys or values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from infra import tracing

log = logging.getLogger(__name__)

OK, OPEN = "ok", "open"
READ, WRITE = "read", "write"


class RedisCache:
    def __init__(self, client: Any, retry_s: float) -> None:
        self._client = client
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._failed_kind = READ
        self._closed_at = 0.0
        self._opened_at = 0.0  # when the breaker last opened: only calls begun after it may close it
        self.state = OK
        self.failures = 0  # calls that failed since start (/stats)
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> "RedisCache":
        """A client for REDIS_URL; nothing is connected yet (a Redis down at boot does not stop the boot)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        timeout = settings.redis_timeout_ms / 1000
        # One retry, for a pooled connection the server closed (a restarted Redis); a timeout is not retried, so a
        # stalled Redis costs a request at most one REDIS_TIMEOUT_MS before the breaker opens.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": retry,
                                   "retry_on_timeout": False, "health_check_interval": 0}
        if settings.redis_password is not None:
            options["password"] = settings.redis_password
        if settings.redis_url.startswith("rediss://") and settings.redis_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.redis_ca_file)
        return cls(redis.Redis.from_url(settings.redis_url, **options), settings.redis_retry_s)

    # engine.cache.SharedCache ----------------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        with tracing.span("clipserve.cache", **{"clipserve.cache.op": "get", "clipserve.cache.keys": len(keys)}) \
                as span:
            found = self._call(lambda: self._client.mget(list(keys)), READ)
            values = list(found) if found is not None and len(found) == len(keys) else [None] * len(keys)
            span.set_attribute("clipserve.cache.hits", sum(v is not None for v in values))
            span.set_attribute("clipserve.cache.state", self.state)
        return values

    def put_many(self, items: Sequence[tuple[bytes, bytes]], ttl_s: int) -> None:
        def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, value, ex=ttl_s)
            pipe.execute()

        if items:
            with tracing.span("clipserve.cache", **{"clipserve.cache.op": "put", "clipserve.cache.keys": len(items)}):
                self._call(write, WRITE)

    def generation(self, name: bytes) -> int | None:
        value = self._call(lambda: self._client.get(name), READ, missing=False)
        if value is _FAILED:
            return None
        try:
            return int(value or 0)
        except ValueError:
            return None

    def bump(self, name: bytes) -> None:
        self._call(lambda: self._client.incr(name), WRITE)

    # the breaker --------------------------------------------------------------------------------------

    def _call(self, fn: Any, kind: str, missing: Any = None) -> Any:
        """``fn()``, or ``missing`` (``_FAILED`` when ``missing`` is False) when Redis is skipped or fails."""
        fallback = _FAILED if missing is False else missing
        if self.state == OPEN and time.monotonic() < self._open_until:
            return fallback
        started = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - redis errors, timeouts, refused connections: all mean "no cache"
            self._opened(exc, kind, started)
            return fallback
        if self.state == OPEN and kind == self._failed_kind and started >= self._opened_at:
            # Only a call begun after the breaker opened (a probe) closes it: one in flight since before the
            # failure proves nothing (under a write-refusing Redis it closed the breaker, which then logged again).
            with self._lock:
                if self.state == OPEN:
                    self.state = OK
                    self._closed_at = time.monotonic()
                    log.warning("shared cache (Redis) is answering again: cache back on")
        return result

    def _opened(self, exc: Exception, kind: str, started: float) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = type(exc).__name__
            if started < self._closed_at:
                return  # a call that began before Redis came back (on a connection from then): not news
            self._failed_kind = kind
            self._open_until = time.monotonic() + self._retry_s
            if self.state != OPEN:
                self.state = OPEN
                self._opened_at = time.monotonic()
                log.warning("shared cache (Redis) failed (%s); serving without it, trying again in %.0f s",
                            type(exc).__name__, self._retry_s)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not worth an error
            pass


_FAILED = object()
