"""The one error path: one type per code, one status table, and the shape each protocol writes them in.

Werkzeug's own errors (404, 405, 413, ...), engine exceptions and anything unhandled are turned
into an ``ApiError`` here, so a client never sees an HTML page or a stack trace. The native shape is
``{"error": {"code", "message"}}``; a protocol with a shape of its own (OpenAI's, for its client
libraries) registers it for its routes and path prefix (``ErrorShapes``), and every error of a
request to those routes is written in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from flask import Flask, Response, current_app, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from engine import ClientGone, EngineStopped, ModelState, NotReady, Overloaded, RequestTimedOut
from engine.models import UnknownModel
from search import errors as search_errors
from search.service import NotOpen, State

log = logging.getLogger(__name__)

# code -> HTTP status. The only place statuses are decided.
STATUS = {
    "invalid_json": 400,
    "invalid_request": 400,
    "image_failed": 400,
    "unknown_model": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "model_not_found": 404,
    "index_not_configured": 404,
    "item_not_found": 404,
    "thumbnail_not_found": 404,
    "method_not_allowed": 405,
    "index_read_only": 405,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "all_images_failed": 422,
    "all_items_failed": 422,
    "overloaded": 429,
    "rate_limited": 429,
    "client_disconnected": 499,  # nginx's code: nobody reads it, but the log line says what happened
    "internal_error": 500,
    "model_loading": 503,
    "model_unavailable": 503,
    "shutting_down": 503,
    "index_loading": 503,
    "search_unavailable": 503,
    "ingest_unavailable": 503,
    "timeout": 504,
}

# Werkzeug's HTTP errors that can reach us, by status.
_WERKZEUG_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                   413: "payload_too_large", 415: "unsupported_media_type", 429: "rate_limited"}


class ApiError(Exception):
    """Base of every error a client can receive. Subclasses fix ``code``; the status comes from STATUS."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        self.param = param  # the request field at fault, e.g. "texts[3]" (OpenAI's "param")

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def body(self) -> dict[str, Any]:
        """The native shape."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class InvalidJson(ApiError):
    code = "invalid_json"


class InvalidRequest(ApiError):
    code = "invalid_request"


class ImageFailed(ApiError):
    """An image of a request that cannot return partial results (the OpenAI route) failed."""

    code = "image_failed"


class Unauthorized(ApiError):
    code = "unauthorized"


class Forbidden(ApiError):
    code = "forbidden"


class NotFound(ApiError):
    code = "not_found"


class ModelNotFound(ApiError):
    code = "model_not_found"


class IndexNotConfigured(ApiError):
    code = "index_not_configured"


class ItemNotFound(ApiError):
    code = "item_not_found"


class ThumbnailNotFound(ApiError):
    code = "thumbnail_not_found"


class IndexReadOnly(ApiError):
    code = "index_read_only"


class IndexLoading(ApiError):
    code = "index_loading"


class SearchUnavailable(ApiError):
    code = "search_unavailable"


class MethodNotAllowed(ApiError):
    code = "method_not_allowed"


class PayloadTooLarge(ApiError):
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    code = "unsupported_media_type"


class AllImagesFailed(ApiError):
    code = "all_images_failed"


class AllItemsFailed(ApiError):
    code = "all_items_failed"


class ServiceOverloaded(ApiError):
    code = "overloaded"


class RateLimited(ApiError):
    """RATE_LIMIT reached for this client (flask-limiter adds Retry-After)."""

    code = "rate_limited"


class ClientDisconnected(ApiError):
    code = "client_disconnected"


class InternalError(ApiError):
    code = "internal_error"


class UnknownModelError(ApiError):
    code = "unknown_model"


class ModelLoading(ApiError):
    code = "model_loading"


class ModelUnavailable(ApiError):
    code = "model_unavailable"


class ShuttingDown(ApiError):
    code = "shutting_down"


class IngestUnavailable(ApiError):
    """A bucket event could not be indexed now (the model loading, Qdrant down, overload): the platform retries."""

    code = "ingest_unavailable"


class Timeout(ApiError):
    code = "timeout"


ERROR_TYPES: tuple[type[ApiError], ...] = tuple(ApiError.__subclasses__())
assert {t.code for t in ERROR_TYPES} == set(STATUS), "every code needs exactly one error type"


def to_api_error(exc: BaseException) -> ApiError:
    """Map any exception to the ApiError the client sees. Unknown exceptions become a bare internal_error."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPException):
        code = _WERKZEUG_CODES.get(exc.code or 500)
        if code == "payload_too_large":
            return PayloadTooLarge("the request body is larger than the limit (see GET / for limits)")
        if code == "rate_limited":
            return RateLimited(f"too many requests from this client: the limit is {exc.description}; retry after "
                               "the Retry-After header's seconds")
        if code is not None:
            error = next(t for t in ERROR_TYPES if t.code == code)(_plain(exc.description or exc.name))
            if exc.code == 405 and exc.response is None and getattr(exc, "valid_methods", None):
                error.headers["Allow"] = ", ".join(exc.valid_methods)
            return error
        return InternalError("the server could not handle this request")
    if isinstance(exc, Overloaded):
        return ServiceOverloaded("the service is busy; retry shortly",
                                 headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, UnknownModel):
        return UnknownModelError(str(exc), param="model")
    if isinstance(exc, NotReady):
        which = f"model {exc.model}" if exc.model else "the model"
        if exc.state in (ModelState.LOADING, ModelState.UNLOADED):
            return ModelLoading(f"{which} is still loading; retry shortly",
                                headers={"Retry-After": str(exc.retry_after_s)})
        return ModelUnavailable(f"{which} is not available")
    if isinstance(exc, EngineStopped):
        return ShuttingDown("the service is shutting down; retry", headers={"Retry-After": "1"})
    if isinstance(exc, RequestTimedOut):
        return Timeout("the request did not finish in time")
    if isinstance(exc, ClientGone):
        return ClientDisconnected("the client closed the connection before the answer was ready")
    if isinstance(exc, search_errors.SearchError):
        return _search_error(exc)
    return InternalError("internal error")


