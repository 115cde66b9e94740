"""infra/smoke.sh: passes against the real service (gunicorn + tiny bundle), fails against a broken one.

The broken services are a small fake that answers like clipserve, with one fault switched on:
a wrong dimension, an error status, an unhealthy /health. The fake is first shown to pass when
no fault is on, so each failure is the fault's doing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from deploy_support import REPO, stage_named, unused_port  # noqa: F401 (unused_port is a fixture)

SMOKE = REPO / "infra" / "smoke.sh"
START_TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None,
                                reason="smoke.sh needs bash and curl")


def run_smoke(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SMOKE), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


# ---------------------------------------------------------------- a local image to fetch by URL

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x08\x00\x00\x00\x08\x08\x02\x00\x00\x00Km)\xdc\x00"
       b"\x00\x00\x19IDATx\xdacd`hP``\xc0D,\x0c\n\x0cX\xc1\xe0\x94\x00\x00ho\x02^v|c\x97\x00\x00\x00\x00IEND"
       b"\xaeB`\x82")


class _Serve(ThreadingHTTPServer):
    daemon_threads = True


def start_server(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = _Serve(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


class _Image(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_url() -> Iterator[str]:
    server = start_server(_Image)
    yield f"{url_of(server)}/cat.png"
    server.shutdown()


# ---------------------------------------------------------------- the real service

@pytest.fixture(scope="module")
def real_service(tiny_model_dir) -> Iterator[tuple[str, int]]:
    """The image's start command (ENTRYPOINT + CMD as the Dockerfile declares them: preflight, then
    gunicorn with the production config) on a tiny english bundle: (url, dim)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "MODEL_VARIANT": "english", "PORT": str(port),
           "ALLOW_PRIVATE_URLS": "true", "HTTP_THREADS": "4"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the image's venv comes first
    runtime = stage_named("runtime")
    command = [*json.loads(next(a for k, a in runtime if k == "ENTRYPOINT")),
               *json.loads(next(a for k, a in runtime if k == "CMD"))]
    assert command[0] == "python"
    process = subprocess.Popen([sys.executable, *command[1:]], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"gunicorn did not become healthy: {process.stderr.read()[-3000:]}")
        time.sleep(0.3)
    dim = json.loads((tiny_model_dir / "english" / "manifest.json").read_text())["dim"]
    yield url, dim
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_smoke_passes_against_the_real_service(real_service, image_url):
    url, dim = real_service
    result = run_smoke(url, "--image-url", image_url, "--expect-dim", str(dim))
    assert result.returncode == 0, result.stdout + result.stderr
    checks = re.findall(r"^ok   (\S+)", result.stdout, re.M)
    assert checks == ["health", "info", "text", "image", "image", "image", "mixed", "score", "invalid"]
    assert f"dimension {dim}" in result.stdout


def test_smoke_catches_the_wrong_variant(real_service, image_url):
    url, dim = real_service
    result = run_smoke(url, "--image-url", image_url, "--expect-dim", str(dim + 1))
    assert result.returncode == 1
    assert f"the model has dimension {dim}, expected {dim + 1}" in result.stderr


# ---------------------------------------------------------------- a fake service with faults

class FakeClip(BaseHTTPRequestHandler):
    """Answers like clipserve (dim 8). Class attributes switch faults on; `seen` records headers."""

    dim = 8
    wrong_dim_on: str | None = None
    error_on: str | None = None
    unhealthy = False
    seen: list[dict[str, str]] = []

    def do_GET(self):  # noqa: N802
        self.seen.append(dict(self.headers))
        if self.path == "/health":
            return self.reply(503 if self.unhealthy else 200, {"status": "loading" if self.unhealthy else "ok"})
        if self.path == "/":
            return self.reply(200, {"service": "clipserve", "model": {"variant": "english", "dim": self.dim}})
        return self.reply(404, {"error": {"code": "not_found", "message": "no such path"}})

    def do_POST(self):  # noqa: N802
        self.seen.append(dict(self.headers))
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == self.error_on:
            return self.reply(500, {"error": {"code": "internal_error", "message": "boom"}})
        if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            images = raw.count(b'name="images"')
            texts = raw.count(b'name="texts"')
        else:
            body = json.loads(raw)
            images, texts = len(body.get("images", [])), len(body.get("texts", []))
            if "texts" in body and not texts:
                return self.reply(400, {"error": {"code": "invalid_request", "message": "texts: too short"}})
        vec = [0.125] * (self.dim - 1 if self.path == self.wrong_dim_on else self.dim)
        answers = {
            "/embed/text": {"embeddings": [vec] * texts, "truncated": []},
            "/embed/image": {"embeddings": [vec] * images, "errors": []},
            "/embed/mixed": {"text_embeddings": [vec] * texts, "image_embeddings": [vec] * images, "errors": []},
            "/score": {"pairwise": False, "cosine": [[0.2] * texts] * images, "errors": []},
        }
        self.reply(200, {"model": {"variant": "english", "architecture": "fake"}, "dim": self.dim,
                         **answers[self.path]})

    def reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_service():
    """fake_service(**faults) -> (url, seen headers)."""
    servers = []

    def start(**faults: Any) -> tuple[str, list[dict[str, str]]]:
        seen: list[dict[str, str]] = []
        server = start_server(type("Fake", (FakeClip,), {**faults, "seen": seen}))
        servers.append(server)
        return url_of(server), seen

    yield start
    for server in servers:
        server.shutdown()


