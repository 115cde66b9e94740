"""A Qdrant server that is down, slow or failing, through the real code path a URL takes (qdrant-client over
HTTP): /search answers 503 search_unavailable (with Retry-After) or 504, never hangs or shows internals, and the
embedding routes and /health stay at 200.

The stand-in speaks enough of Qdrant's REST API for the boot check (collection exists, its info with
clipserve's metadata, the point count) and answers queries late or with 500, as asked.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from handler.app import create_app
from infra.settings import Settings
from models.bundle import model_identity
from search import qdrant_index


class FakeQdrant(ThreadingHTTPServer):
    """`mode`: "slow" (queries answer after `delay_s`), "error" (queries 500), "broken" (everything 500)."""

    daemon_threads = True

    def __init__(self, collection_info: dict, mode: str, delay_s: float = 3.0) -> None:
        self.info, self.mode, self.delay_s = collection_info, mode, delay_s
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    server: FakeQdrant

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self) -> None:
        fake = self.server
        fake.paths.append(self.path)
        if fake.mode == "broken":
            return self._send(500, {"status": {"error": "Service internal error: disk on fire"}})
        if self.path.endswith("/exists"):
            return self._send(200, {"result": {"exists": True}})
        if self.path.endswith("/points/count"):
            return self._send(200, {"result": {"count": 3}})
        if "/points/query" in self.path:
            if fake.mode == "error":
                return self._send(500, {"status": {"error": "Service internal error: disk on fire"}})
            time.sleep(fake.delay_s)
            return self._send(200, {"result": {"points": []}})
        return self._send(200, {"result": fake.info})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps({"status": "ok", "time": 0.0, **body}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up first (the timeout test)


@pytest.fixture(scope="module")
def collection_info(tiny_model_dir, tmp_path_factory) -> dict:
    """What Qdrant answers for a clipserve collection: made by local mode, dumped as the REST API's JSON."""
    client = qdrant_index.connect(path=tmp_path_factory.mktemp("qinfo"))
    qdrant_index.create_collection(client, "items", model=model_identity(tiny_model_dir, "english"),
                                   modality="image", columns={"shop": "str"}, local=True)
    info = client.get_collection("items").model_dump(mode="json", exclude_none=True)
    client.close()
    return info


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def app_against(url: str, model_dir, timeout_s: float = 1.0):
    app = create_app(Settings(model_dir=model_dir, precision="fp32", qdrant_url=url, qdrant_collection="items",
                              qdrant_timeout_s=timeout_s))
    api = app.extensions["clipserve"]
    api.start()
    assert api.engine.wait_ready(120)
    api.search.wait(10)
    return app


def assert_embedding_routes_still_work(client) -> None:
    assert client.get("/health").status_code == 200
    assert client.post("/embed/text", json={"texts": ["a cat"]}).status_code == 200


@pytest.mark.parametrize("mode", ["refused", "broken"])
def test_a_qdrant_that_is_down_at_start_does_not_stop_the_service(tiny_model_dir, collection_info, mode):
    fake = None if mode == "refused" else FakeQdrant(collection_info, "broken")
    url = closed_port_url() if fake is None else fake.url
    app = app_against(url, tiny_model_dir)
    try:
        client = app.test_client()
        started = time.monotonic()
        response = client.post("/search", json={"vector": [0.1] * 32})
        assert time.monotonic() - started < 5
        assert response.status_code == 503 and response.json["error"]["code"] == "search_unavailable"
        assert int(response.headers["Retry-After"]) >= 1
        assert "Traceback" not in response.get_data(as_text=True) and "disk on fire" not in response.json["error"][
            "message"]
        assert_embedding_routes_still_work(client)
        assert client.get("/").json["search"]["state"] == "failed"
    finally:
        app.extensions["clipserve"].shutdown(1)
        if fake is not None:
            fake.shutdown()


def test_a_slow_qdrant_is_504_within_the_timeout(tiny_model_dir, collection_info):
    fake = FakeQdrant(collection_info, "slow", delay_s=4.0)
    app = app_against(fake.url, tiny_model_dir, timeout_s=1.0)
    try:
        client = app.test_client()
        assert client.get("/").json["search"]["state"] == "ready"  # the boot check passed
        started = time.monotonic()
        response = client.post("/search", json={"vector": [0.1] * 32})
        elapsed = time.monotonic() - started
        assert response.status_code == 504 and response.json["error"]["code"] == "timeout", response.json
        assert elapsed < 3.5, elapsed
        assert "QDRANT_TIMEOUT_S" in response.json["error"]["message"]
        assert_embedding_routes_still_work(client)
    finally:
        app.extensions["clipserve"].shutdown(1)
        fake.shutdown()


def test_a_qdrant_answering_500_is_503(tiny_model_dir, collection_info):
    fake = FakeQdrant(collection_info, "error")
    app = app_against(fake.url, tiny_model_dir)
    try:
        client = app.test_client()
        response = client.post("/search", json={"vector": [0.1] * 32})
        assert response.status_code == 503 and response.json["error"]["code"] == "search_unavailable"
        assert "answered 500" in response.json["error"]["message"] and "disk on fire" not in response.json["error"][
            "message"]
        assert "Retry-After" in response.headers
        assert_embedding_routes_still_work(client)
    finally:
        app.extensions["clipserve"].shutdown(1)
        fake.shutdown()
