"""Graceful shutdown: SIGTERM while requests stream in; every request the server accepted completes with 200,
and gunicorn exits within its grace period (8 s, inside Cloud Run's 10 s).

"Accepted" is proven three ways, none of them only for one kind of request:
- image URL requests: the server started fetching the URL;
- every request: its X-Request-ID appears in a request line of the server's JSON log (the app answered it),
  so the client must have received that answer, and it must be 200;
- every request sent well before SIGTERM (by ACCEPT_MARGIN_S): the worker was accepting then. Text and inline
  image requests upload their body in two halves, UPLOAD_PAUSE_S apart, so many of them are mid-request
  when SIGTERM arrives instead of finishing in a few milliseconds before it.
A request sent just before or after SIGTERM may be refused or reset (no HTTP response): never answered with an error.
"""

from __future__ import annotations

import http.client
import itertools
import json
import signal
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from ops_support import GunicornServer, b64, image_bytes, url_server

GRACE_S = 8.0           # infra/gunicorn.conf.py graceful_timeout
FETCH_DELAY_S = 1.5     # each image URL answers after this long: requests are mid-flight at SIGTERM
UPLOAD_PAUSE_S = 1.0    # text/inline bodies arrive in two halves this far apart: mid-flight at SIGTERM too
# A request sent this long before SIGTERM was accepted: connect + accept on loopback takes milliseconds.
ACCEPT_MARGIN_S = 0.5
CLIENTS = 6


@dataclass
class Outcome:
    kind: str
    ident: str              # also its X-Request-ID
    started: float
    ended: float
    status: int | None      # None: no HTTP response (connection refused/reset)
    error: str = ""


def test_sigterm_finishes_accepted_requests_and_exits_in_time(tiny_model_dir, tmp_path):
    with url_server(image_bytes(seed=5)) as urls:
        server = GunicornServer(tiny_model_dir, tmp_path / "server.log", ALLOW_PRIVATE_URLS="1",
                                FETCH_TIMEOUT_S="10", REQUEST_TIMEOUT_S="30")
        try:
            server.wait_healthy()
            outcomes, sigterm_at, exited_at = _stream_requests_and_terminate(server, urls.base)
        finally:
            server.stop()
        fetched = {path.split("id=")[1].split("&")[0] for path in urls.hits if "id=" in path}

    by_ident = {o.ident: o for o in outcomes}
    assert len(by_ident) == len(outcomes)
    answered = [o for o in outcomes if o.status is not None]
    # Nothing the server answered was an error: no 503 "shutting down", no 500, no cut-off 502.
    assert [o.status for o in answered if o.status != 200] == [], [o for o in answered if o.status != 200][:3]
    # Every image request whose URL the server started fetching (so: accepted) completed with 200.
    assert fetched, "no image request reached the server"
    assert all(by_ident[i].status == 200 for i in fetched), [by_ident[i] for i in fetched if by_ident[i].status != 200]
    # Every request the app answered (its id is in a request line of the log) reached its client as a 200.
    logged = _logged_statuses(server.log_text())
    assert len(logged) >= len(answered), "request lines missing from the server log"
    lost = [(i, status, by_ident[i].status if i in by_ident else "unknown id") for i, status in logged.items()
            if i not in by_ident or not status == by_ident[i].status == 200]
    assert lost == [], lost[:3]
    # Every request sent while the worker was surely still accepting completed with 200, whatever its kind.
    early = [o for o in outcomes if o.started < sigterm_at - ACCEPT_MARGIN_S]
    assert [o for o in early if o.status != 200] == []
    # The test means something: requests of every kind were in flight when SIGTERM arrived, and finished after it.
    in_flight = [o for o in answered if o.started < sigterm_at < o.ended]
    assert len(in_flight) >= 2, f"only {len(in_flight)} requests spanned the SIGTERM"
    spanning = {o.kind for o in early if o.ended > sigterm_at}
    assert {"text", "inline"} & spanning and "url" in spanning, f"only {spanning} requests spanned the SIGTERM"
    # After SIGTERM new connections are refused rather than accepted and dropped.
    assert any(o.status is None and o.started > sigterm_at for o in outcomes)
    assert exited_at - sigterm_at <= GRACE_S + 2, f"exit took {exited_at - sigterm_at:.1f} s"
    assert server.proc.returncode == 0
    assert "Shutting down: Master" in server.log_text()
    print(f"\n{len(outcomes)} requests, {len(in_flight)} in flight at SIGTERM (all 200; kinds "
          f"{sorted(spanning)}), {sum(o.status is None for o in outcomes)} refused after it, "
          f"exit {exited_at - sigterm_at:.1f} s after SIGTERM")


def _logged_statuses(log_text: str) -> dict[str, int]:
    """request_id -> status of every /embed request line in the server's JSON log."""
    statuses: dict[str, int] = {}
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and str(entry.get("route", "")).startswith("/embed") and "request_id" in entry:
            statuses[entry["request_id"]] = entry["status"]
    return statuses


def _post_in_two_halves(base_url: str, path: str, body: bytes, request_id: str) -> int:
    """POST ``body`` as JSON: headers and the first half at once, the rest UPLOAD_PAUSE_S later; the status."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("Connection", "close"), ("X-Request-ID", request_id)):
            conn.putheader(name, value)
        half = len(body) // 2
        conn.endheaders(body[:half])
        time.sleep(UPLOAD_PAUSE_S)
        conn.send(body[half:])
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _stream_requests_and_terminate(server: GunicornServer, image_base: str):
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop_sending = threading.Event()
    counter = itertools.count()
    text_body = json.dumps({"texts": ["a photo of a cat", "a diagram"]}).encode()
    inline_body = json.dumps({"images": [b64(image_bytes(seed=6))]}).encode()

    def client(n: int) -> None:
        while not stop_sending.is_set():
            i = next(counter)
            kind = ("url", "text", "inline")[i % 3]
            ident = f"{kind}-{i}"
            started = time.monotonic()
            try:
                if kind == "url":
                    # A fresh connection per request: no reuse of a kept-alive socket the server is closing.
                    body = {"images": [f"{image_base}/img?id={ident}&delay={FETCH_DELAY_S}"]}
                    r = requests.post(server.url + "/embed/image", json=body, timeout=30,
                                      headers={"Connection": "close", "X-Request-ID": ident})
                    status = r.status_code
                else:
                    path, body_bytes = ("/embed/text", text_body) if kind == "text" else ("/embed/image", inline_body)
                    status = _post_in_two_halves(server.url, path, body_bytes, ident)
                error = ""
            except (requests.RequestException, OSError, http.client.HTTPException) as exc:
                status, error = None, type(exc).__name__
                time.sleep(0.05)
            with lock:
                outcomes.append(Outcome(kind, ident, started, time.monotonic(), status, error))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(3.0)  # steady stream, several URL fetches and half-sent bodies in flight
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(2.0)  # keep knocking while it drains
    stop_sending.set()
    server.proc.wait(GRACE_S + 10)
    exited_at = time.monotonic()
    for t in threads:
        t.join(35)
    return outcomes, sigterm_at, exited_at
