"""Helpers for the API tests: small images in any format, and a loopback HTTP server with hostile routes."""

from __future__ import annotations

import base64
import http.server
import io
import socket
import socketserver
import threading
import time
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), mode: str = "RGB",
                color: tuple[int, ...] | int = (200, 30, 30)) -> bytes:
    """A small solid image with a gradient stripe, so different images give different embeddings."""
    image = Image.new(mode, size, color)
    if mode in ("RGB", "RGBA"):
        for x in range(size[0]):
            image.putpixel((x, size[1] // 2), (x * 4 % 256, 255 - x * 4 % 256, 90) + ((255,) if mode == "RGBA" else ()))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, subtype: str = "png") -> str:
    return f"data:image/{subtype};base64,{b64(data)}"


def animated_gif(frames: int = 3, size: int = 32) -> bytes:
    """Frames of different colours: the first is red."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [Image.new("RGB", (size, size), colours[i % 3]) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=10, loop=0)
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (the pixels themselves are not there)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /img.png /img.jpg /delay?s=SECONDS /redirect?to=URL /status?code=N /big /trickle /stream /never /bigheader."""

    server: "ImageServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.hits.append(self.path)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        route = getattr(self, "_route_" + url.path.strip("/").replace(".", "_"), None)
        if route is None:
            return self._send(404, b"not found", "text/plain")
        return route(query)

    def _send(self, status: int, body: bytes, ctype: str = "image/png", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _route_img_png(self, query) -> None:
        self._send(200, self.server.png)

    def _route_img_jpg(self, query) -> None:
        self._send(200, self.server.jpg, "image/jpeg")

    def _route_delay(self, query) -> None:
        self.server.stop.wait(float(query["s"][0]))
        self._send(200, self.server.png)

    def _route_redirect(self, query) -> None:
        self._send(int(query.get("code", ["302"])[0]), b"", "text/plain", {"Location": query["to"][0]})

    def _route_status(self, query) -> None:
        self._send(int(query["code"][0]), b"nope", "text/plain")

    def _route_big(self, query) -> None:
        # Declares a huge body: the client must refuse it from the header alone.
        self.send_response(200)
        self.send_header("Content-Length", str(10 ** 10))
        self.end_headers()
        self._drip(b"\0" * 1024, 0.05)

    def _route_stream(self, query) -> None:
        # No length, chunks as fast as possible, forever (until the client hangs up or the test ends).
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self._drip(b"\0" * 65536, 0)

    def _route_trickle(self, query) -> None:
        # One byte every 50 ms with a plausible length: only a total deadline stops this.
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self._drip(b"x", 0.05)

    def _route_never(self, query) -> None:
        self.server.stop.wait(30)  # accept, read the request, never answer

    def _drip(self, piece: bytes, pause: float) -> None:
        deadline = time.monotonic() + 30
        try:
            while not self.server.stop.is_set() and time.monotonic() < deadline:
                self.wfile.write(piece)
                self.wfile.flush()
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the client gave up: that is the point


class ImageServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.hits: list[str] = []
        self.stop = threading.Event()
        self.png = image_bytes("PNG")
        self.jpg = image_bytes("JPEG", color=(20, 140, 220))

    def handle_error(self, request, client_address) -> None:
        pass  # clients hanging up (or failing TLS) on purpose is what these tests do

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@contextmanager
def serve_images(host: str = "127.0.0.1") -> Iterator[ImageServer]:
    server = ImageServer(host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def build_text_index(model_dir, root, texts: list[str], model: str = "english"):
    """An index version folder of `texts` (ids sku-0, sku-1, ...) built by the real `clipserve-batch index build`."""
    import csv

    from batch.cli import main

    with (root / "items.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([f"sku-{i}", text] for i, text in enumerate(texts))
    assert main(["index", "build", "--input", str(root / "items.csv"), "--output", str(root / "idx" / "v1"),
                 "--local", "--model-dir", str(model_dir), "--model", model]) == 0
    return root / "idx" / "v1"
