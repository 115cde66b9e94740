"""Credentials for private endpoints: a bearer token, an API key, or AWS SigV4 (Lambda function
URLs with AWS_IAM auth). botocore is optional: only --aws-sigv4 needs it."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

_LAMBDA_URL_REGION = re.compile(r"\.lambda-url\.([a-z0-9-]+)\.on\.aws", re.IGNORECASE)


class MissingDependency(RuntimeError):
    pass


def bearer_headers(token: str | None, api_key: str | None) -> dict[str, str]:
    """--token (e.g. a Cloud Run ID token) or --api-key (the service's API_KEYS): both travel as
    'Authorization: Bearer', which is where clipserve checks its keys, so only one may be given."""
    if token and api_key:
        raise ValueError(
            "--token and --api-key both go in 'Authorization: Bearer'; give one"
            " (a gateway key in another header: --header 'x-api-key: KEY')"
        )
    secret = token or api_key
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def region_from_url(url: str) -> str | None:
    """https://<id>.lambda-url.eu-west-1.on.aws/ -> eu-west-1."""
    match = _LAMBDA_URL_REGION.search(url)
    return match.group(1) if match else None


class SigV4Auth(requests.auth.AuthBase):
    """Signs every request (retries included) with the default AWS credential chain."""

    def __init__(self, region: str | None, service: str = "lambda") -> None:
        try:
            import botocore.auth
            import botocore.awsrequest
            import botocore.session
        except ImportError:
            raise MissingDependency(
                "--aws-sigv4 needs botocore, which is not installed: pip install botocore"
                " (or pip install 'clipserve[aws]')"
            ) from None
        session = botocore.session.get_session()
        self._credentials = session.get_credentials()
        if self._credentials is None:
            raise MissingDependency("--aws-sigv4: no AWS credentials found (env, ~/.aws, or instance role)")
        self.region = region or session.get_config_variable("region")
        if not self.region:
            raise MissingDependency("--aws-sigv4: no region; pass --aws-region or set AWS_REGION")
        self.service = service
        self._botocore_auth = botocore.auth
        self._aws_request = botocore.awsrequest.AWSRequest

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        headers: dict[str, Any] = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "host")}
        aws_request = self._aws_request(method=request.method, url=request.url, data=request.body, headers=headers)
        credentials = self._credentials.get_frozen_credentials()  # refreshes role credentials when due
        self._botocore_auth.SigV4Auth(credentials, self.service, self.region).add_auth(aws_request)
        request.headers.update(dict(aws_request.headers.items()))
        return request


class GoogleIdTokenAuth(requests.auth.AuthBase):
    """'Authorization: Bearer <Google ID token>' for a private Cloud Run service, fetched from the
    metadata server (Cloud Run Jobs, GCE) or GOOGLE_APPLICATION_CREDENTIALS, and fetched again before
    its hour runs out, so a long job does not start failing with 401 halfway."""

    REFRESH_AFTER_S = 45 * 60

    def __init__(
        self, audience: str, fetch: Callable[[str], str] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.audience = audience
        self._fetch = fetch or _fetch_google_id_token
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._fetched_at = 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() - self._fetched_at >= self.REFRESH_AFTER_S:
                self._token = self._fetch(self.audience)
                self._fetched_at = self._clock()
            return self._token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request


def _fetch_google_id_token(audience: str) -> str:
    import google.auth.exceptions
    import google.auth.transport.requests
    import google.oauth2.id_token

    try:
        return google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
    except google.auth.exceptions.GoogleAuthError as exc:
        raise MissingDependency(f"--google-id-token: no Google credentials for an ID token ({exc})") from None
