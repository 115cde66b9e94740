"""The client's interface in process: the service without a server, for notebooks and GPU boxes.

    from handler.local import local_client
    with local_client(model_dir="./model_bundles", models="english,siglip2-b16") as clip:
        clip.embed_text(["a dog"]).vectors

``local_client`` builds the very app ``gunicorn`` serves (settings from the environment, then the keyword
overrides, validated the same way; bundle, device, precision and runtime chosen as the service chooses them) and
hands ``clipserve_client.Client`` an httpx transport that calls it in this process: no port, no network, the
same validation, batching, per-item errors and answers as the deployed service. Code moves between local and
remote by changing this one constructor for ``Client(url)``. ``local_async_client`` is the ``AsyncClient``
form (requests run on worker threads, so the event loop stays free).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx

from clipserve_client import AsyncClient, Client

_BASE_URL = "http://clipserve.local"
_READY_TIMEOUT_S = 600.0


def local_app(**overrides: Any) -> Any:
    """The service's Flask app with its model loaded: ``Settings.from_env()`` with ``overrides`` (field names, e.g.
    ``model_dir``, ``models``, ``precision``) applied."""
    from handler.app import create_app
    from infra.settings import Settings

    settings = dataclasses.replace(Settings.from_env(), **overrides)
    app = create_app(settings)
    engine = app.extensions["clipserve"].engine
    engine.start()
    if not engine.wait_ready(_READY_TIMEOUT_S):
        raise RuntimeError(f"the model did not load: {engine.load_error}")
    return app


class LocalClient(Client):
    """``Client`` over the in-process app; ``close()`` also stops its inference thread."""

    def __init__(self, app: Any, **client_options: Any) -> None:
        super().__init__(_BASE_URL, transport=httpx.WSGITransport(app=app), **client_options)
        self.app = app

    def close(self) -> None:
        super().close()
        self.app.extensions["clipserve"].engine.shutdown()


class LocalAsyncClient(AsyncClient):
    """``AsyncClient`` over the in-process app."""

    def __init__(self, app: Any, **client_options: Any) -> None:
        super().__init__(_BASE_URL, transport=_ThreadedWSGITransport(app), **client_options)
        self.app = app

    async def aclose(self) -> None:
        await super().aclose()
        self.app.extensions["clipserve"].engine.shutdown()


def local_client(*, concurrency: int = 4, model: str | None = None, **settings: Any) -> LocalClient:
    """A ``Client`` whose calls run the service in this process (see the module docstring)."""
    return LocalClient(local_app(**settings), concurrency=concurrency, model=model)


def local_async_client(*, concurrency: int = 4, model: str | None = None, **settings: Any) -> LocalAsyncClient:
    return LocalAsyncClient(local_app(**settings), concurrency=concurrency, model=model)


class _ThreadedWSGITransport(httpx.AsyncBaseTransport):
    """httpx has no async WSGI transport: run the sync one on a worker thread per request."""

    def __init__(self, app: Any) -> None:
        self._sync = httpx.WSGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        sync_request = httpx.Request(request.method, request.url, headers=request.headers, content=content)

        def call() -> tuple[int, httpx.Headers, bytes]:
            response = self._sync.handle_request(sync_request)
            return response.status_code, response.headers, response.read()

        status, headers, body = await asyncio.to_thread(call)
        return httpx.Response(status, headers=headers, content=body)
