"""Credentials flags: a bearer token or an API key. (A Google ID token and AWS SigV4 come from the client's
clipserve_client.auth, which signs every request, retries included.)"""

from __future__ import annotations


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
