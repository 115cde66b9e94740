"""Every variant side by side on this machine: size on disk, speed, memory and cold start, torch and ONNX.

    python bench/bench_variants.py --json bench/out/variants.json [--variants english,siglip2-b32,siglip2-b16]
                                   [--cold-repeats 3] [--precision fp32]

Real-size random bundles (`python -m models.tiny --size real`: speed and memory do not depend on weight values;
SigLIP's tokenizer is a 256k-entry random BPE standing in for Gemma's, see models/tiny.py). In one run, per
variant and runtime, each in a fresh process:
- the bare encoder: load time, RSS once loaded and at its peak, images/s at batch 16 (640x480 photo-like JPEGs,
  decoded and preprocessed outside the timing), texts/s at batch 16 and one text's latency;
- cold start: seconds from starting gunicorn to the first 200 from POST /embed/text, and the worker's peak RSS
  (median of --cold-repeats, runtimes alternating);
- the bundle's files a runtime reads, and the whole bundle, on disk.
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
from bench.bench_serving import cold_start  # noqa: E402
from bench.common import DEFAULT_BUNDLES, REPO, ensure_bundles, load_average, machine, save_json  # noqa: E402

BARE = textwrap.dedent("""
    import json, resource, sys, threading, time
    started = time.perf_counter()
    from models.loader import load_encoder
    from bench.common import median_seconds, photo_jpeg, prompts
    from inputs import decode_image
    variant, bundles, runtime, precision, repeats = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    enc = load_encoder(variant, bundles, precision=precision, runtime=runtime)
    out = {"load_s": time.perf_counter() - started, "runtime": enc.info.runtime, "precision": enc.info.precision}
    rss = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
    out["rss_loaded_mb"] = rss()
    images = [enc.prepare_image(decode_image(photo_jpeg(i), max_pixels=10**8)) for i in range(16)]
    texts = prompts(16)
    def measure():  # on another thread, as the service's inference thread calls the model
        out["image_b16_per_s"] = 16 / median_seconds(lambda: enc.encode_images(images), repeats)
        out["text_b16_per_s"] = 16 / median_seconds(lambda: enc.encode_text(texts), 5)
        out["text_b1_ms"] = 1000 * median_seconds(lambda: enc.encode_text(texts[:1]), 20)
    thread = threading.Thread(target=measure)
    thread.start(); thread.join()
    out["rss_after_work_mb"] = rss()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
""")


def bare(variant: str, bundles: Path, runtime: str, precision: str, repeats: int) -> dict:
    result = subprocess.run([sys.executable, "-c", BARE, variant, str(bundles), runtime, precision, str(repeats)],
                            cwd=REPO, capture_output=True, text=True, timeout=3600,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1][:300]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def disk(bundle: Path) -> dict:
    """MB on disk: what torch fp32 reads, what ONNX fp32 reads, and the whole bundle (bf16 and int8 copies too)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    sizes = {name: record["size"] for name, record in manifest["files"].items()}
    tokenizer = sum(size for name, size in sizes.items() if name.startswith("tokenizer") or name.endswith(".json"))
    weights = {manifest["clip"]["weights"], manifest["text"].get("weights")} - {None}
    onnx = {f"{manifest['onnx'][k]['file']}{ext}" for k in ("image", "text") for ext in ("", ".data")}
    mb = 1024 * 1024
    return {"torch_fp32_mb": (sum(sizes[n] for n in weights) + tokenizer) / mb,
            "onnx_fp32_mb": (sum(sizes.get(n, 0) for n in onnx) + tokenizer) / mb,
            "bundle_mb": sum(sizes.values()) / mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="english,siglip2-b32,siglip2-b16")
    parser.add_argument("--runtimes", default="torch,onnx")
    parser.add_argument("--precision", default="fp32", help="fp32 (no native bf16 on the CPU) or bf16 (torch only)")
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--image-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants, runtimes = args.variants.split(","), args.runtimes.split(",")
    ensure_bundles(args.bundles, variants)
    results: dict = {"machine": machine(), "load_before": load_average(), "precision": args.precision, "variants": {}}
    for variant in variants:
        entry = results["variants"][variant] = {"disk": disk(args.bundles / variant), "bare": {}, "cold": {}}
        for runtime in runtimes:
            if runtime == "onnx" and args.precision == "bf16":
                continue
            entry["bare"][runtime] = bare(variant, args.bundles, runtime, args.precision, args.image_repeats)
            print(f"{variant} {runtime}: {entry['bare'][runtime]}", file=sys.stderr, flush=True)
        runs: dict[str, list[dict]] = {r: [] for r in entry["bare"]}
        for i in range(args.cold_repeats):
            for runtime in (list(runs) if i % 2 == 0 else list(reversed(runs))):
                runs[runtime].append(cold_start(args.bundles, variant, "handler.wsgi:app",
                                                {"RUNTIME": runtime, "PRECISION": args.precision}))
        for runtime, rs in runs.items():
            entry["cold"][runtime] = {"median_s": statistics.median(r["seconds"] for r in rs),
                                      "all_s": [round(r["seconds"], 2) for r in rs],
                                      "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in rs)}
        print(f"{variant} cold: {entry['cold']}", file=sys.stderr, flush=True)
        save_json(args.json, results)
    results["load_after"] = load_average()
    save_json(args.json, results)
    print(table(results))


def table(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; precision {results['precision']}; load average "
             f"{results['load_before']} before, {results.get('load_after', '?')} after.", "",
             "| variant | runtime | on disk (read / bundle) | load | RSS loaded / peak | images/s (b16) | texts/s (b16) "
             "| one text | cold start | worker peak RSS |", "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, entry in results["variants"].items():
        for runtime, b in entry["bare"].items():
            if "error" in b:
                lines.append(f"| {variant} | {runtime} | error: {b['error']} |")
                continue
            cold = entry["cold"].get(runtime, {})
            read = entry["disk"][f"{runtime}_fp32_mb"]
            lines.append(
                f"| {variant} | {runtime} {b['precision']} | {read:,.0f} / {entry['disk']['bundle_mb']:,.0f} MB "
                f"| {b['load_s']:.2f} s | {b['rss_loaded_mb']:,.0f} / {b['peak_rss_mb']:,.0f} MB "
                f"| {b['image_b16_per_s']:.2f} | {b['text_b16_per_s']:.1f} | {b['text_b1_ms']:.1f} ms "
                f"| {cold.get('median_s', float('nan')):.2f} s | {cold.get('worker_peak_rss_mb', float('nan')):,.0f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
