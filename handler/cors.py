"""CORS for browser apps on other origins (``CORS_ORIGINS``), with flask-cors.

Why a library: the preflight rules (which request headers to echo, Vary: Origin, no credentials with ``*``) are
easy to get subtly wrong by hand. Preflights carry no API key by the browser's rules, so auth and the rate limit
let them through (``is_preflight``); the preflight answer itself holds no data.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-Request-ID"]
EXPOSED_HEADERS = ["X-Request-ID", "Retry-After", "WWW-Authenticate"]
METHODS = ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
MAX_AGE_S = 600


def init_app(app: Flask, settings: Any) -> None:
    """Answer CORS for ``settings.cors_origins`` (exact origins, or ``*``); nothing when it is empty."""
    if not settings.cors_origins:
        return
    from flask_cors import CORS

    anyone = settings.cors_origins == ("*",)
    CORS(app, origins="*" if anyone else list(settings.cors_origins), send_wildcard=anyone,
         allow_headers=ALLOWED_HEADERS, expose_headers=EXPOSED_HEADERS, methods=METHODS, supports_credentials=False,
         max_age=MAX_AGE_S, vary_header=True)


def is_preflight() -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
