"""Where a text's core-ms go: the real gunicorn on a real-size bundle, profiled from outside, per thread.

    python bench/profile_text.py                                  # text1 at 1 and 16 clients, text32 at 16
    python bench/profile_text.py --env ORT_SPIN=0 --json bench/out/profile-nospin.json

Per cell, three passes over the same load (bench/loadgen.py in its own process):
1. clean: each thread's utime + stime from /proc/<worker>/task (the profilers below perturb it), grouped by what
   the thread is (py-spy names the Python threads; the threads Python does not know are the model runtime's own
   pool: ONNX Runtime's or OpenMP's), with the master's; items and model calls from /metrics;
2. ``perf record`` (every thread, native code, on-CPU samples only): per thread group, the share in the model
   runtime's library, the Python interpreter, the kernel (network and futex syscalls, scheduling) and libc;
3. ``py-spy record`` without native frames (Python threads, on-CPU only): the request threads' Python time by the
   innermost stage it is in (HTTP, JSON, validation, tokenizing, the hand-off to the batcher, logging, metrics).
The bare encoder (the same runtime, precision and threads the service resolves) gives the model's core-ms per
text at each batch size, so the table reads: service core-ms per text = model at the batch formed + each
overhead, every core-ms accounted to a thread and, within it, to a library or a stage.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.accounting import at_batch, wait_quiet  # noqa: E402
from bench.common import DEFAULT_BUNDLES, OUT, REPO, Server, machine, save_json, serving  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")
CELLS = [("text1", 1), ("text1", 16), ("text32", 16)]

# Python stages, innermost first: a py-spy stack is charged to the first of these its innermost frames match.
STAGES = [
    ("tokenize", re.compile(r"models/(clip_tokenizer|hf_tokenizer|truncation|onnx_tower|encoder)\.py|tokenizers|ftfy"
                            r"|regex|html")),
    ("JSON", re.compile(r"json|orjson|jsonio\.py|base64")),
    ("validation", re.compile(r"handler/(schemas|parsing)\.py")),
    ("hand-off to the batcher", re.compile(r"engine/(batcher|service|models)\.py|concurrent/futures|threading\.py")),
    ("logging", re.compile(r"logging/|infra/logs\.py")),
    ("metrics and tracing", re.compile(r"observability\.py|prometheus|traces\.py|tracing\.py")),
    ("HTTP (gunicorn, Flask, werkzeug)", re.compile(r"gunicorn/|flask/|werkzeug/|socket|selectors|http/|email/")),
]
# An innermost frame that only blocks (a condition's or a lock's wait): not CPU, whatever py-spy's idle check says.
_WAITING = re.compile(r"^([\w.]+\.)?(wait|acquire|_wait_for_tstate_lock|select|poll|get) "
                      r"\((threading|selectors|concurrent/futures/\w+|queue)\.py")
LIBRARIES = [("model runtime", re.compile(r"onnxruntime|libtorch|libgomp|libiomp|mkl|dnnl|libc10")),
             ("Python interpreter", re.compile(r"libpython|python3")),
             ("kernel", re.compile(r"kernel")),
             ("libc", re.compile(r"libc\.so|libm\.so|ld-linux"))]

BARE = textwrap.dedent("""
    import json, sys, threading, time
    from bench.common import prompts
    from models.loader import load_encoder
    out = {}
    def measure():
        enc = load_encoder(sys.argv[2], sys.argv[1], precision=sys.argv[3], runtime=sys.argv[4])
        texts = prompts(64)
        prepared = [enc.prepare_text(t) for t in texts]
        out["runtime"], out["precision"] = enc.info.runtime, enc.info.precision
        def per_item(b, repeats):
            batch = prepared[:b]
            enc.encode_prepared_texts(batch)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                enc.encode_prepared_texts(batch)
            return 1000 * (time.process_time() - cpu) / (repeats * b), 1000 * (time.perf_counter() - wall) / repeats
        out["cpu_ms"], out["wall_ms"] = {}, {}
        for b in (1, 2, 4, 8, 16, 32):
            out["cpu_ms"][b], out["wall_ms"][b] = per_item(b, max(5, 128 // b))
    thread = threading.Thread(target=measure)  # the service calls the model from a worker thread too
    thread.start(); thread.join()
    print(json.dumps(out))
""")


def bare(bundles: Path, variant: str, env: dict[str, str]) -> dict:
    """The model alone at batch 1-32, sampled on a quiet machine with the service's runtime settings."""
    wait_quiet(lambda: [s.url for s in Server.live])
    result = subprocess.run([sys.executable, "-c", BARE, str(bundles), variant, env.get("PRECISION", "auto"),
                             env.get("RUNTIME", "auto")], cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env})
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    sample = json.loads(result.stdout.strip().splitlines()[-1])
    return {k: {int(b): v for b, v in d.items()} if isinstance(d, dict) else d for k, d in sample.items()}


def thread_cpu(pid: int) -> dict[int, float]:
    """tid -> CPU seconds (utime + stime) of every live thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def worker_pid(server: Server) -> int:
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    return int(children[0])


def python_thread_names(pid: int) -> dict[int, str]:
    """tid -> the Python thread's name, from ``py-spy dump``; threads it does not list run no Python code."""
    dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    return {int(tid): name for tid, name in re.findall(r'^Thread (\d+) \(\w+\): "([^"]*)"', dump, re.M)}


def group_of(tid: int, pid: int, names: dict[int, str], decode_pool: set[int]) -> str:
    name = names.get(tid)
    if tid == pid:
        return "gunicorn main thread (accept, keep-alive)"
    if name is None:
        return "model runtime's thread pool"
    if name == "clipserve-inference":
        return "inference thread"
    if tid in decode_pool:
        return "decode pool"
    if name.startswith("ThreadPoolExecutor"):
        return "request threads"
    return f"other ({name})"


def counts(url: str) -> tuple[float, float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    calls = sum(float(v) for v in re.findall(r'^clipserve_batch_size_count\{[^}]*\} (\S+)$', text, re.M))
    items = sum(float(v) for v in re.findall(r'^clipserve_batch_size_sum\{[^}]*\} (\S+)$', text, re.M))
    return calls, items


def load(url: str, workload: str, concurrency: int, seconds: float, warmup: float) -> dict:
    spec = {"url": url, "workload": workload, "concurrency": concurrency, "seconds": seconds, "warmup": warmup,
            "dim": 512, "timeout": 120}
    result = subprocess.run([sys.executable, str(REPO / "bench" / "loadgen.py"), json.dumps(spec)], cwd=REPO,
                            capture_output=True, text=True, timeout=seconds + warmup + 240)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def clean_pass(server: Server, pid: int, names: dict[int, str], workload: str, concurrency: int, seconds: float,
               warmup: float) -> dict:
    """Load with no profiler attached: core-ms per text by thread group. The counters cover warm-up and the
    measured seconds alike, so the CPU is divided by the items the model saw over the same span."""
    calls0, items0 = counts(server.url)
    threads0, master0 = thread_cpu(pid), thread_cpu(server.proc.pid)
    row = load(server.url, workload, concurrency, seconds, warmup)
    threads1, master1 = thread_cpu(pid), thread_cpu(server.proc.pid)
    calls1, items1 = counts(server.url)
    items, calls = items1 - items0, calls1 - calls0
    by_group: dict[str, float] = collections.Counter()
    for tid, cpu in threads1.items():
        by_group[group_of(tid, pid, names, set())] += cpu - threads0.get(tid, 0.0)
    by_group["gunicorn master"] = sum(master1.values()) - sum(master0.values())
    return {"items_per_s": row["items_per_s"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"],
            "statuses": row["statuses"], "mean_batch": items / calls if calls else None, "items": items,
            "core_ms_per_text": {g: 1000 * s / items for g, s in by_group.items()} if items else {}}


def perf_pass(server: Server, pid: int, names: dict[int, str], workload: str, concurrency: int, seconds: float,
              warmup: float) -> dict[str, dict[str, float]]:
    """Share of each thread group's on-CPU samples by library (perf sees native code and every thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        recorder = subprocess.Popen(["perf", "record", "-F", "499", "-p", str(pid), "-o", str(data), "--",
                                     "sleep", str(seconds + warmup)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load(server.url, workload, concurrency, seconds, warmup)
        recorder.wait(timeout=120)
        report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "pid,dso", "-g", "none",
                                 "--stdio"], capture_output=True, text=True, timeout=300).stdout
    shares: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for percent, tid, dso in re.findall(r"^\s+([\d.]+)%\s+(\d+):\S+\s+(\S+)", report, re.M):
        library = next((name for name, pattern in LIBRARIES if pattern.search(dso)), "other")
        shares[group_of(int(tid), pid, names, set())][library] += float(percent)
    return {g: {lib: v / sum(c.values()) for lib, v in c.items()} for g, c in shares.items()}


def pyspy_pass(server: Server, pid: int, workload: str, concurrency: int, seconds: float, warmup: float) -> dict:
    """The request threads' on-CPU Python samples by stage (the innermost frame that names one)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        recorder = subprocess.Popen(["py-spy", "record", "--nonblocking", "-r", "97", "--format", "raw", "-o", str(out),
                                     "-p", str(pid), "-d", str(int(seconds + warmup)), "--threads"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load(server.url, workload, concurrency, seconds, warmup)
        recorder.wait(timeout=120)
        lines = out.read_text().splitlines() if out.exists() else []
    stages: collections.Counter = collections.Counter()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if "ThreadPoolExecutor" not in stack or "handle_request" not in stack:
            continue  # request threads serving a request only
        frames = stack.split(";")[::-1]
        if _WAITING.match(frames[0]):
            continue  # blocked in a lock or condition: py-spy's idle check missed it; no CPU
        stage = next((name for frame in frames for name, pattern in STAGES if pattern.search(frame)), "other")
        stages[stage] += int(count)
    total = sum(stages.values()) or 1
    return {stage: n / total for stage, n in stages.most_common()}


def profile_cell(server: Server, workload: str, concurrency: int, seconds: float, warmup: float,
                 with_profilers: bool) -> dict:
    pid = worker_pid(server)
    load(server.url, workload, concurrency, 2.0, 0.5)  # every request thread exists before they are named
    names = python_thread_names(pid)
    cell = {"workload": workload, "clients": concurrency,
            **clean_pass(server, pid, names, workload, concurrency, seconds, warmup)}
    if with_profilers:
        cell["libraries"] = perf_pass(server, pid, names, workload, concurrency, seconds, warmup)
        cell["request_stages"] = pyspy_pass(server, pid, workload, concurrency, seconds, warmup)
    print(f"  {workload} c{concurrency}: {cell['items_per_s']:.1f} items/s p50 {cell['p50_ms']:.1f} ms, batch "
          f"{cell['mean_batch']:.1f}, core-ms/text {sum(cell['core_ms_per_text'].values()):.2f}", file=sys.stderr)
    return cell


def naive_one_text(env: dict[str, str], seconds: float, warmup: float) -> dict:
    """One text, one client, against the naive app (bench/naive_app.py: one Flask view calling open_clip, fp32)."""
    naive = Server({**env, "PRECISION": "fp32"}, OUT / "serving-logs" / "naive.log", "bench.naive_app:app")
    try:
        deadline = time.monotonic() + 300
        while True:  # the naive app has no /health: ready once it embeds
            try:
                if requests.post(f"{naive.url}/embed/text", json={"texts": ["a cat"]}, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or naive.proc.poll() is not None:
                raise RuntimeError(f"the naive app did not start; see {naive.log_path}")
            time.sleep(0.2)
        row = load(naive.url, "text1", 1, seconds, warmup)
        return {k: row[k] for k in ("items_per_s", "p50_ms", "p99_ms", "statuses")}
    finally:
        naive.stop()


def table(results: dict) -> str:
    cpu = results["bare"]["cpu_ms"]
    lines = [f"Machine: {results['machine']}; runtime {results['bare']['runtime']}, precision "
             f"{results['bare']['precision']}; env {results['env'] or 'defaults'}", "",
             "| bare model, batch | " + " | ".join(str(b) for b in cpu) + " |", "|---|" + "---|" * len(cpu),
             "| core-ms per text | " + " | ".join(f"{v:.2f}" for v in cpu.values()) + " |",
             "| wall ms per call | " + " | ".join(f"{v:.2f}" for v in results["bare"]["wall_ms"].values()) + " |", ""]
    for cell in results["cells"]:
        total = sum(cell["core_ms_per_text"].values())
        if not cell["workload"].startswith("text"):  # images: the check that they did not get worse
            lines += [f"**{cell['workload']}, {cell['clients']} clients**: {cell['items_per_s']:.1f} images/s, p50 "
                      f"{cell['p50_ms']:.1f} ms, p99 {cell['p99_ms']:.1f} ms, "
                      f"mean model call {cell['mean_batch']:.1f}, "
                      f"{total:.2f} core-ms per image.", ""]
            continue
        model = at_batch(cpu, cell["mean_batch"] or 1)
        lines += [f"**{cell['workload']}, {cell['clients']} clients**: {cell['items_per_s']:.1f} texts/s, p50 "
                  f"{cell['p50_ms']:.1f} ms, p99 {cell['p99_ms']:.1f} ms, mean model call {cell['mean_batch']:.1f}; "
                  f"{total:.2f} core-ms per text against the bare model's {model:.2f} at that batch "
                  f"(overhead {total - model:.2f}).", "",
                  "| thread group | core-ms per text | where (perf: share of its samples) |", "|---|---|---|"]
        for group, ms in sorted(cell["core_ms_per_text"].items(), key=lambda kv: -kv[1]):
            where = cell.get("libraries", {}).get(group, {})
            split = ", ".join(f"{lib} {share:.0%}" for lib, share in sorted(where.items(), key=lambda kv: -kv[1])
                              if share >= 0.02)
            lines.append(f"| {group} | {ms:.2f} | {split} |")
        if cell.get("request_stages"):
            request_ms = cell["core_ms_per_text"].get("request threads", 0.0)
            lines += ["", "| request threads' Python, by stage | core-ms per text |", "|---|---|"]
            lines += [f"| {stage} | {share * request_ms:.2f} |" for stage, share in cell["request_stages"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--variant", default="english")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--cells", default=",".join(f"{w}:{c}" for w, c in CELLS), help="workload:clients,...")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the service (repeatable)")
    parser.add_argument("--no-profilers", action="store_true", help="the clean pass only")
    parser.add_argument("--naive", action="store_true", help="also one text, one client, against bench/naive_app.py")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    cells = [(w, int(c)) for w, c in (cell.split(":") for cell in args.cells.split(","))]
    results = {"machine": machine(), "env": env, "cells": [], "bare": bare(args.bundles, args.variant, env)}
    service_env = {"MODEL_VARIANT": args.variant, "MODEL_DIR": str(args.bundles), "METRICS_ENABLED": "true",
                   "TEXT_CACHE_SIZE": "0", **env}
    with serving(service_env, OUT / "serving-logs" / "profile.log") as server:
        for workload, concurrency in cells:
            results["cells"].append(profile_cell(server, workload, concurrency, args.seconds, args.warmup,
                                                 not args.no_profilers))
    if args.naive:
        results["naive_text1_c1"] = naive_one_text(service_env, args.seconds, args.warmup)
    print(table(results))
    if "naive_text1_c1" in results:
        naive = results["naive_text1_c1"]
        print(f"naive app (bench/naive_app.py, fp32), one text, one client: {naive['items_per_s']:.1f} texts/s, "
              f"p50 {naive['p50_ms']:.1f} ms, p99 {naive['p99_ms']:.1f} ms")
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
