"""The Pub/Sub push subscription's OIDC token (``Authorization: Bearer <JWT>``), checked as Google documents:
signed by one of Google's certificates, ``aud`` the configured audience, ``iss`` Google's, ``email`` the push
service account with ``email_verified``. No API key opens the push route: only Pub/Sub (or Eventarc) can call it.

The certificates are fetched from INGEST_OIDC_CERTS_URL and kept for their ``max-age`` (refetched at most once
a minute when a token names a key not yet seen), so a push costs no network round trip; tests point the URL at
certificates of their own.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from handler.errors import Forbidden, IngestUnavailable, Unauthorized

_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
_MAX_AGE = re.compile(r"max-age=(\d+)")


class PushTokenVerifier:
    def __init__(self, audience: str, service_account: str, certs_url: str, session: Any = None) -> None:
        self.audience = audience
        self.service_account = service_account
        self.certs_url = certs_url
        self._session = session
        self._certs: dict[str, str] = {}
        self._expires = 0.0
        self._fetched = 0.0
        self._lock = threading.Lock()

    def verify(self, authorization: str) -> dict[str, Any]:
        """The token's claims; Unauthorized (401) for a missing, malformed, expired or foreign token, Forbidden
        (403) for a valid token of another account, SearchUnavailable (503, retried) if no certificate can be read."""
        from google.auth import exceptions, jwt

        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the push request carries no OIDC token (Authorization: Bearer)")
        try:
            header = jwt.decode_header(token)
            claims = jwt.decode(token, certs=self._certs_for(str(header.get("kid", ""))), audience=self.audience,
                                clock_skew_in_seconds=10)
        except (exceptions.GoogleAuthError, ValueError):
            raise Unauthorized("the push request's OIDC token is not valid for this service") from None
        if claims.get("iss") not in _ISSUERS:
            raise Unauthorized("the push request's OIDC token was not issued by Google")
        if claims.get("email") != self.service_account or claims.get("email_verified") is not True:
            raise Forbidden("the push request's OIDC token is for another service account than "
                            "INGEST_PUSH_SERVICE_ACCOUNT")
        return claims

    def _certs_for(self, kid: str) -> dict[str, str]:
        with self._lock:
            now = time.monotonic()
            stale = now >= self._expires or (kid not in self._certs and now - self._fetched > 60)
            if stale:
                self._fetch(now)
            return self._certs

    def _fetch(self, now: float) -> None:
        import requests

        session = self._session or requests
        try:
            response = session.get(self.certs_url, timeout=5)
            response.raise_for_status()
            certs = response.json()
        except (requests.RequestException, ValueError):
            if self._certs:
                return  # keep the ones we have
            raise IngestUnavailable("Google's token certificates cannot be read now; the push will be retried",
                                    headers={"Retry-After": "10"}) from None
        match = _MAX_AGE.search(response.headers.get("Cache-Control", ""))
        self._certs = {str(k): str(v) for k, v in certs.items()}
        self._fetched = now
        self._expires = now + (int(match.group(1)) if match else 3600)
