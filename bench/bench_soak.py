"""Soak/load benchmark: N concurrent clients of mixed text, image and score requests for a fixed time.

Reports throughput, latency percentiles per kind, every non-200 status, responses that disagree with an
earlier answer for the same input (lost or misrouted results show up here), and, when it starts the
server itself, the worker's RSS after warm-up and after the run.

    # against a server it starts (the production gunicorn command, loopback only):
    python bench/bench_soak.py --model-dir /models --variant english --clients 32 --duration 60
    # against a running server:
    python bench/bench_soak.py --url http://127.0.0.1:8080 --clients 32 --duration 60
    # memory under a burst of large images (4 requests x 4 images of 40 MP), peak worker RSS:
    python bench/bench_soak.py --model-dir /models --large-image-burst 4x4
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
KINDS = ("text", "text", "image", "score")
ATOL = 1e-4


def _png(seed: int, size: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Soak:
    """The workload and its bookkeeping; the first answer for each input is the reference for later ones."""

    def __init__(self, url: str, n_texts: int, n_images: int, image_size: int) -> None:
        self.url = url
        self.texts = [f"soak sentence {i} about a {w}" for i, w in
                      enumerate(["cat", "dog", "car", "tree", "boat", "city"] * (n_texts // 6 + 1))][:n_texts]
        self.images = [_png(i, image_size) for i in range(n_images)]
        self.reference: dict[tuple[str, int], np.ndarray] = {}
        self.latency: dict[str, list[float]] = {"text": [], "image": [], "score": []}
        self.statuses: dict[str, int] = {}
        self.mismatches: list[str] = []
        self.items = 0
        self.lock = threading.Lock()

    def client(self, seed: int, until: float) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        while time.monotonic() < until:
            kind = rng.choice(KINDS)
            if kind == "text":
                idx = rng.sample(range(len(self.texts)), rng.randint(1, 8))
                path, body = "/embed/text", {"texts": [self.texts[i] for i in idx]}
            elif kind == "image":
                idx = rng.sample(range(len(self.images)), rng.randint(1, 3))
                path, body = "/embed/image", {"images": [self.images[i] for i in idx]}
            else:
                idx = rng.sample(range(len(self.texts)), 3)
                path, body = "/score", {"texts": [self.texts[i] for i in idx],
                                        "images": [self.images[rng.randrange(len(self.images))]]}
            rid = uuid.uuid4().hex
            started = time.perf_counter()
            try:
                r = session.post(self.url + path, json=body, headers={"X-Request-ID": rid}, timeout=120)
                status = str(r.status_code)
            except requests.RequestException as exc:
                r, status = None, type(exc).__name__
            elapsed = time.perf_counter() - started
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == "200":
                    self.latency[kind].append(elapsed)
                    self.items += len(idx)
            if r is not None and r.status_code == 200:
                if r.headers.get("X-Request-ID") != rid:
                    self._mismatch(f"{kind}: answer for another request id")
                elif kind != "score":
                    self._check(kind, idx, r.json()["embeddings"])

    def _check(self, kind: str, idx: list[int], rows: list[list[float]]) -> None:
        for i, row in zip(idx, rows):
            vector = np.asarray(row, dtype=np.float32)
            with self.lock:
                ref = self.reference.setdefault((kind, i), vector)
            if ref.shape != vector.shape or not np.allclose(ref, vector, atol=ATOL):
                self._mismatch(f"{kind} {i}: differs from an earlier answer for the same input")

    def _mismatch(self, message: str) -> None:
        with self.lock:
            if len(self.mismatches) < 20:
                self.mismatches.append(message)

    def run(self, clients: int, seconds: float, seed: int) -> None:
        until = time.monotonic() + seconds
        threads = [threading.Thread(target=self.client, args=(seed + n, until), daemon=True) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 180)

    def reset_counters(self) -> None:
        self.latency = {k: [] for k in self.latency}
        self.statuses, self.items = {}, 0


def _pct(values: list[float], q: float) -> float | None:
    return round(sorted(values)[min(len(values) - 1, int(len(values) * q))] * 1000, 1) if values else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model_dir: Path, variant: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "MODEL_DIR": str(model_dir), "MODEL_VARIANT": variant, "PORT": str(port),
           "QUEUE_SIZE": os.environ.get("QUEUE_SIZE", "4096")}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "--bind",
                             f"127.0.0.1:{port}", "handler.wsgi:app"], cwd=REPO, env=env,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited; see {log_path}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server not healthy within 600 s")


def _worker_rss(proc: subprocess.Popen | None) -> int | None:
    if proc is None:
        return None
    import psutil

    time.sleep(1.0)
    children = psutil.Process(proc.pid).children()
    return children[0].memory_info().rss if children else None


def large_image_burst(url: str, proc: subprocess.Popen, requests_n: int, images_n: int) -> dict[str, Any]:
    """``requests_n`` concurrent requests of ``images_n`` 40 MP JPEGs each; the worker's RSS sampled every 50 ms."""
    import psutil

    image = Image.new("RGB", (7000, 5700), (120, 30, 200))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    blob = base64.b64encode(buf.getvalue()).decode()
    worker = psutil.Process(proc.pid).children()[0]
    before = peak = worker.memory_info().rss
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, worker.memory_info().rss)
            time.sleep(0.05)

    statuses: list[int] = []
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    senders = [threading.Thread(target=lambda: statuses.append(requests.post(
        url + "/embed/image", json={"images": [blob] * images_n}, timeout=600).status_code)) for _ in range(requests_n)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    stop.set()
    return {"burst": f"{requests_n} requests x {images_n} images of 7000x5700 ({len(buf.getvalue())} byte JPEG)",
            "statuses": statuses, "seconds": round(time.monotonic() - started, 1),
            "worker_rss_mib": {"before": round(before / 2**20), "peak": round(peak / 2**20)}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server")
    where.add_argument("--model-dir", type=Path, help="start gunicorn on loopback with this MODEL_DIR")
    p.add_argument("--variant", default="english")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--texts", type=int, default=64)
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", type=Path, help="also write the report here as JSON")
    p.add_argument("--large-image-burst", metavar="RxI",
                   help="instead of the soak: R concurrent requests of I 40 MP images (needs --model-dir)")
    args = p.parse_args(argv)
    if args.large_image_burst and args.model_dir is None:
        p.error("--large-image-burst needs --model-dir (it reads the worker's memory)")

    proc = None
    url = args.url
    if args.model_dir is not None:
        proc, url = _start_server(args.model_dir, args.variant, Path(os.environ.get("SOAK_LOG", "/tmp/soak.log")))
    try:
        if args.large_image_burst:
            r, i = (int(x) for x in args.large_image_burst.lower().split("x"))
            report = large_image_burst(url.rstrip("/"), proc, r, i)
            print(json.dumps(report, indent=2))
            return report
        soak = Soak(url.rstrip("/"), args.texts, args.images, args.image_size)
        soak.run(args.clients, args.warmup, seed=1)
        rss_warm = _worker_rss(proc)
        soak.reset_counters()
        soak.run(args.clients, args.duration, seed=1000)
        rss_after = _worker_rss(proc)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    done = sum(len(v) for v in soak.latency.values())
    report = {
        "clients": args.clients, "duration_s": args.duration, "requests_ok": done,
        "requests_per_s": round(done / args.duration, 1), "items_per_s": round(soak.items / args.duration, 1),
        "statuses": soak.statuses, "mismatches": soak.mismatches,
        "latency_ms": {k: {"p50": _pct(v, 0.5), "p95": _pct(v, 0.95), "p99": _pct(v, 0.99),
                           "mean": round(statistics.fmean(v) * 1000, 1) if v else None}
                       for k, v in soak.latency.items()},
        "worker_rss_mib": {"after_warmup": rss_warm and round(rss_warm / 2**20),
                           "after_run": rss_after and round(rss_after / 2**20)},
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
