"""Helpers for the ops tests: a minimal Flask app wired like the real one, and log capture."""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Iterator

from flask import Flask, request

from handler import auth, observability
from handler.errors import AllImagesFailed, register_error_handlers
from infra.logs import configure_logging
from infra.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def minimal_app(settings: Settings, engine: Any = None) -> Flask:
    """Observability and auth hooked in the same order as the service, around two toy views."""
    app = Flask("ops_test")
    register_error_handlers(app)
    observability.init_app(app, settings, engine)
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

import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402

import requests  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# Startup on a loaded 2-core machine: importing torch and building the tiny model can take a while.
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GunicornServer:
    """The production command (gunicorn -c infra/gunicorn.conf.py handler.wsgi:app) on a free loopback port."""

    def __init__(self, model_dir: Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environ = {k: v for k, v in os.environ.items() if k not in ("K_SERVICE", "API_KEYS", "API_KEYS_FILE")}
        environ.update({"MODEL_DIR": str(model_dir), "MODEL_VARIANT": "english", "PORT": str(self.port),
                        "HTTP_THREADS": "8", "TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        environ.update(env)
        self._log = open(log_path, "wb")
        # --bind overrides the config file's 0.0.0.0: tests stay on loopback.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}",
             "handler.wsgi:app"], cwd=REPO, env=environ, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gunicorn exited early:\n{self.log_text()[-3000:]}"
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not healthy within {timeout} s:\n{self.log_text()[-3000:]}")

    def worker_pid(self) -> int:
        import psutil

        [worker] = psutil.Process(self.proc.pid).children()
        return worker.pid

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_entries(self) -> list[dict[str, Any]]:
        """Every output line as JSON (a non-JSON line fails the caller's test here)."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@contextmanager
def gunicorn(model_dir: Path, log_path: Path, **env: str) -> Iterator[GunicornServer]:
    server = GunicornServer(model_dir, log_path, **env)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


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
