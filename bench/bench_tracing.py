"""What tracing costs: the real gunicorn on real-size random bundles, OTEL_ENABLED off and on (every request
sampled, OTLP/HTTP to a local collector stub that accepts and discards), measured in turns.

    python bench/bench_tracing.py [--bundles bench/out/bundles-real] [--seconds 15] [--rounds 3] [--json FILE]
    python bench/bench_tracing.py --in-process      # tracing's own CPU per request, one thread, no HTTP

Cases, 16 clients each: one 640x480 JPEG per request; one text per request with the text cache off (every text
reaches the model); one text per request from a pool of 2,000 that the cache holds after the warm-up (the
lightest request there is: tracing's per-request cost is largest against it), sampled at 100% and at 10%
(OTEL_TRACES_SAMPLER=parentbased_traceidratio, a production setting). Per case and configuration: items/s over
`rounds` runs in alternation (off, on, off, on, ...; one server at a time, so both see the same machine), and
the service's CPU per request (master and worker, every thread). Target: tracing on keeps >= 97% of the
throughput with it off. The verdict compares the best run of each configuration (noise only ever slows a run
down) and says "unsettled" when the runs of one configuration spread by more than the difference judged.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.accounting import tree_cpu_seconds, wait_quiet  # noqa: E402
from bench.bench_serving import batch_counts, load  # noqa: E402
from bench.common import DEFAULT_BUNDLES, OUT, ensure_bundles, load_average, machine, save_json, serving  # noqa: E402

# name -> (loadgen workload, env of both configurations, env added with tracing on)
CASES = {
    "image1": ("image1", {}, {}),
    "text1 uncached": ("text1", {"TEXT_CACHE_SIZE": "0"}, {}),
    "text1 cached": ("text1", {}, {}),
    "text1 cached, 10% sampled": ("text1", {}, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                               "OTEL_TRACES_SAMPLER_ARG": "0.1"}),
}
CLIENTS = 16
TARGET = 0.97


class CollectorStub(http.server.ThreadingHTTPServer):
    """POST /v1/traces: read, count, answer 200 (an OTLP collector that does nothing with the spans)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Accept)
        self.requests = 0
        self.bytes = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Accept(http.server.BaseHTTPRequestHandler):
    server: CollectorStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        size = int(self.headers.get("Content-Length", 0))
        self.rfile.read(size)
        self.server.requests += 1
        self.server.bytes += size
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def run_once(bundles: Path, workload: str, env: dict[str, str], seconds: float, warmup: float) -> dict:
    common = {"MODEL_DIR": str(bundles), "MODEL_VARIANT": "english", "METRICS_ENABLED": "true"}
    with serving({**common, **env}, OUT / "tracing-logs" / "server.log") as server:
        load(server.url, workload, CLIENTS, 3.0, 1.0)  # warm: caches, allocator, JIT paths
        calls0, items0 = batch_counts(server.url)
        cpu0 = tree_cpu_seconds(server.proc.pid)
        row = load(server.url, workload, CLIENTS, seconds, warmup)
        cpu1 = tree_cpu_seconds(server.proc.pid)
        calls1, items1 = batch_counts(server.url)
    # The load ran warmup + seconds; CPU over the whole of it, per request answered in the counted window, scaled.
    requests_all = row["req_per_s"] * (seconds + warmup)
    row["cpu_ms_per_request"] = 1000 * (cpu1 - cpu0) / requests_all if requests_all else None
    row["mean_batch"] = (items1 - items0) / (calls1 - calls0) if calls1 > calls0 else None
    return row


