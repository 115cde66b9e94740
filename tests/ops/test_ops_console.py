"""What a person sees: `./serve.sh --demo` from a fresh start, at a real terminal (a pty), prints only clipserve's own
short lines ending with where to go; on Cloud Run, Lambda or a pipe the logs stay Cloud Logging's JSON."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from infra.logs import configure_logging
from infra.settings import Settings
from servers import free_port

REPO = Path(__file__).resolve().parents[2]
# clipserve's own lines: serve.sh's, its demo banner, and the service's text log lines ("12:04:05 message").
OURS = re.compile(r"^(serve\.sh: .*|#.*|\d\d:\d\d:\d\d .*)$")


class Terminal:
    """A command whose stdout and stderr are a pseudo-terminal, as when a person runs it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.text = ""

    def read_until(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s:\n{self.text[-3000:]}"
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.text[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    break
        return self.text

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        os.close(self.master)


def test_the_demo_from_a_fresh_start_prints_only_our_lines_and_where_to_go(tmp_path):
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "bundles"), "INDEXES_DIR": str(tmp_path / "indexes"),
           "TERM": "xterm"}
    for name in ("PRECISION", "RUNTIME", "LOG_FORMAT", "K_SERVICE", "AWS_LAMBDA_FUNCTION_NAME"):
        env.pop(name, None)  # as on a developer's machine
    terminal = Terminal(["./serve.sh", "--demo", "--port", str(port)], env)
    try:
        terminal.read_until(r"ready: .*", 300)
        base = f"http://127.0.0.1:{port}"
        for _ in range(3):
            assert requests.get(f"{base}/health", timeout=10).status_code == 200  # probes: not on the console
        assert requests.post(f"{base}/embed/text", json={"texts": ["a cat"]}, timeout=30).status_code == 200
        assert requests.post(f"{base}/embed/text", json={"texts": 5}, timeout=30).status_code == 400
        output = terminal.read_until(r"POST /embed/text 400 \d+ ms invalid_request", 30)
    finally:
        terminal.stop()
    lines = [line.rstrip("\r") for line in output.splitlines() if line.strip()]
    foreign = [line for line in lines if not OURS.match(line)]
    assert not foreign, "lines that are not clipserve's:\n" + "\n".join(foreign)
    assert not [line for line in lines if re.match(r"^\d\d:\d\d:\d\d (warning|error|critical) ", line)], output
    assert f"playground http://127.0.0.1:{port}/ui" in output and f"API docs http://127.0.0.1:{port}/docs" in output
    assert re.search(r"\d\d:\d\d:\d\d POST /embed/text 200 \d+ ms", output)
    assert "/health" not in output.split("ready:", 1)[1]
    assert not any(line.lstrip().startswith("{") for line in lines)  # no JSON at a terminal


def handler_output(settings: Settings, monkeypatch, tty: bool) -> str:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout.isatty", lambda: tty, raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(settings, stream=stream)
        logging.getLogger("clipserve.request").info("request", extra={"json_fields": {
            "method": "POST", "route": "/embed/text", "status": 200, "latency_ms": 12.3}})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    return stream.getvalue().strip()


@pytest.mark.parametrize("environ, tty, text", [
    ({}, True, True),                                                   # a person at a terminal
    ({}, False, False),                                                 # piped or redirected: machines read it
    ({"K_SERVICE": "clipserve"}, True, False),                          # Cloud Run
    ({"AWS_LAMBDA_FUNCTION_NAME": "clipserve"}, True, False),           # Lambda
    ({"LOG_FORMAT": "json"}, True, False),
    ({"LOG_FORMAT": "text", "K_SERVICE": "clipserve"}, False, True),
])
def test_log_format_auto_is_text_only_for_a_person_at_a_terminal(monkeypatch, environ, tty, text):
    out = handler_output(Settings.from_env(environ), monkeypatch, tty)
    if text:
        assert re.fullmatch(r"\d\d:\d\d:\d\d POST /embed/text 200 12 ms", out), out
    else:  # the last line (google-cloud-logging writes its instrumentation line first, once per process)
        entry = json.loads(out.splitlines()[-1])
        assert entry["route"] == "/embed/text" and entry["status"] == 200 and entry["severity"] == "INFO"