def _search_error(exc: search_errors.SearchError) -> ApiError:
    if isinstance(exc, NotOpen):
        if exc.state is State.LOADING:
            return IndexLoading("the search index is still opening; retry shortly", headers={"Retry-After": "2"})
        retry = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if exc.retry_after_s else {}
        return SearchUnavailable(exc.message, headers=retry)
    if isinstance(exc, search_errors.Unavailable):
        return SearchUnavailable(exc.message, headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, search_errors.BackendTimeout):
        return Timeout(exc.message)
    kind = {search_errors.BadQuery: InvalidRequest, search_errors.ItemNotFound: ItemNotFound,
            search_errors.ReadOnly: IndexReadOnly}.get(type(exc), InternalError)
    return kind(exc.message, param=exc.param)


ErrorShape = Callable[[ApiError], dict[str, Any]]


def native_shape(error: ApiError) -> dict[str, Any]:
    return error.body()


@dataclass
class ErrorShapes:
    """Which shape a request's errors take: its route's protocol's, else that of the protocol whose path
    prefix it falls under (an unknown path below /v1/ still gets OpenAI's), else the native one."""

    by_endpoint: dict[str, ErrorShape] = field(default_factory=dict)
    by_prefix: dict[str, ErrorShape] = field(default_factory=dict)

    def for_current_request(self) -> ErrorShape:
        shape = self.by_endpoint.get(request.endpoint or "")
        if shape is not None:
            return shape
        return next((s for prefix, s in self.by_prefix.items() if request.path.startswith(prefix)), native_shape)


_SHAPES = "clipserve.error_shapes"


def error_response(error: ApiError) -> Response:
    shapes: ErrorShapes | None = current_app.extensions.get(_SHAPES) if has_request_context() else None
    shape = shapes.for_current_request() if shapes is not None else native_shape
    response = jsonify(shape(error))
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask, shapes: ErrorShapes | None = None) -> None:
    """Route every exception through ``to_api_error``, written in ``shapes``; log the unexpected ones with their
    traceback."""
    app.extensions[_SHAPES] = shapes or ErrorShapes()

    @app.errorhandler(Exception)
    def _handle(exc: Exception) -> Response:
        error = to_api_error(exc)
        if isinstance(error, InternalError):
            log.error("unhandled error", exc_info=exc)
        elif isinstance(error, Timeout):
            log.warning("request timed out: %s", exc)
        return error_response(error)


def _plain(text: str) -> str:
    # Werkzeug descriptions are short sentences, sometimes with HTML-ish markup; keep the text only.
    return " ".join(text.replace("<", "").replace(">", "").split())[:300]
