"""The Lambda image's real entry, end to end: `python -m awslambdaric infra.lambda_handler.handler`
(what Terraform's image_config runs) against a fake Lambda Runtime API on loopback.

The fake serves the documented endpoints (GET .../invocation/next, POST .../{id}/response,
POST .../{id}/error, POST .../init/error), hands out one Function URL event and records what the
runtime posts back. The AWS Runtime Interface Emulator is not obtainable here; this is its role.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deploy_support import REPO

PREFIX = "/2018-06-01/runtime"
REQUEST_ID = "8f507cfc-example-4697-b07a-ac58fc914c95"
WAIT_S = 120


class FakeRuntimeApi:
    """Hands out the given events one by one, then holds the next poll until closed."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = list(events)
        self.posts: list[tuple[str, bytes]] = []
        self.done = threading.Event()
        self.closing = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404, b"{}")
                if not api.events:
                    api.closing.wait(WAIT_S)  # a real API long-polls; we just hold until the test ends
                    return self._reply(500, b"{}")
                event = api.events.pop(0)
                self._reply(200, json.dumps(event).encode(), {
                    "Lambda-Runtime-Aws-Request-Id": REQUEST_ID,
                    "Lambda-Runtime-Deadline-Ms": "9999999999999",
                    "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:123456789012:function:clipserve:live",
                    "Lambda-Runtime-Trace-Id": "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1",
                })

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                api.posts.append((self.path, body))
                self._reply(202, b'{"status":"OK"}')
                api.done.set()

            def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> "FakeRuntimeApi":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def run_runtime(api: FakeRuntimeApi, model_dir: Path, variant: str) -> tuple[list[tuple[str, bytes]], str]:
    """Start awslambdaric like Lambda does, wait for its first post, stop it: (posts, its log)."""
    env = {**os.environ, "AWS_LAMBDA_RUNTIME_API": api.address, "MODEL_DIR": str(model_dir),
           "MODEL_VARIANT": variant, "AWS_LAMBDA_FUNCTION_NAME": "clipserve",
           "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008", "AWS_LAMBDA_FUNCTION_VERSION": "1",
           "LAMBDA_TASK_ROOT": str(REPO), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "awslambdaric", "infra.lambda_handler.handler"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert api.done.wait(WAIT_S), "the runtime posted nothing back"
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    return api.posts, output


def test_awslambdaric_serves_a_function_url_invocation(tiny_model_dir):
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": "/embed/text", "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abc123.lambda-url.us-east-1.on.aws",
                    "x-forwarded-proto": "https"},
        "requestContext": {"http": {"method": "POST", "path": "/embed/text", "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
                           "requestId": REQUEST_ID, "stage": "$default", "domainName": "abc123.lambda-url"},
        "body": json.dumps({"texts": ["a photo of a cat", "a dog"]}), "isBase64Encoded": False,
    }
    with FakeRuntimeApi([event]) as api:
        posts, log = run_runtime(api, tiny_model_dir, "english")
    assert [path for path, _ in posts] == [f"{PREFIX}/invocation/{REQUEST_ID}/response"], log
    result = json.loads(posts[0][1])
    assert result["statusCode"] == 200, result
    body = json.loads(result["body"])
    manifest = json.loads((tiny_model_dir / "english" / "manifest.json").read_text())
    assert len(body["embeddings"]) == 2
    assert all(len(vector) == manifest["dim"] for vector in body["embeddings"])


def test_awslambdaric_reports_an_unbaked_variant_as_an_init_error(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir / "english", tmp_path / "english")
    with FakeRuntimeApi([{"version": "2.0"}]) as api:
        posts, log = run_runtime(api, tmp_path, "multilingual")
    assert [path for path, _ in posts] == [f"{PREFIX}/init/error"], log
    error = json.loads(posts[0][1])
    assert "MODEL_VARIANT=multilingual is not baked" in error["errorMessage"]
    assert "holds english" in error["errorMessage"]
