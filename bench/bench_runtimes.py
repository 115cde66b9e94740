"""Runtimes compared: torch fp32 / bf16 against ONNX Runtime fp32 / int8, bare and through the service.

    python bench/bench_runtimes.py --json bench/out/runtimes.json      # about 30 minutes

In one run, real-size random bundles with their ONNX graphs (`python -m models.tiny --size real`):
1. the bare encoder per runtime and precision, both variants, each in a fresh process (so its load time and
   peak RSS are its own): images/s and texts/s at batch 16, one text's latency, the lowest cosine to torch
   fp32 over the same inputs, and whether torch was imported at all;
2. the service (english; multilingual too with --multilingual-service) per runtime: one 640x480 JPEG per
   request and one prompt per request at 16 clients, 8 images and 32 prompts per request at 16 clients,
   through bench/loadgen.py in another process (text cache off), against the bare torch fp32 batch-16 figures
   of the same run (the targets' yardstick);
3. cold start to the first 200 from POST /embed/text, and the worker's peak RSS, per runtime, both variants,
   median of --cold-repeats, runtimes alternating.
torch bf16 runs only where the CPU computes bf16 natively; on such a machine the torch fp32 vs ONNX fp32 rows
are the comparison for CPUs without it (the issue's targets are stated for those).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_serving import cold_start, load  # noqa: E402
from bench.common import DEFAULT_BUNDLES, OUT, REPO, ensure_bundles, load_average, machine, save_json, serving  # noqa: E402

BARE = textwrap.dedent("""
    import json, resource, sys, threading, time
    started = time.perf_counter()
    from models.loader import load_encoder
    from bench.common import median_seconds, photo_jpeg, prompts
    from inputs import decode_image
    variant, bundles, runtime, precision = sys.argv[1:5]
    enc = load_encoder(variant, bundles, precision=precision, runtime=runtime)
    loaded = time.perf_counter() - started
    images = [enc.prepare_image(decode_image(photo_jpeg(i), max_pixels=10**8)) for i in range(16)]
    texts = prompts(16)
    out = {"load_s": loaded, "runtime": enc.info.runtime, "precision": enc.info.precision}
    def measure():
        image_vectors = enc.encode_images(images)
        text_vectors = enc.encode_text(texts).embeddings
        out["image_b16_per_s"] = 16 / median_seconds(lambda: enc.encode_images(images), 3)
        out["text_b16_per_s"] = 16 / median_seconds(lambda: enc.encode_text(texts), 5)
        out["text_b1_ms"] = 1000 * median_seconds(lambda: enc.encode_text(texts[:1]), 20)
        out["vectors"] = {"image": image_vectors.tolist(), "text": text_vectors.tolist()}
    thread = threading.Thread(target=measure)  # the service calls the model from its inference thread
    thread.start(); thread.join()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["torch_imported"] = "torch" in sys.modules
    print(json.dumps(out))
""")


def configs(native_bf16: bool) -> list[tuple[str, str]]:
    rows = [("torch", "fp32")] + ([("torch", "bf16")] if native_bf16 else []) + [("onnx", "fp32"), ("onnx", "int8")]
    return rows


def bare(variant: str, bundles: Path, runtime: str, precision: str) -> dict:
    result = subprocess.run([sys.executable, "-c", BARE, variant, str(bundles), runtime, precision], cwd=REPO,
                            capture_output=True, text=True, timeout=1800,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1][:300]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def min_cosine(a: list, b: list) -> float:
    import numpy as np

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.min(np.sum(x * y, axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)))


def bare_table(bundles: Path, native_bf16: bool) -> dict:
    table: dict = {}
    for variant in ("english", "multilingual"):
        rows = {}
        for runtime, precision in configs(native_bf16):
            rows[f"{runtime} {precision}"] = bare(variant, bundles, runtime, precision)
            print(f"  bare {variant} {runtime} {precision}: "
                  f"{ {k: round(v, 2) for k, v in rows[f'{runtime} {precision}'].items() if isinstance(v, float)} }",
                  file=sys.stderr, flush=True)
        reference = rows["torch fp32"].get("vectors")
        for row in rows.values():
            vectors = row.pop("vectors", None)
            if vectors and reference:
                row["min_cosine_to_torch_fp32"] = {k: round(min_cosine(reference[k], vectors[k]), 6)
                                                   for k in ("image", "text")}
        table[variant] = rows
    return table


SERVICE_CELLS = (("image1", 16), ("text1", 16), ("image8", 16), ("text32", 16))


def service_table(bundles: Path, variant: str, native_bf16: bool, seconds: float) -> dict:
    table = {}
    dim = 512 if variant == "english" else 640
    for runtime, precision in configs(native_bf16):
        env = {"MODEL_DIR": str(bundles), "MODEL_VARIANT": variant, "RUNTIME": runtime, "PRECISION": precision,
               "TEXT_CACHE_SIZE": "0", "LOG_LEVEL": "WARNING"}
        cells = {}
        with serving(env, OUT / "runtime-logs" / f"{variant}-{runtime}-{precision}.log") as server:
            for workload, concurrency in SERVICE_CELLS:
                row = load(server.url, workload, concurrency, seconds, 2.0, dim=dim)
                cells[f"{workload} c{concurrency}"] = {k: row[k] for k in ("items_per_s", "p50_ms", "p99_ms",
                                                                            "statuses")}
                print(f"  service {variant} {runtime} {precision} {workload} c{concurrency}: "
                      f"{row['items_per_s']:.1f}/s", file=sys.stderr, flush=True)
        table[f"{runtime} {precision}"] = cells
    return table


def cold_table(bundles: Path, native_bf16: bool, repeats: int) -> dict:
    results: dict = {}
    for variant in ("english", "multilingual"):
        runs: dict[str, list[dict]] = {f"{r} {p}": [] for r, p in configs(native_bf16)}
        for i in range(repeats):
            for runtime, precision in configs(native_bf16)[:: 1 if i % 2 == 0 else -1]:
                env = {"RUNTIME": runtime, "PRECISION": precision}
                runs[f"{runtime} {precision}"].append(cold_start(bundles, variant, "handler.wsgi:app", env))
        results[variant] = {name: {"median_s": round(statistics.median(r["seconds"] for r in rs), 2),
                                   "all_s": [round(r["seconds"], 2) for r in rs],
                                   "worker_peak_rss_mb": round(max(r["worker_peak_rss_mb"] for r in rs))}
                            for name, rs in runs.items()}
        print(f"  cold {variant}: {results[variant]}", file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--multilingual-service", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: bare,service,cold")
    parser.add_argument("--json", type=Path, default=OUT / "runtimes.json")
    args = parser.parse_args()
    from models.precision import has_native_bf16

    ensure_bundles(args.bundles, ["english", "multilingual"])
    native = has_native_bf16()
    skip = set(args.skip.split(","))
    results: dict = {"machine": machine(), "native_bf16": native, "load_before": load_average(),
                     "command": " ".join(["python", *sys.argv])}
    if "bare" not in skip:
        results["bare"] = bare_table(args.bundles, native)
        save_json(args.json, results)
    if "service" not in skip:
        results["service"] = {"english": service_table(args.bundles, "english", native, args.seconds)}
        if args.multilingual_service:
            results["service"]["multilingual"] = service_table(args.bundles, "multilingual", native, args.seconds)
        save_json(args.json, results)
    if "cold" not in skip:
        results["cold"] = cold_table(args.bundles, native, args.cold_repeats)
    results["load_after"] = load_average()
    save_json(args.json, results)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
