"""A client that hangs up while its items wait for the model costs no forward pass (real gunicorn, raw sockets).

To hold a text in the batching window, another request must still be preparing its inputs (a batch waits
only then): an image URL that never answers keeps one doing so for FETCH_TIMEOUT_S.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import requests

from ops_support import gunicorn, image_bytes, url_server

# A long batching window holds a lone request's item on the inference thread, so the client can leave first.
WINDOW_MS = 1000


def text_batches(url: str) -> float:
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    match = re.search(r'^clipserve_batch_size_count\{kind="text"\} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


def send_and_hang_up(url: str, texts: list[str]) -> None:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"texts": texts}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.3)  # the request is read and queued; the batch window is still open


def test_hung_up_clients_items_are_dropped_before_the_model_runs(tiny_model_dir, tmp_path):
    with url_server(image_bytes()) as images, \
            gunicorn(tiny_model_dir, tmp_path / "server.log", BATCH_MAX_WAIT_MS=str(WINDOW_MS), BATCH_MAX_SIZE="64",
                     METRICS_ENABLED="true", TEXT_CACHE_SIZE="0", ALLOW_PRIVATE_URLS="true", FETCH_TIMEOUT_S="3",
                     FETCH_CONNECT_TIMEOUT_S="1") as server:
        stuck = threading.Thread(target=lambda: requests.post(f"{server.url}/embed/image", timeout=30,
                                                              json={"images": [f"{images.base}/never"]}))
        stuck.start()
        time.sleep(0.3)  # that request is now preparing (fetching) its image
        send_and_hang_up(server.url, ["a photo of a cat", "a dog"])
        time.sleep(WINDOW_MS / 1000 + 0.5)
        assert text_batches(server.url) == 0   # no model call for the request nobody waits for
        stuck.join(30)
        lines = [e for e in server.log_entries() if e.get("route") == "/embed/text"]
        assert [(e["status"], e.get("error_code")) for e in lines] == [(499, "client_disconnected")]
        # the service goes on as before
        answer = requests.post(f"{server.url}/embed/text", json={"texts": ["a cat"]}, timeout=30)
        assert answer.status_code == 200 and text_batches(server.url) == 1
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
