"""Credentials for the real deployments, as httpx auth: each signs every request, retries included.

- an API key (the service's ``API_KEYS``): ``Client(url, api_key=...)``, sent as ``Authorization: Bearer``;
- ``GoogleIdToken()``: a private Cloud Run service, with an ID token for its URL from the ambient credentials
  (the metadata server on Google Cloud, or ``GOOGLE_APPLICATION_CREDENTIALS``), fetched again before its hour
  runs out; needs ``google-auth`` (``pip install 'clipserve-client[gcp]'``);
- ``AwsSigV4()``: a Lambda function URL with ``AWS_IAM`` auth, signed with the default AWS credential chain;
  needs ``botocore`` (``pip install 'clipserve-client[aws]'``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import httpx

_LAMBDA_URL_REGION = re.compile(r"\.lambda-url\.([a-z0-9-]+)\.on\.aws", re.IGNORECASE)


class MissingDependency(RuntimeError):
    """An optional package the chosen auth needs is not installed, or it found no credentials."""


class BearerToken(httpx.Auth):
    """A fixed ``Authorization: Bearer`` value: an API key, or a token the caller manages."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class GoogleIdToken(httpx.Auth):
    """``Authorization: Bearer <Google ID token>`` whose audience is the service URL (or ``audience``)."""

    REFRESH_AFTER_S = 45 * 60

    def __init__(self, audience: str | None = None, fetch: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.audience = audience
        self._fetch = fetch or fetch_google_id_token
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._fetched_at = 0.0

    def token(self, audience: str) -> str:
        with self._lock:
            if self._token is None or self._clock() - self._fetched_at >= self.REFRESH_AFTER_S:
                self._token = self._fetch(self.audience or audience)
                self._fetched_at = self._clock()
            return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        origin = f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
        request.headers["Authorization"] = f"Bearer {self.token(origin)}"
        yield request


def fetch_google_id_token(audience: str) -> str:
    try:
        import google.auth.exceptions
        import google.auth.transport.requests
        import google.oauth2.id_token
    except ImportError:
        raise MissingDependency("GoogleIdToken needs google-auth, which is not installed: pip install google-auth "
                                "requests (or pip install 'clipserve-client[gcp]')") from None
    try:
        id_token: Any = google.oauth2.id_token  # typed or not depending on the google-auth version
        transport: Any = google.auth.transport.requests
        token: str = id_token.fetch_id_token(transport.Request(), audience)
        return token
    except google.auth.exceptions.GoogleAuthError as exc:
        raise MissingDependency(f"no Google credentials for an ID token ({exc})") from None


def region_from_url(url: str) -> str | None:
    """https://<id>.lambda-url.eu-west-1.on.aws/ -> eu-west-1."""
    match = _LAMBDA_URL_REGION.search(url)
    return match.group(1) if match else None


class AwsSigV4(httpx.Auth):
    """Signs each request with SigV4 for ``service`` (``lambda`` for a function URL). The region comes from the
    function URL, else ``region``, else the AWS configuration."""

    requires_request_body = True

    def __init__(self, region: str | None = None, service: str = "lambda") -> None:
        try:
            import botocore.auth
            import botocore.awsrequest
            import botocore.session
        except ImportError:
            raise MissingDependency("AwsSigV4 needs botocore, which is not installed: pip install botocore (or pip "
                                    "install 'clipserve-client[aws]')") from None
        session = botocore.session.get_session()
        self._credentials = session.get_credentials()
        if self._credentials is None:
            raise MissingDependency("AwsSigV4: no AWS credentials found (env, ~/.aws, or an instance role)")
        self.region = region or session.get_config_variable("region")
        self.service = service
        self._botocore_auth: Any = botocore.auth
        self._aws_request: Any = botocore.awsrequest.AWSRequest

    def signed_headers(self, method: str, url: str, body: bytes | None, headers: Any) -> dict[str, str]:
        """The headers that sign this request (any HTTP library's request can take them)."""
        region = region_from_url(url) or self.region
        if not region:
            raise MissingDependency("AwsSigV4: no region; pass region= or set AWS_REGION")
        kept = {k: v for k, v in headers.items() if k.lower() in ("content-type", "host")}
        aws_request = self._aws_request(method=method, url=url, data=body, headers=kept)
        credentials = self._credentials.get_frozen_credentials()  # refreshes role credentials when due
        self._botocore_auth.SigV4Auth(credentials, self.service, region).add_auth(aws_request)
        return dict(aws_request.headers.items())

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self.signed_headers(request.method, str(request.url), request.content, request.headers))
        yield request
