"""Serving speed: the real gunicorn on real-size random bundles, driven over loopback from another process.

    python bench/bench_serving.py --json bench/out/serving.json        # everything, about 20 minutes
    python bench/bench_serving.py --skip-cold --seconds 5              # a quicker throughput-only pass

Measures, in one run (english unless said):
1. the bare encoder (our towers, no HTTP) at batch 16 and for one short text, in fp32 and in bf16, before the
   throughput cells and again after each round of them (the median is the ceiling the targets use);
2. throughput and p50/p95/p99 latency for one 640x480 JPEG (base64) per request, 8 per request, one short
   prompt per request and 32 per request, at concurrency 1, 4 and 16, against two servers started side by
   side and measured in turns: default settings (micro-batching, PRECISION=auto) and the naive design
   (BATCHING=false, PRECISION=fp32: each request encoded alone in its own request thread). The text cache
   is off (TEXT_CACHE_SIZE=0) and every prompt is distinct;
3. overload: 64 clients against QUEUE_SIZE=32 with 64 request threads: only 200 or 429, within the timeout;
4. cold start (process start to the first 200 from POST /embed/text) and the worker's peak RSS, ours against
   the naive path (bench/naive_app.py: plain create_model_and_transforms / eager M-CLIP, then serve), both variants.
Prints Markdown tables and the issue's targets with pass/fail; --json keeps every number.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_load import warm_page_cache  # noqa: E402
from bench.common import DEFAULT_BUNDLES, OUT, REPO, Server, ensure_bundles, load_average, machine, save_json, serving  # noqa: E402

WORKLOADS = ["image1", "image8", "text1", "text32"]
CONCURRENCY = [1, 4, 16]
CONFIGS = {"batched": {}, "naive": {"BATCHING": "false", "PRECISION": "fp32"}}
COMMON_ENV = {"MODEL_VARIANT": "english", "METRICS_ENABLED": "true", "TEXT_CACHE_SIZE": "0"}

BARE = textwrap.dedent("""
    import json, sys, threading
    from bench.common import median_seconds, photo_jpeg, prompts
    from inputs import decode_image
    from models.loader import load_encoder
    out = {}
    def measure():
        for precision in ("fp32", "bf16"):
            enc = load_encoder("english", sys.argv[1], precision=precision)
            images = [enc.prepare_image(decode_image(photo_jpeg(i), max_pixels=10**8)) for i in range(16)]
            texts = prompts(16)
            out[precision] = {
                "image_b16_per_s": 16 / median_seconds(lambda: enc.encode_images(images), 5),
                "image_b1_ms": 1000 * median_seconds(lambda: enc.encode_images(images[:1]), 10),
                "text_b16_per_s": 16 / median_seconds(lambda: enc.encode_text(texts), 10),
                "text_b1_ms": 1000 * median_seconds(lambda: enc.encode_text(texts[:1]), 30),
            }
    thread = threading.Thread(target=measure)  # the service calls the model from a worker thread too
    thread.start(); thread.join()
    print(json.dumps(out))
