"""Optional per-client rate limits (``RATE_LIMIT``), with flask-limiter.

The client is the API key when keys are on (its SHA-256: a key never becomes a Redis key or a log
field), else the client's IP. On Cloud Run the IP is the last entry of ``X-Forwarded-For``: the front end
appends the address it saw, while earlier entries are whatever the caller sent; on Lambda apig-wsgi puts
the function URL's ``sourceIp`` in ``REMOTE_ADDR``. One budget per client across every route. Trust these only behind those front ends: reached
directly, a client can choose its own entry. Counters live in Redis when REDIS_URL is set, so the limit
holds across instances; when Redis fails, each instance counts in memory until it answers again (a
limit is never a reason to refuse service). Probes are never limited. Over the limit: 429 ``rate_limited``
with ``Retry-After`` (in OpenAI's shape under /v1/).
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Flask, request

from handler.auth import bearer_token
from handler.cors import is_preflight

_PREFIX = "clipserve:v1:ratelimit"


def init_app(app: Flask, settings: Any, *, keyed: bool, exempt: frozenset[str]) -> Any:
    """Limit every route but ``exempt`` to RATE_LIMIT per client; returns the Limiter, or None when unset."""
    if settings.rate_limit is None:
        return None
    from flask_limiter import Limiter

    storage, options = "memory://", {}
    if settings.redis_url is not None:
        storage = settings.redis_url
        timeout = settings.redis_timeout_ms / 1000
        options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        if settings.redis_password is not None:
            options["password"] = settings.redis_password
        if settings.redis_url.startswith("rediss://") and settings.redis_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.redis_ca_file)
    cloud_run = settings.k_service is not None
    limiter = Limiter(lambda: client_key(keyed, cloud_run), app=app, application_limits=[settings.rate_limit],
                      storage_uri=storage, storage_options=options, headers_enabled=True, swallow_errors=True,
                      in_memory_fallback_enabled=settings.redis_url is not None, key_prefix=_PREFIX,
                      strategy="fixed-window")
    limiter.request_filter(lambda: request.path in exempt or is_preflight())
    return limiter


def client_key(keyed: bool, cloud_run: bool) -> str:
    if keyed:
        return "key:" + hashlib.sha256(bearer_token(request.headers.get("Authorization", ""))).hexdigest()[:32]
    if cloud_run:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
        if forwarded:
            return "ip:" + forwarded[-1]
    return "ip:" + (request.remote_addr or "unknown")
