"""Exceptions named after the service's error codes, so callers catch what they can act on.

A failure of one item (an image that does not decode, a text the service refuses) is never raised: it comes
back as an ``ItemError`` at its index in the result, and the other items still succeed. What is raised is
what stops the whole call: a wrong key, an unknown model, a service that stays overloaded or down through
every retry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ItemError:
    """Why the item at ``index`` of the caller's list has no result: the service's code (``invalid_image``,
    ``fetch_failed``, ``too_large``, ``invalid_request``, ...) or a local one (``file_not_found``,
    ``unreadable``, ``unsupported_input``) and a message."""

    index: int
    code: str
    message: str


class ClipserveError(Exception):
    """An error for the whole call. ``status`` is the HTTP status (None: no answer), ``code`` the service's
    error code, ``retry_after`` the seconds the service asked to wait (429/503), when it said."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after


class InvalidInput(ClipserveError):
    """The service refused the request (400/413/422). ``index`` is the item at fault when one can be named."""

    def __init__(self, message: str, *, index: int | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.index = index


class Unauthorized(ClipserveError):
    """401/403: the API key, ID token or signature is missing or wrong."""


class NotFound(ClipserveError):
    """404: the route, the index (``index_not_configured``) or the item does not exist."""


class UnknownModel(ClipserveError):
    """``model`` names no model the deployment serves; the message lists those it does."""


class RateLimited(ClipserveError):
    """429 ``rate_limited`` after every retry: this client's RATE_LIMIT share is spent."""


class Overloaded(ClipserveError):
    """429 ``overloaded`` after every retry: the model's queue stayed longer than the service's budget."""


class ModelLoading(ClipserveError):
    """503 while the model loads (a cold start, or a model loaded on first use), after every retry."""


class ServiceUnavailable(ClipserveError):
    """502/503 other than a loading model (the search backend down, an unhealthy instance), after every retry."""


class Timeout(ClipserveError):
    """The call did not finish within its timeout, or the service answered 504."""


class ServerError(ClipserveError):
    """500 on every part of the call: the service fails on everything it is sent."""


class ConnectionFailed(ClipserveError):
    """No answer at all (refused, reset, DNS) after every retry."""


class ItemsFailed(ClipserveError):
    """Raised by ``raise_for_errors()`` on a result whose items did not all succeed."""

    def __init__(self, errors: list[ItemError]) -> None:
        first = errors[0]
        super().__init__(f"{len(errors)} item(s) failed; first: [{first.index}] {first.code}: {first.message}",
                         code=first.code)
        self.errors = errors


_BY_CODE: dict[str, type[ClipserveError]] = {
    "unauthorized": Unauthorized, "forbidden": Unauthorized,
    "unknown_model": UnknownModel, "model_not_found": UnknownModel,
    "rate_limited": RateLimited, "overloaded": Overloaded,
    "model_loading": ModelLoading, "loading": ModelLoading,
    "timeout": Timeout, "request_timeout": Timeout,
}
_BY_STATUS: dict[int, type[ClipserveError]] = {
    400: InvalidInput, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 405: InvalidInput, 413: InvalidInput,
    415: InvalidInput, 422: InvalidInput, 429: Overloaded, 500: ServerError, 502: ServiceUnavailable,
    503: ServiceUnavailable, 504: Timeout,
}


def error_for(status: int, code: str | None, message: str, retry_after: float | None = None) -> ClipserveError:
    """The exception for an answer with this status and code; an ``InvalidInput`` names the item the service's
    message points at (``texts[3]: ...``), as an index into that request."""
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or (ServerError if status >= 500 else InvalidInput)
    text = f"HTTP {status} {code or ''}: {message}".replace("  ", " ")
    if cls is InvalidInput:
        found = re.search(r"\b\w+\[(\d+)\]", message)
        return InvalidInput(text, index=int(found.group(1)) if found else None, status=status, code=code,
                            retry_after=retry_after)
    return cls(text, status=status, code=code, retry_after=retry_after)
