"""What a browser opens: the playground (``GET /ui``, UI_ENABLED) and the API docs (``GET /docs``).

Both are static files inside the package (``handler/static/``; Swagger UI's from the swagger-ui-py
package), so the image needs no Node build and the pages work with no network. They are served without
an API key (the playground asks for one and sends it with every API call it makes) under a
Content-Security-Policy that lets them load and call nothing but this origin; result images may come
from http(s) URLs in an index's metadata and from ``blob:`` URLs of fetched thumbnails.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from flask import Response, send_from_directory

from handler.errors import NotFound
from handler.openapi import RouteDoc
from handler.protocols.common import Protocol, Route

STATIC = Path(__file__).resolve().parent.parent / "static"
SWAGGER_UI = Path(swagger_ui.__file__).resolve().parent / "static"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: http:; "
       "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# name -> the folder it is served from: nothing else under these paths is reachable
_UI_ASSETS = {"app.js": STATIC / "ui", "style.css": STATIC / "ui"}
_DOCS_ASSETS = {"docs.js": STATIC / "docs", "swagger-ui-bundle.js": SWAGGER_UI, "swagger-ui.css": SWAGGER_UI}
_ASSET_MAX_AGE_S = 300


class PageApi(Protocol):
    name = "page"

    def routes(self) -> list[Route]:
        routes = [
            Route(RouteDoc("/docs", "GET", "Interactive API documentation (HTML).", None), self.docs),
            Route(RouteDoc("/docs/<name>", "GET", "The docs page's files.", None, listed=False), self.docs_asset),
        ]
        if self.service.settings.ui_enabled:
            routes += [
                Route(RouteDoc("/ui", "GET", "The playground: search, zero-shot and embed in a browser (HTML).",
                               None), self.ui),
                Route(RouteDoc("/ui/<name>", "GET", "The playground's files.", None, listed=False), self.ui_asset),
            ]
        return routes

    def open_paths(self) -> set[str]:
        paths = {"/docs", *(f"/docs/{name}" for name in _DOCS_ASSETS)}
        if self.service.settings.ui_enabled:
            paths |= {"/ui", *(f"/ui/{name}" for name in _UI_ASSETS)}
        return paths

    def docs(self) -> Response:
        return _page(STATIC / "docs")

    def ui(self) -> Response:
        return _page(STATIC / "ui")

    def docs_asset(self, name: str) -> Response:
        return _asset(_DOCS_ASSETS, name)

    def ui_asset(self, name: str) -> Response:
        return _asset(_UI_ASSETS, name)


def _page(folder: Path) -> Response:
    response = send_from_directory(folder, "index.html", max_age=0)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-cache"
    return _hardened(response)


def _asset(assets: dict[str, Path], name: str) -> Response:
    folder = assets.get(name)
    if folder is None:
        raise NotFound(f"no file {name[:100]!r} here")
    return _hardened(send_from_directory(folder, name, max_age=_ASSET_MAX_AGE_S))


def _hardened(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
