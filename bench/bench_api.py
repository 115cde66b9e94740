"""HTTP throughput and latency of the real service (gunicorn + the README command) on a real-size random bundle.

    python bench/bench_api.py [--variant english] [--bundles DIR] [--clients 8] [--seconds 20] [--json OUT]

It starts one gunicorn per engine configuration (cross-request batching on, and off with
BATCH_MAX_SIZE=1) on loopback ports, then runs closed-loop clients on each workload: one short
text per request, and one 640x480 JPEG (base64) per request. The configurations take turns in
short rounds (A, B, A, B, ...), so on a shared machine whose free CPU drifts both see the same
conditions; only one server gets traffic at a time. Every response is checked (200, one vector of
the model's dimension). The mean model-call size comes from each server's /metrics.
Random weights: speed does not depend on values. The bundle is made with
``python -m models.tiny --size real`` if it is missing.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES = REPO / "bench" / "out" / "bundles-real"
CONFIGS = {"batching": {"BATCH_MAX_SIZE": "32", "BATCH_MAX_WAIT_MS": "5"},
           "no batching": {"BATCH_MAX_SIZE": "1", "BATCH_MAX_WAIT_MS": "0"}}


def ensure_bundle(bundles: Path, variant: str) -> None:
    if not (bundles / variant / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "models.tiny", "--variant", variant, "--size", "real",
                        "--out", str(bundles)], cwd=REPO, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(bundles: Path, variant: str, extra_env: dict[str, str], log_path: Path):
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(bundles), "MODEL_VARIANT": variant, "HOST": "127.0.0.1",
           "PORT": str(port), "LOG_LEVEL": "WARNING", "METRICS_ENABLED": "true", **extra_env}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = open(log_path, "ab")
    process = subprocess.Popen([str(gunicorn), "-c", "infra/gunicorn.conf.py", "handler.wsgi:app"], cwd=REPO,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited; see {log_path}")
        try:
            if requests.get(f"{base}/health", timeout=5).status_code == 200:
                return process, base
        except requests.RequestException:  # not listening yet, or busy importing torch
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("service not ready in 240 s")


def stop_service(process) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def jpeg_b64(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def run_clients(base: str, path: str, make_body, clients: int, seconds: float, dim: int) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        n = 0
        while time.monotonic() < stop_at:
            body = make_body(index, n)
            started = time.perf_counter()
            try:
                response = session.post(f"{base}{path}", json=body, timeout=120)
                elapsed = time.perf_counter() - started
                ok = response.status_code == 200 and len(response.json()["embeddings"][0]) == dim
                problem = None if ok else f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                elapsed, problem = time.perf_counter() - started, type(exc).__name__
            with lock:
                (failures.append(problem) if problem else latencies.append(elapsed))
            n += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "failures": failures, "wall_s": time.monotonic() - started}


def summarize(rounds: list[dict]) -> dict:
    latencies = sorted(x for r in rounds for x in r["latencies"])
    wall = sum(r["wall_s"] for r in rounds)
    return {"requests": len(latencies), "failures": sum(len(r["failures"]) for r in rounds),
            "wall_s": round(wall, 1), "req_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None}


def batch_stats(base: str, kind: str) -> tuple[float, float]:
    """(sum, count) of the clipserve_batch_size histogram for ``kind``: items and model calls so far."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for field in ("sum", "count"):
            if line.startswith(f"clipserve_batch_size_{field}{{") and f'kind="{kind}"' in line:
                values[field] = float(line.rsplit(" ", 1)[1])
    return values.get("sum", 0.0), values.get("count", 0.0)


def machine_speed() -> dict:
    """How much CPU this machine gives right now: numbers from a shared or busy machine are not comparable."""
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    a @ a
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < 1.0:
        a @ a
        runs += 1
    return {"gemm_gflops": round(runs * 2 * 1024 ** 3 / (time.perf_counter() - started) / 1e9, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="english", choices=["english", "multilingual"])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20, help="measured time per configuration and workload")
    parser.add_argument("--rounds", type=int, default=4, help="turns the configurations take within --seconds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ensure_bundle(args.bundles, args.variant)
    log_path = REPO / "bench" / "out" / "bench_api_gunicorn.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    images = [jpeg_b64(i) for i in range(16)]
    workloads = {
        "text (1 per request)": ("/embed/text", lambda c, n: {"texts": [f"a photo of thing {c}-{n} on a red car"]}),
        "image (1 640x480 JPEG per request)": ("/embed/image", lambda c, n: {"images": [images[(c + n) % 16]]}),
    }
    servers = {}
    try:
        for name, env in CONFIGS.items():
            servers[name] = start_service(args.bundles, args.variant, env, log_path)
        dim = requests.get(f"{servers[next(iter(CONFIGS))][1]}/", timeout=5).json()["model"]["dim"]
        speed_before = machine_speed()
        results = []
        for workload, (path, body) in workloads.items():
            kind = "text" if "text" in path else "image"
            rounds: dict[str, list[dict]] = {name: [] for name in CONFIGS}
            calls: dict[str, list[float]] = {}
            for name, (_, base) in servers.items():
                run_clients(base, path, body, args.clients, 3.0, dim)  # warm-up
                calls[name] = list(batch_stats(base, kind))
            for _ in range(args.rounds):
                for name, (_, base) in servers.items():
                    rounds[name].append(run_clients(base, path, body, args.clients, args.seconds / args.rounds, dim))
            for name, (_, base) in servers.items():
                items_sum, calls_count = batch_stats(base, kind)
                mean_batch = (items_sum - calls[name][0]) / max(1.0, calls_count - calls[name][1])
                row = {"config": name, "workload": workload, **summarize(rounds[name]),
                       "mean_batch": round(mean_batch, 2)}
                results.append(row)
                print(json.dumps(row), flush=True)
        speed_after = machine_speed()
    finally:
        for process, _ in servers.values():
            stop_service(process)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "variant": args.variant, "clients": args.clients, "seconds": args.seconds, "rounds": args.rounds,
              "speed_before": speed_before, "speed_after": speed_after, "results": results}
    print(f"\nmachine speed before {speed_before}, after {speed_after}")
    print("\n| config | workload | req/s | p50 ms | p95 ms | mean model-call size | failures |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['workload']} | {r['req_per_s']} | {r['p50_ms']} | {r['p95_ms']} "
              f"| {r['mean_batch']} | {r['failures']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