def in_process(bundles: Path, rounds: int = 6, requests: int = 800) -> dict:
    """CPU per request of one cached text through the app in this process (one thread, no HTTP): two apps, tracing
    off and on, in alternation; every span exported to the stub (queue unbounded, flushed inside the timing).
    The cost of tracing itself, without the served run's noise."""
    import dataclasses
    import os
    import time

    from handler.app import create_app
    from infra import tracing
    from infra.settings import Settings

    stub = CollectorStub()
    os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{stub.server_address[1]}",
                      OTEL_BSP_MAX_QUEUE_SIZE="1000000")
    base = Settings(model_dir=bundles, model_variant="english")
    clients = {}
    for name, enabled in (("off", False), ("on", True)):
        app = create_app(dataclasses.replace(base, otel_enabled=enabled))
        app.extensions["clipserve"].start()
        app.extensions["clipserve"].engine.wait_ready(300)
        clients[name] = app.test_client()
        clients[name].post("/embed/text", json={"texts": ["a photo of a cat"]})
    spent: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for name, client in clients.items():
            started = time.process_time()
            for _ in range(requests):
                client.post("/embed/text", json={"texts": ["a photo of a cat"]})
            tracing.flush(60)
            spent[name].append(1000 * (time.process_time() - started) / requests)
    low = {name: round(min(v), 3) for name, v in spent.items()}
    return {"cpu_ms_per_request": low, "added_ms": round(low["on"] - low["off"], 3),
            "sampler_arg": os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0 (always on)")}


def verdict(off: list[float], on: list[float]) -> tuple[float, str]:
    ratio = max(on) / max(off)
    spread = max((max(v) - min(v)) / max(v) for v in (off, on))
    if spread > abs(1 - ratio) and ratio < TARGET:
        return ratio, "unsettled"
    return ratio, "met" if ratio >= TARGET else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=OUT / "bench_tracing.json")
    parser.add_argument("--cases", default=";".join(CASES), help="names of CASES to run, separated by ;")
    parser.add_argument("--in-process", action="store_true", help="only the in-process CPU per request (see in_process)")
    args = parser.parse_args()
    ensure_bundles(args.bundles, ["english"])
    if args.in_process:
        print(in_process(args.bundles))
        return
    stub = CollectorStub()
    configs = {"off": {}, "on": {"OTEL_ENABLED": "true", "OTEL_TRACES_EXPORTER": "otlp",
                                 "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stub.server_address[1]}"}}
    results: dict = {"machine": machine(), "clients": CLIENTS, "seconds": args.seconds, "workloads": {}}
    for case in args.cases.split(";"):
        workload, both, traced = CASES[case]
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for name, env in configs.items():
                print(f"{case} tracing {name}: {wait_quiet(lambda: False)}", file=sys.stderr, flush=True)
                extra = {**both, **(traced if name == "on" else {})}
                runs[name].append(run_once(args.bundles, workload, {**env, **extra}, args.seconds, args.warmup))
                print(f"  {runs[name][-1]['items_per_s']:.1f} items/s, "
                      f"{runs[name][-1]['cpu_ms_per_request']:.3f} CPU ms/request", file=sys.stderr, flush=True)
        rates = {n: [round(r["items_per_s"], 1) for r in rs] for n, rs in runs.items()}
        cpu = {n: round(min(r["cpu_ms_per_request"] for r in rs), 3) for n, rs in runs.items()}
        ratio, said = verdict(rates["off"], rates["on"])
        results["workloads"][case] = {
            "items_per_s": rates, "best_ratio_on_off": round(ratio, 4), "verdict": said,
            "cpu_ms_per_request_lowest": cpu, "cpu_overhead": round(cpu["on"] / cpu["off"] - 1, 4),
            "p99_ms_median": {n: statistics.median(r["p99_ms"] for r in rs) for n, rs in runs.items()},
            "mean_batch": {n: statistics.median(r["mean_batch"] for r in rs) for n, rs in runs.items()}}
    results["collector"] = {"export_requests": stub.requests, "bytes": stub.bytes}
    results["load_average_after"] = load_average()
    save_json(args.json, results)
    for workload, row in results["workloads"].items():
        print(f"{workload}: off {row['items_per_s']['off']} on {row['items_per_s']['on']} items/s; best on/off "
              f"{row['best_ratio_on_off']:.3f} ({row['verdict']}, target >= {TARGET}); CPU ms/request "
              f"{row['cpu_ms_per_request_lowest']['off']:.3f} -> {row['cpu_ms_per_request_lowest']['on']:.3f} "
              f"({100 * row['cpu_overhead']:+.1f}%)")


if __name__ == "__main__":
    main()
