"""Per-image failures. Each becomes ``{"index", "code", "message"}`` in a response; the other images still succeed."""

from __future__ import annotations

FETCH_FAILED = "fetch_failed"      # the URL could not be downloaded (DNS, connection, HTTP status, too many redirects)
FETCH_TIMEOUT = "fetch_timeout"    # the URL did not answer, or did not finish, within its timeouts
TOO_LARGE = "too_large"            # more bytes or pixels than the limits allow
INVALID_IMAGE = "invalid_image"    # not an image we can decode (bad base64, truncated, unknown format, ...)
FORBIDDEN_URL = "forbidden_url"    # scheme other than http(s), or a private/loopback/link-local/... address

CODES = (FETCH_FAILED, FETCH_TIMEOUT, TOO_LARGE, INVALID_IMAGE, FORBIDDEN_URL)


class ImageError(Exception):
    """One image could not be loaded. ``code`` is one of CODES; ``message`` is safe to show to the client."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown image error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ImageError({self.code!r}, {self.message!r})"
