"""Two models in one deployment against each alone: throughput, latency, cold start, memory, and a reload's cost.

    python bench/bench_models.py --json bench/out/models.json [--models english,multilingual] [--seconds 20]

Real-size random bundles, the real gunicorn, loads from bench/loadgen.py in another process; in one run:
1. each model served alone (MODEL_VARIANT), 16 clients, one item per request: items/s and p99;
2. both served (MODELS=a,b), 16 clients, each client's requests naming the models in turn (half each): items/s
   against what the two alone would do in alternation (2 / (1/a + 1/b): the time of one item of each, alone), and
   each model's p99 against its p99 alone;
for texts and for images; then
3. cold start with both: seconds from starting gunicorn to /health 200 (the default ready) and to both ready, and
   the worker's RSS with one model and with two;
4. a budget that holds one of them: the first request for the other (an eviction and a load) and the next one.
Targets (issue: several models per deployment): items/s >= 0.8x the alternation, each p99 <= 1.5x alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_serving import load  # noqa: E402
from bench.common import (DEFAULT_BUNDLES, OUT, REPO, Server, ensure_bundles, load_average, machine,  # noqa: E402
                          save_json, serving)

WORKLOADS = {"texts": "text1", "images": "image1"}
LOG = OUT / "models-logs" / "server.log"


def dims(bundles: Path, models: list[str]) -> dict[str, int]:
    return {m: json.loads((bundles / m / "manifest.json").read_text())["dim"] for m in models}


def mixed_load(url: str, workload: str, models: list[str], dim_of: dict[str, int], seconds: float) -> dict:
    import subprocess

    spec = {"url": url, "workload": workload, "concurrency": 16, "seconds": seconds, "warmup": 3,
            "dim": 0, "models": models, "dims": dim_of, "timeout": 120}
    result = subprocess.run([sys.executable, str(REPO / "bench" / "loadgen.py"), json.dumps(spec)], cwd=REPO,
                            capture_output=True, text=True, timeout=seconds + 400)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def worker_rss_mb(server: Server) -> float:
    import psutil

    return psutil.Process(server.proc.pid).children()[0].memory_info().rss / 2**20


def wait_all_ready(server: Server, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = requests.get(f"{server.url}/", timeout=10).json()
        if all(m["state"] == "ready" for m in info["models"]):
            return time.perf_counter() - server.started
        time.sleep(0.1)
    raise RuntimeError("the models did not all load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="english,multilingual")
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workloads", default="texts,images", help="which throughput rows to run (none: '')")
    parser.add_argument("--skip-cold", action="store_true", help="no cold start, memory or reload section")
    args = parser.parse_args()
    models = args.models.split(",")
    ensure_bundles(args.bundles, models)
    dim_of = dims(args.bundles, models)
    base = {"MODEL_DIR": str(args.bundles), "PRECISION": args.precision, "TEXT_CACHE_SIZE": "0",
            "REQUEST_TIMEOUT_S": "120"}
    results: dict = {"machine": machine(), "load_before": load_average(), "models": models, "alone": {}, "both": {}}
    for kind in filter(None, args.workloads.split(",")):
        workload = WORKLOADS[kind]
        for m in models:
            with serving({**base, "MODEL_VARIANT": m}, LOG) as server:
                results["alone"].setdefault(kind, {})[m] = load(server.url, workload, 16, args.seconds, 3,
                                                                dim=dim_of[m])
            print(f"{kind} {m} alone: {results['alone'][kind][m]['items_per_s']:.1f}/s", file=sys.stderr, flush=True)
        with serving({**base, "MODELS": ",".join(models)}, LOG) as server:
            wait_all_ready(server)
            results["both"][kind] = mixed_load(server.url, workload, models, dim_of, args.seconds)
        print(f"{kind} both: {results['both'][kind]['items_per_s']:.1f}/s", file=sys.stderr, flush=True)
        save_json(args.json, results)

    if args.skip_cold:
        results["load_after"] = load_average()
        save_json(args.json, results)
        print(report(results))
        return
    # cold start and memory
    server = Server({**base, "MODELS": ",".join(models)}, LOG)
    try:
        server.wait_ready()
        default_ready = time.perf_counter() - server.started
        both_ready = wait_all_ready(server)
        results["cold"] = {"default_ready_s": default_ready, "both_ready_s": both_ready,
                           "worker_rss_two_mb": worker_rss_mb(server)}
    finally:
        server.stop()
    with serving({**base, "MODEL_VARIANT": models[0]}, LOG) as server:
        results["cold"]["worker_rss_one_mb"] = worker_rss_mb(server)

    # a budget that holds one: an eviction and a load
    from models.loader import memory_needed

    budget = max(memory_needed(m, args.bundles, precision=args.precision, runtime="auto") for m in models) + 2**20
    with serving({**base, "MODELS": ",".join(models), "MODEL_MEMORY_BUDGET": str(budget)}, LOG) as server:
        timings = []
        for m in (models[1], models[0], models[1]):
            started = time.perf_counter()
            r = requests.post(f"{server.url}/embed/text", json={"texts": ["a cat"], "model": m}, timeout=300)
            first = time.perf_counter() - started
            started = time.perf_counter()
            requests.post(f"{server.url}/embed/text", json={"texts": ["a dog"], "model": m}, timeout=300)
            timings.append({"model": m, "status": r.status_code, "first_s": first,
                            "next_s": time.perf_counter() - started})
        results["reload"] = {"budget_bytes": budget, "requests": timings,
                             "stats": requests.get(f"{server.url}/stats", timeout=10).json()["models"]}
    results["load_after"] = load_average()
    save_json(args.json, results)
    print(report(results))


def report(results: dict) -> str:
    models = results["models"]
    lines = [f"Machine: {results['machine']}; load average {results['load_before']} before, "
             f"{results['load_after']} after.", "",
             "| workload | " + " | ".join(f"{m} alone: items/s, p99" for m in models)
             + " | alternation | both: items/s (vs alternation) | " + " | ".join(f"{m} p99 (vs alone)" for m in models)
             + " |", "|---|" + "---|" * (2 * len(models) + 2)]
    for kind in results["both"]:
        alone, both = results["alone"][kind], results["both"][kind]
        alternation = len(models) / sum(1 / alone[m]["items_per_s"] for m in models)
        cells = [f"{alone[m]['items_per_s']:.1f}, {alone[m]['p99_ms']:.0f} ms" for m in models]
        cells += [f"{alternation:.1f}", f"{both['items_per_s']:.1f} ({both['items_per_s'] / alternation:.2f}x)"]
        cells += [f"{both['by_model'][m]['p99_ms']:.0f} ms ({both['by_model'][m]['p99_ms'] / alone[m]['p99_ms']:.2f}x)"
                  for m in models]
        lines.append(f"| {kind}, 1 per request, 16 clients | " + " | ".join(cells) + " |")
    if "cold" not in results:
        return "\n".join(lines)
    cold = results["cold"]
    lines += ["", f"Cold start with both: default ready {cold['default_ready_s']:.1f} s, both ready "
              f"{cold['both_ready_s']:.1f} s; worker RSS {cold['worker_rss_one_mb']:,.0f} MB with {models[0]} alone, "
              f"{cold['worker_rss_two_mb']:,.0f} MB with both."]
    for t in results["reload"]["requests"]:
        lines.append(f"Budget for one: first request for {t['model']} {t['first_s']:.2f} s (status {t['status']}), "
                     f"the next {t['next_s'] * 1000:.0f} ms.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
