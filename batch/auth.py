"""Credentials for private endpoints: a bearer token, an API key, or AWS SigV4 (Lambda function
URLs with AWS_IAM auth). botocore is optional: only --aws-sigv4 needs it."""
from __future__ import annotations

import re
from typing import Any

import requests

_LAMBDA_URL_REGION = re.compile(r"\.lambda-url\.([a-z0-9-]+)\.on\.aws", re.IGNORECASE)


class MissingDependency(RuntimeError):
    pass


def bearer_headers(token: str | None, api_key: str | None) -> dict[str, str]:
    """--token (e.g. a Cloud Run ID token) or --api-key (the service's API_KEYS): both travel as
    'Authorization: Bearer', which is where clipserve checks its keys, so only one may be given."""
    if token and api_key:
        raise ValueError("--token and --api-key both go in 'Authorization: Bearer'; give one"
                         " (a gateway key in another header: --header 'x-api-key: KEY')")
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