""")


def bare_model(bundles: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", BARE, str(bundles)], cwd=REPO, capture_output=True, text=True,
                            timeout=900, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def load(url: str, workload: str, concurrency: int, seconds: float, warmup: float, dim: int = 512,
         timeout: float = 120) -> dict:
    spec = {"url": url, "workload": workload, "concurrency": concurrency, "seconds": seconds, "warmup": warmup,
            "dim": dim, "timeout": timeout}
    result = subprocess.run([sys.executable, str(REPO / "bench" / "loadgen.py"), json.dumps(spec)], cwd=REPO,
                            capture_output=True, text=True, timeout=seconds + warmup + timeout + 120)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def batch_counts(url: str) -> tuple[float, float]:
    """(model calls, items) so far, from /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    calls = sum(float(v) for v in re.findall(r"^clipserve_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
    items = sum(float(v) for v in re.findall(r"^clipserve_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
    return calls, items


def bare_median(samples: list[dict]) -> dict:
    """Per precision and figure, the median of the bare-encoder samples taken through the run (and all of them)."""
    out: dict = {}
    for precision in samples[0]:
        out[precision] = {key: statistics.median(s[precision][key] for s in samples) for key in samples[0][precision]}
        out[precision]["samples"] = {key: [round(s[precision][key], 1) for s in samples]
                                     for key in samples[0][precision]}
    return out


def throughput(bundles: Path, seconds: float, warmup: float, rounds: int, bare: list[dict]) -> list[dict]:
    """Every cell `rounds` times, both configurations in turns (so both see the same background load);
    per cell the round with the median throughput is kept, the others are listed in `rounds_items_per_s`.
    The bare encoder is measured again after each round (appended to `bare`): the ceiling must be taken
    under the same conditions as the cells it is compared with, on a machine whose speed drifts."""
    runs: dict[tuple, list[dict]] = {}
    logs = OUT / "serving-logs"
    with serving({**COMMON_ENV, "MODEL_DIR": str(bundles)}, logs / "batched.log") as batched, \
            serving({**COMMON_ENV, "MODEL_DIR": str(bundles), **CONFIGS["naive"]}, logs / "naive.log") as naive:
        servers = {"batched": batched, "naive": naive}
        for _ in range(rounds):
            for workload in WORKLOADS:
                for concurrency in CONCURRENCY:
                    for name, server in servers.items():
                        before = batch_counts(server.url)
                        row = load(server.url, workload, concurrency, seconds, warmup)
                        after = batch_counts(server.url)
                        calls = after[0] - before[0]
                        row.update(config=name, mean_batch=(after[1] - before[1]) / calls if calls else None)
                        runs.setdefault((name, workload, concurrency), []).append(row)
                        print(f"  {name:8s} {workload:7s} c{concurrency:<3d} {row['items_per_s']:8.1f} items/s "
                              f"p50 {row['p50_ms'] or 0:8.1f} ms  {row['statuses']}", file=sys.stderr, flush=True)
            bare.append(bare_model(bundles))
    rows = []
    for cell in runs.values():
        ranked = sorted(cell, key=lambda r: r["items_per_s"])
        median = dict(ranked[len(ranked) // 2])
        median["rounds_items_per_s"] = [round(r["items_per_s"], 1) for r in cell]
        rows.append(median)
    return rows


def overload(bundles: Path, seconds: float) -> dict:
    env = {**COMMON_ENV, "MODEL_DIR": str(bundles), "QUEUE_SIZE": "32", "MAX_ITEMS": "32", "HTTP_THREADS": "64"}
    with serving(env, OUT / "serving-logs" / "overload.log") as server:
        return load(server.url, "image1", 64, seconds, 1.0, timeout=70)  # REQUEST_TIMEOUT_S is 60


def cold_start(bundles: Path, variant: str, app: str, env: dict[str, str]) -> dict:
    """Seconds from starting gunicorn to the first 200 from POST /embed/text, and the worker's peak RSS."""
    warm_page_cache(bundles / variant)
    server = Server({"MODEL_DIR": str(bundles), "MODEL_VARIANT": variant, **env}, OUT / "serving-logs" / "cold.log",
                    app)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{app} exited; see {server.log_path}")
            try:
                r = requests.post(f"{server.url}/embed/text", json={"texts": ["a photo of a cat"]}, timeout=2)
                if r.status_code == 200:
                    return {"seconds": time.perf_counter() - server.started, "worker_peak_rss_mb": server.worker_hwm_mb()}
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise RuntimeError("no answer within 300 s")
    finally:
        server.stop()


def cold_starts(bundles: Path, repeats: int) -> dict:
    results = {}
    for variant in ("english", "multilingual"):
        runs: dict[str, list[dict]] = {"ours": [], "naive": []}
        for i in range(repeats):
            order = ["ours", "naive"] if i % 2 == 0 else ["naive", "ours"]
            for name in order:
                app, env = ("handler.wsgi:app", {}) if name == "ours" else ("bench.naive_app:app", {"PRECISION": "fp32"})
                runs[name].append(cold_start(bundles, variant, app, env))
                print(f"  cold {variant} {name}: {runs[name][-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
        results[variant] = {name: {"median_s": sorted(r["seconds"] for r in rs)[len(rs) // 2],
                                   "all_s": [round(r["seconds"], 2) for r in rs],
                                   "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in rs)}
                            for name, rs in runs.items()}
    return results


def find(rows: list[dict], config: str, workload: str, concurrency: int) -> dict:
    return next(r for r in rows if (r["config"], r["workload"], r["concurrency"]) == (config, workload, concurrency))


def targets(bare: dict, rows: list[dict], over: dict | None, cold: dict | None, precision: str) -> list[tuple]:
    """(target, measured, pass) per line of the issue."""
    out = []
    if rows:
        img, img_naive = find(rows, "batched", "image1", 16), find(rows, "naive", "image1", 16)
        ceiling = bare[precision]["image_b16_per_s"]
        out.append((f"images c16 >= 85% of bare {precision} batch 16 ({ceiling:.1f}/s)",
                    f"{img['items_per_s']:.1f}/s = {img['items_per_s'] / ceiling:.0%}",
                    img["items_per_s"] >= 0.85 * ceiling))
        out.append(("images c16 >= 2.5x naive fp32", f"{img['items_per_s'] / img_naive['items_per_s']:.2f}x",
                    img["items_per_s"] >= 2.5 * img_naive["items_per_s"]))
        txt, txt_naive = find(rows, "batched", "text1", 16), find(rows, "naive", "text1", 16)
        out.append(("texts c16 >= 10x naive (cache off)", f"{txt['items_per_s'] / txt_naive['items_per_s']:.2f}x "
                    f"({txt['items_per_s']:.0f} vs {txt_naive['items_per_s']:.0f}/s)",
                    txt["items_per_s"] >= 10 * txt_naive["items_per_s"]))
        idle = find(rows, "batched", "text1", 1)
        single = bare[precision]["text_b1_ms"]
        out.append((f"idle one-text p50 <= 2x bare single-text encode ({single:.1f} ms)",
                    f"{idle['p50_ms']:.1f} ms = {idle['p50_ms'] / single:.2f}x", idle["p50_ms"] <= 2 * single))
    if over is not None:
        statuses = set(over["all_statuses"])
        out.append(("overload c64 vs queue 32: only 200/429, no client errors, within 60 s",
                    f"{over['all_statuses']}, errors {over['client_errors']}, max {over['max_any_ms'] / 1000:.1f} s",
                    statuses <= {"200", "429"} and not over["client_errors"] and over["max_any_ms"] < 60_000))
    for variant, r in (cold or {}).items():
        ratio = r["ours"]["median_s"] / r["naive"]["median_s"]
        out.append((f"cold start {variant} <= 0.6x naive", f"{r['ours']['median_s']:.2f} vs "
                    f"{r['naive']['median_s']:.2f} s = {ratio:.2f}x", ratio <= 0.6))
    return out


def report(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; load average {results['load_before']} -> {results['load_after']}",
             f"PRECISION=auto resolved to {results['precision']}", "",
             "| bare encoder (english), median of the samples through the run | fp32 | bf16 |", "|---|---|---|"]
    bare = results["bare"]
    for key, label in (("image_b16_per_s", "images/s, batch 16"), ("image_b1_ms", "ms, one image"),
                       ("text_b16_per_s", "texts/s, batch 16"), ("text_b1_ms", "ms, one text")):
        lines.append(f"| {label} | {bare['fp32'][key]:.1f} {bare['fp32']['samples'][key]} | "
                     f"{bare['bf16'][key]:.1f} {bare['bf16']['samples'][key]} |")
    if results["throughput"]:
        lines += ["", "| workload | clients | config | items/s (rounds) | req/s | p50 ms | p95 ms | p99 ms | "
                      "mean model call | non-200 |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["throughput"]:
            bad = {k: v for k, v in r["statuses"].items() if k != "200"} | r["client_errors"]
            lines.append(f"| {r['workload']} | {r['concurrency']} | {r['config']} | {r['items_per_s']:.1f} "
                         f"{r['rounds_items_per_s']} | {r['req_per_s']:.1f} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | "
                         f"{_ms(r['p99_ms'])} | {_ms(r['mean_batch'])} | {bad or 0} |")
    if results["cold"]:
        lines += ["", "| cold start | ours s (median) | naive s (median) | ours / naive | worker peak RSS MB ours / naive |",
                  "|---|---|---|---|---|"]
        for variant, r in results["cold"].items():
            lines.append(f"| {variant} | {r['ours']['median_s']:.2f} {r['ours']['all_s']} | {r['naive']['median_s']:.2f} "
                         f"{r['naive']['all_s']} | {r['ours']['median_s'] / r['naive']['median_s']:.2f}x | "
                         f"{r['ours']['worker_peak_rss_mb']:.0f} / {r['naive']['worker_peak_rss_mb']:.0f} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if p else '**no**'} |" for t, m, p in results["targets"]]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2, help="times each throughput cell is measured")
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    ensure_bundles(args.bundles, ["english"] if args.skip_cold else ["english", "multilingual"])
    from models.precision import resolve

    results: dict = {"machine": machine(), "load_before": load_average(), "precision": resolve("auto"),
                     "command": " ".join(["python", "bench/bench_serving.py", *(argv or sys.argv[1:])])}
    print("bare encoder ...", file=sys.stderr, flush=True)
    bare = [bare_model(args.bundles)]
    results["throughput"] = ([] if args.skip_throughput
                             else throughput(args.bundles, args.seconds, args.warmup, args.rounds, bare))
    results["bare"] = bare_median(bare)
    results["overload"] = None if args.skip_overload else overload(args.bundles, max(args.seconds, 20))
    results["cold"] = None if args.skip_cold else cold_starts(args.bundles, args.cold_repeats)
    results["load_after"] = load_average()
    results["targets"] = targets(results["bare"], results["throughput"], results["overload"], results["cold"],
                                 results["precision"])
    print(report(results))
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
