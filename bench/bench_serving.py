"""Serving speed: the real gunicorn on real-size random bundles, driven over loopback from another process.

    python bench/bench_serving.py --json bench/out/serving.json        # everything, about 20 minutes
    python bench/bench_serving.py --skip-cold --seconds 5              # a quicker throughput-only pass

Measures, in one run (english unless said):
1. the bare encoder (our towers, no HTTP) at batch 16 and for one short text, in fp32 and in bf16, and its CPU
   per item at batch 1-32: sampled at least 5 times through the run, each time with no server alive and the
   machine quiet (bench/accounting.py); the targets compare with the fastest sample and say "unsettled"
   when the samples spread by more than 1.3x;
2. throughput and p50/p95/p99 latency for one 640x480 JPEG (base64) per request, 8 per request, one short
   prompt per request and 32 per request, at concurrency 1, 4 and 16, against two servers started side by
   side and measured in turns: default settings (micro-batching, PRECISION=auto) and the naive design
   (BATCHING=false, PRECISION=fp32: each request encoded alone in its own request thread). The text cache
   is off (TEXT_CACHE_SIZE=0) and every prompt is distinct. Per cell, the service's CPU (utime + stime of
   master and worker) per item against the bare model's at the batch the service formed: the overhead,
   split by the stages the service times (clipserve_stage_cpu_seconds_total), and the load generator's CPU;
3. overload: 64 clients against QUEUE_SIZE=32 with 64 request threads: only 200 or 429, within the timeout;
4. cold start (process start to the first 200 from POST /embed/text) and the worker's peak RSS, ours against
   the naive path (bench/naive_app.py: plain create_model_and_transforms / eager M-CLIP, then serve), both variants.
Prints Markdown tables and the issue's targets with pass/fail; --json keeps every number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.accounting import MIN_SAMPLES, Ceiling, at_batch, tree_cpu_seconds, verdict, wait_quiet  # noqa: E402
from bench.bench_load import warm_page_cache  # noqa: E402
from bench.loadgen import WORKLOADS as LOADGEN_WORKLOADS  # noqa: E402
from bench.common import DEFAULT_BUNDLES, OUT, REPO, Server, ensure_bundles, load_average, machine, save_json, serving  # noqa: E402

WORKLOADS = ["image1", "image8", "text1", "text32"]
CONCURRENCY = [1, 4, 16]
CONFIGS = {"batched": {}, "naive": {"BATCHING": "false", "PRECISION": "fp32"}}
COMMON_ENV = {"MODEL_VARIANT": "english", "METRICS_ENABLED": "true", "TEXT_CACHE_SIZE": "0"}

BATCHES = (1, 2, 4, 8, 16, 32)

BARE = textwrap.dedent("""
    import json, sys, threading, time
    from bench.common import median_seconds, photo_jpeg, prompts
    from inputs import decode_image, draft_size_for
    from models.loader import load_encoder
    out = {}
    def cpu_ms_per_item(fn, items, repeats):
        fn()
        started = time.process_time()  # every thread of this process: torch's intra-op threads too
        for _ in range(repeats):
            fn()
        return 1000 * (time.process_time() - started) / (repeats * items)
    def measure():
        for precision in ("fp32", "bf16"):
            enc = load_encoder("english", sys.argv[1], precision=precision)
            draft = draft_size_for(enc.info.image_size)
            jpegs = [photo_jpeg(i) for i in range(32)]
            images = [enc.prepare_image(decode_image(j, max_pixels=10**8, draft_size=draft)) for j in jpegs]
            texts = prompts(32)
            out[precision] = {
                "image_b16_per_s": 16 / median_seconds(lambda: enc.encode_images(images[:16]), 5),
                "image_b1_ms": 1000 * median_seconds(lambda: enc.encode_images(images[:1]), 10),
                "text_b16_per_s": 16 / median_seconds(lambda: enc.encode_text(texts[:16]), 10),
                "text_b1_ms": 1000 * median_seconds(lambda: enc.encode_text(texts[:1]), 30),
            }
            if precision != sys.argv[2]:
                continue
            out[precision]["text_cpu_ms"] = {b: cpu_ms_per_item(lambda: enc.encode_text(texts[:b]), b, max(3, 64 // b))
                                             for b in (1, 2, 4, 8, 16, 32)}
            out[precision]["image_cpu_ms"] = {b: cpu_ms_per_item(lambda: enc.encode_images(images[:b]), b,
                                                                 max(2, 16 // b)) for b in (1, 2, 4, 8, 16, 32)}
            started = time.thread_time()  # what a decode thread spends per 640x480 JPEG (decode + preprocess)
            for j in jpegs:
                enc.prepare_image(decode_image(j, max_pixels=10**8, draft_size=draft))
            out[precision]["decode_cpu_ms"] = 1000 * (time.thread_time() - started) / len(jpegs)
    thread = threading.Thread(target=measure)  # the service calls the model from a worker thread too
    thread.start(); thread.join()
    print(json.dumps(out))
""")


def bare_model(bundles: Path, precision: str) -> dict:
    """One bare-encoder sample, taken only once no benchmark server is alive and the machine is quiet."""
    quiet = wait_quiet(lambda: [server.url for server in Server.live])
    result = subprocess.run([sys.executable, "-c", BARE, str(bundles), precision], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    sample = json.loads(result.stdout.strip().splitlines()[-1])
    sample["quiet"] = quiet
    print(f"  bare sample: {quiet}", file=sys.stderr, flush=True)
    return sample


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


CEILINGS = {"image_b16_per_s": True, "image_b1_ms": False, "text_b16_per_s": True, "text_b1_ms": False}


def ceilings(samples: list[dict]) -> dict[str, dict[str, Ceiling]]:
    """precision -> figure -> the samples taken through the run."""
    return {precision: {key: Ceiling(key, higher, [s[precision][key] for s in samples])
                        for key, higher in CEILINGS.items()} for precision in ("fp32", "bf16")}


def bare_cpu(samples: list[dict], precision: str) -> dict:
    """Per batch size, the bare encoder's lowest CPU ms per item over the samples (contamination only adds CPU
    time: the lowest is the honest cost), and the decode's."""
    swept = [s[precision] for s in samples if "text_cpu_ms" in s[precision]]
    return {kind: {int(b): min(s[kind][b] for s in swept) for b in swept[0][kind]}
            for kind in ("text_cpu_ms", "image_cpu_ms")} | {"decode_cpu_ms": min(s["decode_cpu_ms"] for s in swept)}


def stage_seconds(url: str) -> dict[str, float]:
    """The service's CPU seconds per stage so far (clipserve_stage_cpu_seconds_total)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r'^clipserve_stage_cpu_seconds_total\{stage="(\w+)"\} (\S+)$',
                                                  text, re.M)}


def measured_cell(server: Server, workload: str, concurrency: int, seconds: float, warmup: float) -> dict:
    """One load run, with what it cost: the service's CPU (master and worker, every thread) per item the model
    saw, its split by stage, and the mean model call."""
    calls0, items0 = batch_counts(server.url)
    stages0, cpu0 = stage_seconds(server.url), tree_cpu_seconds(server.proc.pid)
    row = load(server.url, workload, concurrency, seconds, warmup)
    cpu1, stages1 = tree_cpu_seconds(server.proc.pid), stage_seconds(server.url)
    calls1, items1 = batch_counts(server.url)
    items, calls = items1 - items0, calls1 - calls0
    row["mean_batch"] = items / calls if calls else None
    row["service_cpu_ms_per_item"] = 1000 * (cpu1 - cpu0) / items if items else None
    row["stage_cpu_ms_per_item"] = {k: 1000 * (stages1[k] - stages0.get(k, 0.0)) / items for k in stages1} if items else {}
    return row


def throughput(bundles: Path, seconds: float, warmup: float, rounds: int, bare: list[dict], precision: str) -> list[dict]:
    """Every cell `rounds` times, both configurations in turns (so both see the same background load);
    per cell the round with the median throughput is kept, the others are listed in `rounds_items_per_s`.
    The servers run one workload at a time; between workloads they are stopped and a bare-encoder sample is
    taken (appended to `bare`): the ceiling is sampled through the run, on a quiet machine, never beside them."""
    runs: dict[tuple, list[dict]] = {}
    logs = OUT / "serving-logs"
    for _ in range(rounds):
        for workload in WORKLOADS:
            with serving({**COMMON_ENV, "MODEL_DIR": str(bundles)}, logs / "batched.log") as batched, \
                    serving({**COMMON_ENV, "MODEL_DIR": str(bundles), **CONFIGS["naive"]}, logs / "naive.log") as naive:
                for concurrency in CONCURRENCY:
                    for name, server in (("batched", batched), ("naive", naive)):
                        row = measured_cell(server, workload, concurrency, seconds, warmup)
                        row["config"] = name
                        runs.setdefault((name, workload, concurrency), []).append(row)
                        print(f"  {name:8s} {workload:7s} c{concurrency:<3d} {row['items_per_s']:8.1f} items/s "
                              f"p50 {row['p50_ms'] or 0:8.1f} ms  cpu {row['service_cpu_ms_per_item'] or 0:6.2f} ms/item "
                              f"{row['statuses']}", file=sys.stderr, flush=True)
            bare.append(bare_model(bundles, precision))
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


def _plain(passed: bool) -> str:
    return "yes" if passed else "no"


def targets(ceils: dict, cpu: dict, rows: list[dict], over: dict | None, cold: dict | None,
            precision: str) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) per line of the issues; a verdict against a bare-encoder ceiling is
    'unsettled' unless its samples agree (bench/accounting.py)."""
    out = []
    if rows:
        bare = ceils[precision]
        img, img_naive = find(rows, "batched", "image1", 16), find(rows, "naive", "image1", 16)
        c = bare["image_b16_per_s"]
        out.append((f"images c16 >= 85% of bare {precision} batch 16 (fastest sample {c.best:.1f}/s)",
                    f"{img['items_per_s']:.1f}/s = {img['items_per_s'] / c.best:.0%}",
                    verdict(img["items_per_s"], c, 0.85)))
        out.append(("images c16 >= 2.5x naive fp32", f"{img['items_per_s'] / img_naive['items_per_s']:.2f}x",
                    _plain(img["items_per_s"] >= 2.5 * img_naive["items_per_s"])))
        txt, txt_naive = find(rows, "batched", "text1", 16), find(rows, "naive", "text1", 16)
        c = bare["text_b16_per_s"]
        out.append((f"texts c16, one per request, >= 0.5x bare {precision} batch 16 (fastest sample {c.best:.0f}/s)",
                    f"{txt['items_per_s']:.1f}/s = {txt['items_per_s'] / c.best:.2f}x", verdict(txt["items_per_s"], c, 0.5)))
        out.append(("texts c16 >= 10x naive (cache off)", f"{txt['items_per_s'] / txt_naive['items_per_s']:.2f}x "
                    f"({txt['items_per_s']:.0f} vs {txt_naive['items_per_s']:.0f}/s)",
                    _plain(txt["items_per_s"] >= 10 * txt_naive["items_per_s"])))
        t = accounting_row(txt, cpu, "text")
        out.append(("text serving overhead c16 <= 1 core-ms per text", f"{t['overhead']:.2f} ms (service "
                    f"{t['service']:.2f} - model {t['model']:.2f} at batch {t['batch']:.1f})", _plain(t["overhead"] <= 1)))
        i = accounting_row(img, cpu, "image")
        out.append(("images c16 <= decode + 1 core-ms per 640x480 JPEG beyond the model",
                    f"{i['overhead']:.2f} ms vs decode {cpu['decode_cpu_ms']:.2f} + 1",
                    _plain(i["overhead"] <= cpu["decode_cpu_ms"] + 1)))
        idle = find(rows, "batched", "text1", 1)
        c = bare["text_b1_ms"]
        out.append((f"idle one-text p50 <= 2x bare single-text encode (fastest sample {c.best:.1f} ms)",
                    f"{idle['p50_ms']:.1f} ms = {idle['p50_ms'] / c.best:.2f}x", verdict(idle["p50_ms"], c, 2.0)))
    if over is not None:
        statuses = set(over["all_statuses"])
        out.append(("overload c64 vs queue 32: only 200/429, no client errors, within 60 s",
                    f"{over['all_statuses']}, errors {over['client_errors']}, max {over['max_any_ms'] / 1000:.1f} s",
                    _plain(statuses <= {"200", "429"} and not over["client_errors"] and over["max_any_ms"] < 60_000)))
    for variant, r in (cold or {}).items():
        ratio = r["ours"]["median_s"] / r["naive"]["median_s"]
        out.append((f"cold start {variant} <= 0.6x naive", f"{r['ours']['median_s']:.2f} vs "
                    f"{r['naive']['median_s']:.2f} s = {ratio:.2f}x", _plain(ratio <= 0.6)))
    return out


def accounting_row(row: dict, cpu: dict, kind: str) -> dict:
    """Core-ms per item of one cell: the service's, the bare model's at the batch the service formed, the
    difference (serving overhead) and its split by the stages the service times."""
    batch = row["mean_batch"] or 1.0
    model = at_batch(cpu[f"{kind}_cpu_ms"], batch)
    stages = row["stage_cpu_ms_per_item"]
    in_request = stages.get("request", 0.0)
    out = {"batch": batch, "service": row["service_cpu_ms_per_item"], "model": model,
           "overhead": row["service_cpu_ms_per_item"] - model, "parse": stages.get("parse", 0.0),
           "tokenize": stages.get("tokenize", 0.0), "images": stages.get("images", 0.0),
           "serialize": stages.get("serialize", 0.0)}
    out["request_other"] = in_request - out["parse"] - out["tokenize"] - out["serialize"]
    out["unattributed"] = out["overhead"] - in_request - out["images"]
    out["client_per_item"] = row["client_cpu_ms_per_request"] / LOADGEN_WORKLOADS[row["workload"]][1]
    return out


def accounting_table(results: dict, kind: str) -> list[str]:
    cpu = results["bare_cpu"]
    head = "tokenize" if kind == "text" else "decode + preprocess"
    lines = [f"| {kind}s: workload | clients | items/s | mean model call | service | bare model at that batch | "
             f"overhead | parse | {head} | serialize | rest of the request thread | unattributed | load generator |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["throughput"]:
        if r["config"] != "batched" or not r["workload"].startswith(kind):
            continue
        a = accounting_row(r, cpu, kind)
        lines.append(f"| {r['workload']} | {r['concurrency']} | {r['items_per_s']:.1f} | {a['batch']:.1f} | "
                     f"{a['service']:.2f} | {a['model']:.2f} | {a['overhead']:.2f} | {a['parse']:.2f} | "
                     f"{a['tokenize' if kind == 'text' else 'images']:.2f} | {a['serialize']:.2f} | "
                     f"{a['request_other']:.2f} | {a['unattributed']:.2f} | {a['client_per_item']:.2f} |")
    return lines


def image_limit(results: dict) -> list[str]:
    """The best images/s the cores allow: every core-ms of a CPU spent on the model at the formed batch and
    on decoding, nothing else."""
    cpu, cores = results["bare_cpu"], results["cores"]
    lines = []
    for r in results["throughput"]:
        if r["config"] == "batched" and r["workload"] == "image1" and r["concurrency"] == 16:
            model = at_batch(cpu["image_cpu_ms"], r["mean_batch"] or 1)
            best = 1000 * cores / (model + cpu["decode_cpu_ms"])
            lines.append(f"Images, one 640x480 JPEG per request, 16 clients: model {model:.1f} core-ms at batch "
                         f"{r['mean_batch']:.1f} + decode {cpu['decode_cpu_ms']:.1f} core-ms = at best "
                         f"{best:.1f} images/s on {cores} CPUs; served {r['items_per_s']:.1f}/s = "
                         f"{r['items_per_s'] / best:.0%} of that (at batch 32: "
                         f"{1000 * cores / (cpu['image_cpu_ms'][32] + cpu['decode_cpu_ms']):.1f}/s).")
    return lines


def report(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; load average {results['load_before']} -> {results['load_after']}",
             f"PRECISION=auto resolved to {results['precision']}", "",
             "| bare encoder (english), samples on a quiet machine | fp32 min / median / max | "
             "bf16 min / median / max | spread (bf16) |", "|---|---|---|---|"]
    for key, label in (("image_b16_per_s", "images/s, batch 16"), ("image_b1_ms", "ms, one image"),
                       ("text_b16_per_s", "texts/s, batch 16"), ("text_b1_ms", "ms, one text")):
        f, b = (results["bare"][p][key] for p in ("fp32", "bf16"))
        lines.append(f"| {label} | {f['min']:.1f} / {f['median']:.1f} / {f['max']:.1f} | "
                     f"{b['min']:.1f} / {b['median']:.1f} / {b['max']:.1f} {b['samples']} | {b['spread']:.2f} |")
    cpu = results["bare_cpu"]
    lines += ["", f"| bare {results['precision']} core-ms per item, batch | " + " | ".join(map(str, BATCHES)) + " |",
              "|---|" + "---|" * len(BATCHES)]
    for kind in ("text", "image"):
        lines.append(f"| {kind} | " + " | ".join(f"{cpu[kind + '_cpu_ms'][b]:.2f}" for b in BATCHES) + " |")
    lines.append(f"| decode + preprocess, one 640x480 JPEG | {cpu['decode_cpu_ms']:.2f} |" + " |" * (len(BATCHES) - 1))
    if results["throughput"]:
        lines += ["", "| workload | clients | config | items/s (rounds) | req/s | p50 ms | p95 ms | p99 ms | "
                      "mean model call | non-200 |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["throughput"]:
            bad = {k: v for k, v in r["statuses"].items() if k != "200"} | r["client_errors"]
            lines.append(f"| {r['workload']} | {r['concurrency']} | {r['config']} | {r['items_per_s']:.1f} "
                         f"{r['rounds_items_per_s']} | {r['req_per_s']:.1f} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | "
                         f"{_ms(r['p99_ms'])} | {_ms(r['mean_batch'])} | {bad or 0} |")
        lines += ["", "CPU per item (core-ms): the service's (gunicorn master and worker, every thread) against the "
                  "bare model's at the batch the service formed; the overhead split by the stages the service "
                  "times; the load generator's CPU per item on the same cores.", ""]
        lines += accounting_table(results, "text") + [""] + accounting_table(results, "image") + [""] + image_limit(results)
    if results["cold"]:
        lines += ["", "| cold start | ours s (median) | naive s (median) | ours / naive | worker peak RSS MB ours / naive |",
                  "|---|---|---|---|---|"]
        for variant, r in results["cold"].items():
            lines.append(f"| {variant} | {r['ours']['median_s']:.2f} {r['ours']['all_s']} | {r['naive']['median_s']:.2f} "
                         f"{r['naive']['all_s']} | {r['ours']['median_s'] / r['naive']['median_s']:.2f}x | "
                         f"{r['ours']['worker_peak_rss_mb']:.0f} / {r['naive']['worker_peak_rss_mb']:.0f} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v if v != 'no' else '**no**'} |" for t, m, v in results["targets"]]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=1, help="times each throughput cell is measured")
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
    precision = results["precision"]
    print("bare encoder ...", file=sys.stderr, flush=True)
    bare = [bare_model(args.bundles, precision)]
    results["throughput"] = ([] if args.skip_throughput
                             else throughput(args.bundles, args.seconds, args.warmup, args.rounds, bare, precision))
    while len(bare) < MIN_SAMPLES:  # a short run still gets its five samples
        bare.append(bare_model(args.bundles, precision))
    ceils = ceilings(bare)
    results["bare"] = {p: {k: c.summary() for k, c in figures.items()} for p, figures in ceils.items()}
    results["bare_quiet"] = [s["quiet"] for s in bare]
    results["bare_cpu"] = bare_cpu(bare, precision)
    results["cores"] = len(os.sched_getaffinity(0))
    results["overload"] = None if args.skip_overload else overload(args.bundles, max(args.seconds, 20))
    results["cold"] = None if args.skip_cold else cold_starts(args.bundles, args.cold_repeats)
    results["load_after"] = load_average()
    results["targets"] = targets(ceils, results["bare_cpu"], results["throughput"], results["overload"],
                                 results["cold"], precision)
    print(report(results))
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
