"""Helpers for the ops tests: a minimal Flask app wired like the real one, and log capture."""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Iterator

from flask import Flask, request

from handler import auth, cors, observability
from handler.errors import AllImagesFailed, register_error_handlers
from infra.logs import configure_logging
from infra.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def minimal_app(settings: Settings, engine: Any = None) -> Flask:
    """Observability and auth hooked in the same order as the service, around two toy views."""
    app = Flask("ops_test")
    register_error_handlers(app)
    observability.init_app(app, settings, engine)
    cors.init_app(app, settings)
    auth.init_app(app, settings)
    inner = logging.getLogger("ops_test.view")

    @app.post("/embed/text")
    def embed_text():  # noqa: ANN202
        texts = request.get_json()["texts"]
        observability.record_items(texts=len(texts))
        observability.record_batch(len(texts), 0.004)
        inner.info("encoding inside the view")
        return {"embeddings": [[0.0] for _ in texts]}

    @app.post("/embed/image")
    def embed_image():  # noqa: ANN202
        images = request.get_json()["images"]
        observability.record_items(images=len(images))
        observability.record_image_errors(["fetch_timeout"] + ["invalid_image"] * (len(images) - 1))
        raise AllImagesFailed(f"none of the {len(images)} images could be used")

    @app.get("/health")
    def health():  # noqa: ANN202
        return {"status": "ok"}

    return app


class LogCapture:
    """Routes the process's logging into a buffer through ``configure_logging``; restores the root logger after."""

    def __init__(self, settings: Settings) -> None:
        self.buffer = io.StringIO()
        root = logging.getLogger()
        self._saved = (list(root.handlers), root.level)
        configure_logging(settings, stream=self.buffer)

    def lines(self) -> list[dict[str, Any]]:
        """Every line parsed as JSON: a line that is not JSON fails the test right here."""
        return [json.loads(line) for line in self.buffer.getvalue().splitlines() if line.strip()]

    def request_lines(self) -> list[dict[str, Any]]:
        return [entry for entry in self.lines() if "route" in entry and "status" in entry]

    def close(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        handlers, level = self._saved
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def capture(settings: Settings) -> Iterator[LogCapture]:
    cap = LogCapture(settings)
    try:
        yield cap
    finally:
        cap.close()


# --- real servers on loopback ----------------------------------------------------------------------------

import threading  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402

from servers import READY_TIMEOUT_S, GunicornServer, free_port, gunicorn  # noqa: E402,F401 (shared)

REPO = Path(__file__).resolve().parents[2]


class _UrlHandler(BaseHTTPRequestHandler):
    """Routes: /img?id=X (a PNG, after ?delay=S), /never, /trickle, /stream, /status?code=N."""

    protocol_version = "HTTP/1.1"
    server: "UrlServer"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self.server.lock:
            self.server.hits.append(self.path)
        try:
            getattr(self, "_" + url.path.strip("/"), self._missing)(query)
        except OSError:
            pass  # the client hung up: expected for the hostile routes

    def _missing(self, query: dict[str, str]) -> None:
        self._send(404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _img(self, query: dict[str, str]) -> None:
        if "delay" in query:
            time.sleep(float(query["delay"]))
        self._send(200, self.server.png, "image/png")

    def _never(self, query: dict[str, str]) -> None:
        self.server.stopping.wait(60)

    def _trickle(self, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self._drip(b"\x89", 0.1)

    def _stream(self, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Connection", "close")
        self.end_headers()
        self._drip(b"\0" * 65536, 0)

    def _drip(self, piece: bytes, pause: float) -> None:
        deadline = time.monotonic() + 60
        while not self.server.stopping.is_set() and time.monotonic() < deadline:
            self.wfile.write(piece)
            self.wfile.flush()
            if pause:
                time.sleep(pause)


class UrlServer(ThreadingHTTPServer):
    """A loopback image host with hostile routes; ``hits`` records every path requested."""

    daemon_threads = True

    def __init__(self, png: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _UrlHandler)
        self.png = png
        self.hits: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.base = f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def url_server(png: bytes) -> Iterator[UrlServer]:
    server = UrlServer(png)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


# --- images ------------------------------------------------------------------------------------------------

def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    """A small noisy image: different seeds give different pixels (and so different embeddings)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")
