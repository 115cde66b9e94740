"""A small stand-in for the clipserve HTTP API (issue 3's request/response shapes) on loopback,
with scriptable trouble: 503 + Retry-After, 429, dropped connections, slowness, auth.

Vectors are a pure function of the input string, so a test can compute the expected answer
for any row without the server. Used where the client logic is under test; the real service
is exercised in test_batch_e2e.py.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

DIM = 8
BROKEN_IMAGE = base64.b64encode(b"not an image at all").decode()
REJECTED_TEXT = "REJECT-ME"  # a text the fake refuses with a whole-request 400
POISON_TEXT = "CRASH-ME"  # a text that makes the fake fail with a 500, every time


def fake_vector(value: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(value.encode()))
    v = rng.standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def fake_image_vector(image: str) -> np.ndarray:
    return fake_vector("image:" + image)


def fake_text_vector(text: str) -> np.ndarray:
    return fake_vector("text:" + text)


def fake_cosine(text: str, image: str) -> float:
    return float(np.dot(fake_image_vector(image), fake_text_vector(text)))


def _wire(vector: np.ndarray, fmt: str) -> Any:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


class FakeService:
    """Start with `with FakeService() as svc:`; `svc.url` is its base URL."""

    def __init__(self, delay_s: float = 0.0, token: str | None = None) -> None:
        self.delay_s = delay_s
        self.token = token
        self.script: deque[tuple[int, dict[str, str]] | str] = deque()  # answers before the real ones
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []  # of each POST, in arrival order
        self.times: list[float] = []  # time.monotonic() of each POST's arrival, in arrival order
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, {"variant": "fake", "architecture": "fake", "dim": DIM})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with service.lock:
                    service.requests.append((self.path, body))
                    service.headers.append(dict(self.headers.items()))
                    service.times.append(time.monotonic())
                    scripted = service.script.popleft() if service.script else None
                if scripted == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if scripted is not None:
                    status, headers = scripted
                    self._send(status, {"error": {"code": "overloaded", "message": "try later"}}, headers)
                    return
                if service.token and self.headers.get("Authorization") != f"Bearer {service.token}":
                    self._send(401, {"error": {"code": "unauthorized", "message": "bad token"}})
                    return
                if service.delay_s:
                    time.sleep(service.delay_s)
                status, answer = service.answer(self.path, body)
                self._send(status, answer)

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fmt = body.get("encoding_format", "float")
        texts = body.get("texts") or []
        images = body.get("images") or []
        if REJECTED_TEXT in texts:
            index = texts.index(REJECTED_TEXT)
            return 400, {"error": {"code": "invalid_request", "message": f"texts[{index}] is rejected"}}
        if POISON_TEXT in texts:
            return 500, {"error": {"code": "internal_error", "message": "the model call failed"}}
        errors = [
            {"index": i, "code": "invalid_image", "message": "not an image"}
            for i, im in enumerate(images)
            if im == BROKEN_IMAGE
        ]
        bad = {e["index"] for e in errors}
        if images and len(bad) == len(images) and not (path == "/embed/mixed" and texts):
            return 422, {"error": {"code": "all_images_failed", "message": "every image failed", "details": errors}}
        image_vectors = [None if i in bad else _wire(fake_image_vector(im), fmt) for i, im in enumerate(images)]
        text_vectors = [_wire(fake_text_vector(t), fmt) for t in texts]
        if path == "/embed/text":
            return 200, {"embeddings": text_vectors, "truncated": [], "model": "fake", "dim": DIM}
        if path == "/embed/image":
            return 200, {"embeddings": image_vectors, "errors": errors, "model": "fake", "dim": DIM}
        if path == "/embed/mixed":
            return 200, {
                "text_embeddings": text_vectors,
                "image_embeddings": image_vectors,
                "errors": errors,
                "truncated": [],
                "model": "fake",
                "dim": DIM,
            }
        if path == "/score" and body.get("pairwise"):
            cosines = [None if i in bad else fake_cosine(t, im) for i, (t, im) in enumerate(zip(texts, images))]
            scores = [None if c is None else max(100.0 * c, 0.0) for c in cosines]
            return 200, {"clip_score": scores, "cosine": cosines, "errors": errors, "model": "fake", "dim": DIM}
        return 404, {"error": {"code": "not_found", "message": path}}

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _ in self.requests]

    def __enter__(self) -> FakeService:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
