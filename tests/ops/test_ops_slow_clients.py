"""Slow clients (slowloris): connections that send half a request and stop must not hold every request thread."""

from __future__ import annotations

import socket
import time

import requests

from ops_support import gunicorn

CLIENT_TIMEOUT_S = 2
THREADS = 2


def _stalled_connections(port: int) -> list[socket.socket]:
    """Twice as many stalled clients as request threads: half a header block, or headers and half a body."""
    stalled = []
    for i in range(2 * THREADS):
        c = socket.create_connection(("127.0.0.1", port))
        if i % 2:
            c.sendall(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"texts\": [")
        else:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        stalled.append(c)
    return stalled


def test_stalled_clients_are_dropped_and_the_server_keeps_answering(tiny_model_dir, tmp_path):
    with gunicorn(tiny_model_dir, tmp_path / "server.log", HTTP_THREADS=str(THREADS),
                  CLIENT_TIMEOUT_S=str(CLIENT_TIMEOUT_S)) as server:
        stalled = _stalled_connections(server.port)
        try:
            time.sleep(0.5)  # let the worker hand them to its threads
            started = time.monotonic()
            health = requests.get(server.url + "/health", timeout=CLIENT_TIMEOUT_S * 5)
            waited = time.monotonic() - started
            assert health.status_code == 200
            assert waited < CLIENT_TIMEOUT_S * 3, f"/health waited {waited:.1f} s behind stalled clients"
            r = requests.post(server.url + "/embed/text", json={"texts": ["after the stall"]}, timeout=30)
            assert r.status_code == 200
            # The server closed the stalled connections (a read on them ends instead of blocking).
            for c in stalled:
                c.settimeout(CLIENT_TIMEOUT_S * 3)
                try:
                    c.recv(65536)
                except ConnectionResetError:
                    pass
        finally:
            for c in stalled:
                c.close()
    entries = server.log_entries()
    dropped = [e for e in entries if e["message"].startswith("client stalled")]
    assert dropped and all(e["severity"] == "WARNING" for e in dropped)
    assert not [e for e in entries if e["severity"] == "ERROR"], "a stalled client is not a server error"
