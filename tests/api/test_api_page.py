"""The browser's pages without a browser: /ui and /docs under the Content-Security-Policy, their files from the
package (nothing from a CDN), open without a key while the API stays keyed, UI_ENABLED, GET /'s links."""

from __future__ import annotations

import re

import pytest

from handler.protocols.page import CSP

KEY = "page-test-key"


@pytest.mark.parametrize("path", ["/ui", "/docs"])
def test_the_pages_send_the_csp_and_load_only_their_own_files(apps, path):
    client = apps().test_client()
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == CSP
    assert "default-src 'none'" in CSP and "connect-src 'self'" in CSP and "script-src 'self'" in CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.get_data(as_text=True)
    assert "<script>" not in html and " style=" not in html  # nothing inline: the CSP would block it
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references and not [r for r in references if re.match(r"(https?:)?//", r)]
    for ref in references:
        if not ref.startswith(("data:", "#")):
            assert client.get("/" + ref).status_code == 200, ref


def test_the_swagger_ui_files_come_from_the_package(apps):
    client = apps().test_client()
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.mimetype == "text/javascript"
    assert b"SwaggerUIBundle" in bundle.data and len(bundle.data) > 500_000
    assert client.get("/docs/swagger-ui.css").mimetype == "text/css"
    assert client.get("/docs/../handler/app.py").status_code == 404
    missing = client.get("/ui/secrets.txt")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"


def test_with_keys_on_the_pages_open_without_one_and_the_api_does_not(apps):
    client = apps(api_keys=KEY).test_client()
    for path in ("/ui", "/ui/app.js", "/ui/style.css", "/docs", "/docs/docs.js", "/docs/swagger-ui-bundle.js"):
        assert client.get(path).status_code == 200, path
    for path in ("/", "/openapi.json"):
        assert client.get(path).status_code == 401, path
    assert client.post("/embed/text", json={"texts": ["x"]}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_ui_enabled_false_removes_the_playground_only(apps):
    client = apps(ui_enabled=False).test_client()
    assert client.get("/ui").status_code == 404
    assert client.get("/ui/app.js").status_code == 404
    assert client.get("/docs").status_code == 200
    info = client.get("/").get_json()
    assert "playground" not in info["links"] and "GET /ui" not in info["endpoints"]


def test_get_root_links_the_pages_and_lists_api_routes_only(apps):
    info = apps().test_client().get("/").get_json()
    assert info["links"] == {"playground": "/ui", "docs": "/docs", "openapi": "/openapi.json"}
    assert "GET /ui" in info["endpoints"] and "GET /items/{item_id}/thumbnail" in info["endpoints"]
    assert not [e for e in info["endpoints"] if e.startswith(("GET /ui/", "GET /docs/"))]


def test_openapi_names_the_thumbnail_path_parameter(apps):
    spec = apps().test_client().get("/openapi.json").get_json()
    op = spec["paths"]["/items/{item_id}/thumbnail"]["get"]
    assert op["parameters"] == [{"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert "404" in op["responses"]
    assert not [p for p in spec["paths"] if p.startswith(("/ui/", "/docs/"))]
