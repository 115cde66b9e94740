"""Optional API keys: ``Authorization: Bearer <key>`` checked in constant time against every configured key.

Platform IAM (Cloud Run invoker, Lambda function URL with AWS_IAM) stays the default protection;
keys are for clients that cannot sign platform requests. With no key configured this module
does nothing. Probe routes (``/health``, and the ones a protocol names) are exempt so platform probes
work without a key.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from handler.cors import is_preflight
from handler.errors import Unauthorized, error_response
from infra.settings import SettingsError

EXEMPT_PATHS = frozenset({"/health"})  # when the app names none
_MESSAGE = "missing or invalid API key"


def load_api_keys(settings: Any) -> tuple[bytes, ...]:
    """Keys from ``API_KEYS`` (comma-separated) and ``API_KEYS_FILE`` (comma- or newline-separated, ``#`` comments).

    Read once at start-up; an unreadable or empty file fails the boot rather than leaving the service open.
    """
    keys: list[str] = _split(settings.api_keys or "")
    path: Path | None = settings.api_keys_file
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"API_KEYS_FILE={str(path)!r}: cannot read it ({type(exc).__name__})") from None
        from_file = _split("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
        if not from_file:
            raise SettingsError(f"API_KEYS_FILE={str(path)!r}: holds no key")
        keys += from_file
    return tuple(dict.fromkeys(k.encode("utf-8") for k in keys))


def key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    """True if ``presented`` equals one of ``keys``; every key is compared, so timing reveals nothing about which.

    The SHA-256 digests are compared, not the keys: ``hmac.compare_digest`` returns at once when the
    lengths differ, which would tell a caller how long the keys are. Digests all have 32 bytes.
    """
    presented_digest = hashlib.sha256(presented).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented_digest, hashlib.sha256(key).digest())
    return matched


def init_app(app: Flask, settings: Any, exempt: frozenset[str] = EXEMPT_PATHS) -> None:
    """Require a valid bearer key on every route but the ``exempt`` paths when keys are configured."""
    keys = load_api_keys(settings)
    if not keys:
        return

    def require_key() -> Response | None:
        if request.path in exempt or is_preflight():
            return None
        if key_matches(bearer_token(request.headers.get("Authorization", "")), keys):
            return None
        response = error_response(Unauthorized(_MESSAGE))
        response.headers["WWW-Authenticate"] = 'Bearer realm="clipserve"'
        return response

    app.before_request(require_key)


def bearer_token(header: str) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` header (empty for any other scheme)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return b""
    # Header values arrive latin-1 decoded (WSGI); re-encode so non-ASCII input compares as bytes, never raises.
    return token.strip().encode("latin-1", errors="replace")


def _split(text: str) -> list[str]:
    return [k.strip() for k in text.replace("\n", ",").split(",") if k.strip()]