def test_the_fake_passes_without_faults(fake_service, image_url):
    url, _ = fake_service()
    result = run_smoke(url, "--image-url", image_url)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path,check", [("/embed/text", "text"), ("/embed/image", "image by"),
                                        ("/embed/mixed", "mixed")])
def test_smoke_fails_on_a_wrong_dimension(fake_service, image_url, path, check):
    url, _ = fake_service(wrong_dim_on=path)
    result = run_smoke(url, "--image-url", image_url)
    assert result.returncode == 1, result.stdout
    assert re.search(rf"^FAIL {check}.*dimension 8", result.stderr, re.M), result.stderr
    assert "0.125" in result.stderr, "the failing response must be shown"


def test_smoke_fails_on_an_error_status_and_shows_it(fake_service, image_url):
    url, _ = fake_service(error_on="/score")
    result = run_smoke(url, "--image-url", image_url)
    assert result.returncode == 1
    assert "FAIL score: expected HTTP 200, got 500" in result.stderr
    assert '"message": "boom"' in result.stderr
    assert "ok   mixed" in result.stdout and "ok   score" not in result.stdout, "must stop at the first failure"


def test_smoke_fails_when_unhealthy(fake_service, image_url):
    url, _ = fake_service(unhealthy=True)
    result = run_smoke(url, "--image-url", image_url)
    assert result.returncode == 1
    assert "FAIL health: expected HTTP 200, got 503" in result.stderr


def test_smoke_fails_when_nothing_answers(unused_port):
    result = run_smoke(f"http://127.0.0.1:{unused_port}", "--max-time", "5")
    assert result.returncode == 1
    assert "got 000" in result.stderr


def test_identity_token_goes_on_every_request(fake_service, image_url):
    url, seen = fake_service()
    result = run_smoke(url, "--image-url", image_url, "--token", "id-token-123")
    assert result.returncode == 0, result.stderr
    assert seen and all(h.get("Authorization") == "Bearer id-token-123" for h in seen)


def test_api_key_with_token_moves_the_token_to_the_serverless_header(fake_service, image_url):
    url, seen = fake_service()
    result = run_smoke(url, "--image-url", image_url, "--token", "id-token", "--api-key", "key-1")
    assert result.returncode == 0, result.stderr
    assert all(h.get("Authorization") == "Bearer key-1" for h in seen)
    assert all(h.get("X-Serverless-Authorization") == "Bearer id-token" for h in seen)


def test_aws_sigv4_signs_every_request(fake_service, image_url):
    url, seen = fake_service()
    creds = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "sess"}
    result = run_smoke(url, "--image-url", image_url, "--aws-sigv4", "eu-west-1", env=creds)
    assert result.returncode == 0, result.stderr
    for headers in seen:
        assert re.match(r"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/\d{8}/eu-west-1/lambda/aws4_request, "
                        r"SignedHeaders=\S+, Signature=[0-9a-f]{64}$", headers.get("Authorization", "")), headers
        assert headers.get("x-amz-security-token") == "sess"


def test_aws_sigv4_without_credentials_is_a_usage_error(fake_service):
    url, seen = fake_service()
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    result = run_smoke(url, "--aws-sigv4", "eu-west-1", env=env)
    assert result.returncode == 2 and "AWS_ACCESS_KEY_ID" in result.stderr
    assert seen == []


@pytest.mark.parametrize("args", [[], ["http://x", "http://y"], ["http://x", "--wait", "soon"],
                                  ["http://x", "--bogus"]])
def test_bad_usage_exits_2(args):
    result = run_smoke(*args)
    assert result.returncode == 2, result.stderr
