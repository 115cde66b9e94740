"""The GPU checks and benchmark, as one prepared script for a machine with an NVIDIA GPU (at most 8 minutes).

    bash bench/gpu_wheels.sh       # here, once: the ~17 MB of wheels the GPU machine lacks (bench/out/gpu-wheels)
    bash bench/gpu_run.sh          # there: installs them offline, runs this script, writes $OUT/gpu.json
    python bench/bench_gpu.py --rehearse                             # here, on the CPU: the same code, tiny sizes

It makes a real-size random english bundle (`python -m models.tiny --size real --no-onnx`), then:
1. the GPU tests (pytest): fp16/bf16 and the GPU JPEG decoder against the exact CPU path, a real CUDA
   out-of-memory retried item by item, corrupt and truncated JPEGs on the GPU path;
2. exactness on the real-size bundle: fp16 and bf16 towers against CPU fp32 (cosine >= 0.999 per tower), and the
   GPU decoder's embeddings against the exact CPU decode on photos and large images;
3. the bare encoder: images/s and texts/s at batch 1, 32, 128, 256 in fp32 and the reduced precisions;
4. the decode ceiling: images/s that 1, 4 and 8 decode threads reach (load_images as the service calls it),
   Pillow on the CPU against nvJPEG, no model;
5. the real gunicorn (DEVICE=cuda) pinned to 4 or 8 cores or unpinned (a Cloud Run instance's vCPUs; the load
   generator runs on the other cores): one 640x480 JPEG and 16 per request at 16 and 64 clients with
   IMAGE_DECODE=cpu and gpu, 32 prompts per request at 16 clients;
6. `clipserve-batch embed --local` on 10,000 local JPEG files.
It prints JSON and writes it to --json; bench/RESULTS.md gets the figures by hand, with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import OUT, REPO, machine, photo_jpeg, save_json, serving  # noqa: E402

GPU_TESTS = ["tests/models/test_device_jpeg.py", "tests/api/test_api_device.py"]

EXACTNESS_AND_BARE = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from bench.common import photo_jpeg, prompts
    from inputs import ImageLimits, decode_image, load_images
    from models.loader import load_encoder
    bundles, device, batches = sys.argv[1], sys.argv[2], [int(b) for b in sys.argv[3].split(",")]
    out = {"exactness": {}, "bare": {}}
    photos = [photo_jpeg(i % 16) for i in range(max(batches))]
    large = [photo_jpeg(100 + i, 4000, 3000) for i in range(2)]
    images = [decode_image(p, max_pixels=10**8) for p in photos]
    texts = prompts(max(batches))
    reference = load_encoder("english", bundles, precision="fp32", runtime="torch", device="cpu")
    ref_img = reference.encode_images([reference.prepare_image(im) for im in images[:16]])
    ref_large = reference.encode_images([reference.prepare_image(decode_image(p, max_pixels=10**8)) for p in large])
    ref_txt = reference.encode_text(texts[:16]).embeddings
    def cosine(a, b):
        return float(np.min(np.sum(a * b, axis=1)))
    for precision in (["fp32", "fp16", "bf16"] if device == "cuda" else ["fp32"]):
        enc = load_encoder("english", bundles, precision=precision, runtime="torch", device=device,
                           image_decode="gpu" if device == "cuda" else "cpu")
        prepared = [enc.prepare_image(im) for im in images]
        row = {"image_min_cosine_to_cpu_fp32": cosine(enc.encode_images(prepared[:16]), ref_img),
               "text_min_cosine_to_cpu_fp32": cosine(enc.encode_text(texts[:16]).embeddings, ref_txt),
               "device": enc.info.device, "gpu": enc.info.gpu, "image_decode": enc.info.image_decode}
        if enc.info.image_decode == "gpu":
            decoded = load_images(photos[:16], ImageLimits(), then=enc.prepare_image, encoded=enc.prepare_encoded_image)
            row["gpu_decode_photos_min_cosine_to_cpu_fp32"] = cosine(enc.encode_images(decoded), ref_img)
            decoded = load_images(large, ImageLimits(), then=enc.prepare_image, encoded=enc.prepare_encoded_image)
            row["gpu_decode_4000x3000_min_cosine_to_cpu_fp32"] = cosine(enc.encode_images(decoded), ref_large)
        out["exactness"][precision] = row
        rows = {}
        for batch in batches:
            def run_images():
                enc.encode_images(prepared[:batch])
            def run_texts():
                enc.encode_text(texts[:batch])
            for name, fn in (("images", run_images), ("texts", run_texts)):
                fn()
                started = time.perf_counter(); fn(); fn(); fn()
                rows[f"{name}_b{batch}_per_s"] = 3 * batch / (time.perf_counter() - started)
        out["bare"][precision] = rows
    print(json.dumps(out))
""")

