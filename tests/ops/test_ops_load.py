"""Load: 32 concurrent clients for 60 s of mixed text, image and score requests against a tiny-bundle gunicorn.

Zero 5xx, zero lost or misrouted responses (every vector is checked against the encoder's own output for
exactly what that request sent, and every X-Request-ID comes back to its sender), and the worker's RSS
after the run within 10% of its RSS after warm-up. The only long test: ``-m "not slow"`` skips it locally.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import psutil
import pytest
import requests

from inputs.decode import decode_image
from ops_support import b64, gunicorn, image_bytes

CLIENTS = 32
WARMUP_S = 8.0
LOAD_S = 60.0
ATOL = 1e-4          # batch composition changes float rounding, never more than this
RSS_GROWTH_LIMIT = 0.10


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"text": [], "image": [], "score": []})
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    transport_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)


class Workload:
    """Pools of texts and images with their expected embeddings, and the check of every response against them."""

    def __init__(self, encoder) -> None:  # noqa: ANN001
        self.texts = [f"load test sentence {i}: {w}" for i, w in
                      enumerate(["cat", "dog", "car", "tree", "boat", "city", "sea", "bird"] * 6)]
        blobs = [image_bytes("PNG", size=(24 + i, 20 + i), seed=100 + i) for i in range(12)]
        self.images = [b64(blob) for blob in blobs]
        self.text_vectors = encoder.encode_text(self.texts, normalize=True).embeddings
        tensors = [encoder.prepare_image(decode_image(blob, max_pixels=10**6)) for blob in blobs]
        self.image_vectors = encoder.encode_images(tensors, normalize=True)
        for name, pool in (("text", self.text_vectors), ("image", self.image_vectors)):
            gaps = np.abs(pool[:, None, :] - pool[None, :, :]).max(axis=2) + np.eye(len(pool))
            assert gaps.min() > 100 * ATOL, f"{name} pool vectors too close to tell apart"

    def request(self, rng: random.Random) -> tuple[str, str, dict, callable]:
        kind = rng.choice(("text", "text", "image", "score"))
        if kind == "text":
            idx = rng.sample(range(len(self.texts)), rng.randint(1, 8))
            return kind, "/embed/text", {"texts": [self.texts[i] for i in idx]}, \
                lambda body: self._rows(body["embeddings"], self.text_vectors, idx)
        if kind == "image":
            idx = rng.sample(range(len(self.images)), rng.randint(1, 3))
            return kind, "/embed/image", {"images": [self.images[i] for i in idx]}, \
                lambda body: self._rows(body["embeddings"], self.image_vectors, idx) if not body["errors"] \
                else f"image errors {body['errors']}"
        ti = rng.sample(range(len(self.texts)), 3)
        ii = rng.sample(range(len(self.images)), 2)
        expected = self.image_vectors[ii] @ self.text_vectors[ti].T
        return kind, "/score", {"texts": [self.texts[i] for i in ti], "images": [self.images[i] for i in ii]}, \
            lambda body: None if np.allclose(body["cosine"], expected, atol=ATOL) else "score cosine mismatch"

    @staticmethod
    def _rows(rows: list, pool: np.ndarray, idx: list[int]) -> str | None:
        got = np.asarray(rows, dtype=np.float32)
        if got.shape != (len(idx), pool.shape[1]):
            return f"shape {got.shape} for {len(idx)} items"
        if not np.allclose(got, pool[idx], atol=ATOL):
            nearest = [int(np.abs(pool - row).max(axis=1).argmin()) for row in got]
            return f"vectors do not match what was sent: sent {idx}, nearest {nearest}"
        return None


def _client(url: str, work: Workload, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    while time.monotonic() < until:
        kind, path, body, check = work.request(rng)
        rid = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            r = session.post(url + path, json=body, headers={"X-Request-ID": rid}, timeout=60)
        except requests.RequestException as exc:
            with tally.lock:
                tally.transport_errors += 1
            tally.fail(f"{kind}: {type(exc).__name__}")
            continue
        elapsed = time.perf_counter() - started
        with tally.lock:
            tally.statuses[r.status_code] = tally.statuses.get(r.status_code, 0) + 1
            tally.latencies[kind].append(elapsed)
        if r.status_code != 200:
            tally.fail(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
        elif r.headers.get("X-Request-ID") != rid:
            tally.fail(f"{kind}: response for another request id")
        else:
            problem = check(r.json())
            if problem:
                tally.fail(f"{kind}: {problem}")


def _run(url: str, work: Workload, seconds: float, seed: int) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(url, work, seed + n, until, tally), daemon=True)
               for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 90)
    assert not any(t.is_alive() for t in threads), "a client hung"
    return tally


def _rss(pid: int) -> int:
    time.sleep(1.0)  # let the last responses and their buffers go
    return psutil.Process(pid).memory_info().rss


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_32_clients_for_60_s_nothing_lost_or_misrouted_and_memory_flat(tiny_model_dir, english_encoder, tmp_path):
    work = Workload(english_encoder)
    with gunicorn(tiny_model_dir, tmp_path / "server.log", QUEUE_SIZE="4096", REQUEST_TIMEOUT_S="60") as server:
        pid = server.worker_pid()
        warm = _run(server.url, work, WARMUP_S, seed=1)
        assert not warm.failures, warm.failures[:5]
        rss_warm = _rss(pid)
        tally = _run(server.url, work, LOAD_S, seed=1000)
        rss_after = _rss(pid)
        assert server.worker_pid() == pid, "the worker was restarted during the run"

    total = sum(tally.statuses.values())
    lat = sorted(x for xs in tally.latencies.values() for x in xs)
    print(f"\nload: {total} requests in {LOAD_S:.0f} s ({total / LOAD_S:.1f} req/s) from {CLIENTS} clients; "
          f"by kind {({k: len(v) for k, v in tally.latencies.items()})}; statuses {tally.statuses}; "
          f"p50 {statistics.median(lat) * 1000:.0f} ms, p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.0f} ms; "
          f"worker RSS {rss_warm / 2**20:.0f} MiB after warm-up, {rss_after / 2**20:.0f} MiB after the run")
    assert tally.failures == [], f"{len(tally.failures)} failures, e.g. {tally.failures[:5]}"
    assert tally.transport_errors == 0
    assert set(tally.statuses) == {200}
    assert all(len(v) > 0 for v in tally.latencies.values())
    assert rss_after <= rss_warm * (1 + RSS_GROWTH_LIMIT), f"RSS grew from {rss_warm} to {rss_after}"
