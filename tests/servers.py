"""The production server for tests anywhere under tests/: gunicorn -c infra/gunicorn.conf.py on a loopback port.

(tests/ is on sys.path for every test: pytest puts the root conftest's folder there.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
REQUIRE_TOOLS = os.environ.get("CLIPSERVE_REQUIRE_TOOLS") == "1"


def need_tool(name: str) -> str:
    """The path of a system tool, or a skip (a failure in CI) naming how to install it."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install it; .ci/run does)"
        if REQUIRE_TOOLS:
            pytest.fail(message)
        pytest.skip(message)
    return path


# Startup on a loaded 2-core machine: importing torch and building the tiny model can take a while.
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GunicornServer:
    """The production command (gunicorn -c infra/gunicorn.conf.py handler.wsgi:app) on a free loopback port."""

    def __init__(self, model_dir: Path, log_path: Path, port: int | None = None, **env: str) -> None:
        """``port``: a given one (a test that restarts the service on the same address), else a free one."""
        self.port = port or free_port()
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


class RedisServer:
    """Debian's redis-server on a free loopback port, no disk writes; one per test session (tests/conftest.py).
    Tests may stop it, kill it and start it again on the same port."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def cli(self, *args: str) -> str:
        result = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return result.stdout.strip()

    def reset(self) -> None:
        """Empty, with the defaults tests change (memory limits) restored."""
        if self.proc is None or self.proc.poll() is not None or self.cli("PING") != "PONG":
            self.resume()
            if self.proc is None or self.proc.poll() is not None:
                self.start()
        self.cli("CONFIG", "SET", "maxmemory", "0")
        self.cli("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        self.cli("FLUSHALL")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(10)