DECODE_CEILING = textwrap.dedent("""
    import json, sys, time
    from bench.common import photo_jpeg
    from inputs import ImageLimits, load_images
    from models.loader import load_encoder
    bundles, device, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    enc = load_encoder("english", bundles, precision="fp32", runtime="torch", device=device,
                       image_decode="gpu" if device == "cuda" else "cpu")
    photos = [photo_jpeg(i) for i in range(64)] * 4
    limits = ImageLimits(concurrency=threads, decode_concurrency=threads)
    out = {}
    for mode in (["cpu", "gpu"] if enc.info.image_decode == "gpu" else ["cpu"]):
        encoded = enc.prepare_encoded_image if mode == "gpu" else None
        load_images(photos[:32], limits, then=enc.prepare_image, encoded=encoded, draft_size=448)
        started = time.perf_counter()
        load_images(photos, limits, then=enc.prepare_image, encoded=encoded, draft_size=448)
        out[mode] = len(photos) / (time.perf_counter() - started)
    print(json.dumps(out))
""")

# (workload, clients, IMAGE_DECODE values)
SERVICE_CELLS = (("image1", 16, ("cpu", "gpu")), ("image1", 64, ("cpu", "gpu")), ("image16", 16, ("cpu", "gpu")),
                 ("image16", 64, ("cpu", "gpu")), ("text32", 16, ("cpu",)))


def make_bundles(out: Path, size: str) -> Path:
    if not (out / "english" / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "models.tiny", "--variant", "english", "--out", str(out), "--size", size,
                        "--no-onnx"], cwd=REPO, check=True)
    return out


def run_script(script: str, *args: str, cpus: set[int] | None = None, timeout: float = 600) -> dict:
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, preexec_fn=pin)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def gpu_tests() -> dict:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", *GPU_TESTS],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    return {"rc": result.returncode, "summary": result.stdout.strip().splitlines()[-1:],
            "failures": result.stdout[-4000:] if result.returncode else ""}


def core_sets(rehearse: bool) -> dict[str, set[int] | None]:
    """Server cores per cell: 4 and 8 (a Cloud Run GPU instance's vCPUs) and unpinned, where the machine allows."""
    cores = sorted(os.sched_getaffinity(0))
    sets: dict[str, set[int] | None] = {"all": None}
    for n in (4, 8):
        if len(cores) >= 2 * n or (rehearse and len(cores) > 1 and n == 4):
            sets[f"{n} cpus"] = set(cores[:min(n, len(cores) - 1)])
    return sets


def decode_ceiling(bundles: Path, device: str, sets: dict[str, set[int] | None]) -> dict:
    out = {}
    for name, cpus in sets.items():
        threads = len(cpus) if cpus else len(os.sched_getaffinity(0))
        out[name] = run_script(DECODE_CEILING, str(bundles), device, str(threads), cpus=cpus)
    return out


