"""What can go wrong in search, as exceptions the HTTP layer maps to status codes (handler/errors.py)."""

from __future__ import annotations


class SearchError(Exception):
    """Base class; ``param`` names the request field at fault, where there is one."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadQuery(SearchError):
    """The query cannot run as given (400): wrong vector length, unknown filter key, wrong value type, ..."""


class ItemNotFound(SearchError):
    """An ``id`` that the index does not hold (404)."""


class ReadOnly(SearchError):
    """A write against a backend that cannot take writes (405): the FAISS index is rebuilt, not edited."""


class Unavailable(SearchError):
    """The backend cannot answer now (503): a search server refusing connections or failing."""

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendTimeout(SearchError):
    """The backend did not answer in time (504)."""


class IndexUnusable(RuntimeError):
    """The configured index cannot be served (checked at start): missing or edited files, an unknown
    format, or built with another model. The service refuses to start with this message."""