def service(bundles: Path, device: str, seconds: float, dim: int, sets: dict[str, set[int] | None]) -> dict:
    from bench.bench_serving import load

    cells = {}
    everything = set(os.sched_getaffinity(0))
    for name, cpus in sets.items():
        threads = str(len(cpus) if cpus else len(everything))
        for decode in ("cpu", "gpu") if device == "cuda" else ("cpu",):
            env = {"MODEL_DIR": str(bundles), "MODEL_VARIANT": "english", "DEVICE": device, "TEXT_CACHE_SIZE": "0",
                   "LOG_LEVEL": "WARNING", "HTTP_THREADS": "72", "QUEUE_SIZE": "2048", "MAX_ITEMS": "64",
                   "BATCH_MAX_SIZE": "128", "TORCH_THREADS": threads, "DECODE_CONCURRENCY": threads,
                   "IMAGE_DECODE": decode}
            with serving(env, OUT / "gpu-logs" / f"service-{name.replace(' ', '')}-{decode}.log", cpus=cpus) as server:
                if cpus:  # the load generators on the cores the server does not have
                    os.sched_setaffinity(0, everything - cpus)
                try:
                    for workload, clients, decodes in SERVICE_CELLS:
                        if decode in decodes:
                            row = load(server.url, workload, clients, seconds, 2.0, dim=dim)
                            cells[f"{workload} c{clients} decode={decode} {name}"] = {
                                k: row[k] for k in ("items_per_s", "p50_ms", "p99_ms", "statuses")}
                finally:
                    os.sched_setaffinity(0, everything)
    return cells


def batch_cli(bundles: Path, device: str, count: int) -> dict:
    folder = OUT / f"gpu-batch-{count}"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    pool = [photo_jpeg(i) for i in range(64)]
    for i in range(count):
        path = folder / "images" / f"{i}.jpg"
        if not path.exists():
            path.write_bytes(pool[i % len(pool)])
    (folder / "items.csv").write_text("id,image\n" + "".join(f"{i},images/{i}.jpg\n" for i in range(count)))
    output = folder / "emb.npy"
    output.unlink(missing_ok=True)
    env = {**os.environ, "DEVICE": device, "MODEL_DIR": str(bundles)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "batch", "embed", "--input", str(folder / "items.csv"),
                             "--output", str(output), "--image-column", "image", "--local", "--model-dir",
                             str(bundles), "--variant", "english", "--batch-size", "256", "--concurrency", "3"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return {"images": count, "seconds_with_model_load": round(seconds, 1), "images_per_s": count / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rehearse", action="store_true", help="on the CPU, tiny bundles: check the script runs")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=OUT / "gpu.json")
    args = parser.parse_args()
    started = time.monotonic()
    device = "cpu" if args.rehearse else "cuda"
    size = "tiny" if args.rehearse else "real"
    results: dict = {"machine": machine(), "device": device, "rehearsal": args.rehearse}

    def step(name: str, fn, *fn_args):  # noqa: ANN001, ANN202 - one failed step must not lose the others
        t = time.monotonic()
        try:
            results[name] = fn(*fn_args)
        except Exception as exc:  # noqa: BLE001
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
        print(f"{name}: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
        save_json(args.json, results)

    step("gpu_tests", gpu_tests)
    bundles = make_bundles(OUT / f"gpu-bundles-{size}", size)
    step("encoder", run_script, EXACTNESS_AND_BARE, str(bundles), device, "1,4,8" if args.rehearse else "1,32,128,256")
    encoder = results["encoder"]
    if "exactness" in encoder and device == "cuda":
        failing = {p: v for p, v in encoder["exactness"].items()
                   if min(x for k, x in v.items() if k.endswith("cosine_to_cpu_fp32")) < 0.999}
        results["exactness_ok"] = not failing
    sets = core_sets(args.rehearse)
    step("decode_ceiling", decode_ceiling, bundles, device, sets)
    step("service", service, bundles, device, 1.0 if args.rehearse else args.seconds, 32 if args.rehearse else 512,
         sets)
    step("batch_cli", batch_cli, bundles, device, 200 if args.rehearse else 10_000)
    results["seconds"] = round(time.monotonic() - started, 1)
    save_json(args.json, results)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
