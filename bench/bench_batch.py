"""Throughput of clipserve-batch on a real-size random bundle: --local, and against a local gunicorn.

    python bench/bench_batch.py                      # 200 images + 400 texts, english, both modes
    python bench/bench_batch.py --images 100 --texts 200 --modes local

Makes (once) a `real`-size english bundle with random weights in bench/out/bundles-real (speed does not
depend on weight values), 640x480 JPEG photos-like images in bench/out/images, and runs the real
CLI as a subprocess for each case; prints a Markdown table of rows/s from the CLI's own summary.
Images are passed as local files (the endpoint case sends them as base64) or, with `urls`, as
URLs served from a loopback HTTP server. Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DEFAULT_BUNDLES, OUT, REPO, ensure_bundles, load_average, machine, serving  # noqa: E402


def ensure_images(folder: Path, count: int) -> list[Path]:
    """Smooth random 640x480 JPEGs (about 20-40 KB, like photos; noise would be 10x bigger)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            rng = np.random.default_rng(i)
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def write_inputs(folder: Path, images: list[Path], texts: int, image_base: str | None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    words = [
        "a",
        "photo",
        "of",
        "the",
        "red",
        "blue",
        "small",
        "large",
        "dog",
        "cat",
        "house",
        "tree",
        "car",
        "on",
        "in",
        "under",
        "near",
        "street",
        "beach",
    ]
    rng = np.random.default_rng(0)
    inputs = {"images": folder / "images.csv", "texts": folder / "texts.csv"}
    with inputs["images"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image"])
        for p in images:
            w.writerow([p.stem, f"{image_base}/{p.name}" if image_base else str(p)])
    with inputs["texts"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i in range(texts):
            w.writerow([f"t{i}", " ".join(rng.choice(words, size=int(rng.integers(4, 12))))])
    return inputs


@contextlib.contextmanager
def gunicorn(model_dir: Path, variant: str, threads: int) -> Iterator[str]:
    env = {"MODEL_DIR": str(model_dir), "MODEL_VARIANT": variant, "ALLOW_PRIVATE_URLS": "true",
           "HTTP_THREADS": str(threads)}
    with serving(env, OUT / "gunicorn.log") as server:
        yield server.url


@contextlib.contextmanager
def image_server(folder: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def run_cli(command: str, src: Path, target: list[str], batch_size: int, concurrency: int) -> dict:
    out = OUT / "runs" / f"{src.stem}-{'local' if '--local' in target else 'endpoint'}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "batch",
        command,
        "--input",
        str(src),
        "--output",
        str(out),
        *target,
        "--batch-size",
        str(batch_size),
        "--concurrency",
        str(concurrency),
        "--progress-interval",
        "3600",
    ]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary["wall_s"] = round(wall, 1)
    summary["cmd"] = " ".join(["clipserve-batch", command, *cmd[4:]]).replace(str(REPO) + "/", "")
    if summary["errors"]:
        raise SystemExit(f"unexpected row errors: {summary['errors']}")
    return summary


def encoder_reference(model_dir: Path, variant: str, images: list[Path], texts: Path, batch_size: int) -> dict:
    """The encoder alone on the same inputs (decode + preprocess + forward, no CLI, no HTTP), in a
    subprocess like the CLI runs: the reference the CLI figures should be read against."""
    code = f"""
import csv, json, threading, time
from inputs import decode_image
from models.loader import load_encoder
enc = load_encoder({variant!r}, {str(model_dir)!r}, precision="auto")  # as the service and the CLI default
paths = {[str(p) for p in images]!r}
texts = [r["text"] for r in csv.DictReader(open({str(texts)!r}))]
bs = {batch_size}
def loops(out):
    t = time.monotonic()
    for i in range(0, len(paths), bs):
        enc.encode_images([enc.prepare_image(decode_image(open(p, "rb").read(), max_pixels=10**8,
                                                          draft_size=2 * enc.info.image_size))
                           for p in paths[i:i + bs]])
    out["images"] = [len(paths), time.monotonic() - t]
    t = time.monotonic()
    for i in range(0, len(texts), bs):
        enc.encode_text(texts[i:i + bs])
    out["texts"] = [len(texts), time.monotonic() - t]
# In a worker thread, as the CLI and the service call the model: on a loaded machine the text tower
# ran about 4x slower when called from the main thread (see bench/RESULTS.md, batch section).
out = {{}}
worker = threading.Thread(target=loops, args=(out,))
worker.start()
worker.join()
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="english", choices=("english", "multilingual"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=None, help="default: 2 local, 4 endpoint")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["encoder", "local", "endpoint"],
        choices=("encoder", "local", "endpoint"),
        help="encoder: the model alone in a loop, as a reference for the other two",
    )
    parser.add_argument("--urls", action="store_true", help="pass images as loopback URLs instead of local files")
    parser.add_argument("--http-threads", type=int, default=8)
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = DEFAULT_BUNDLES
    ensure_bundles(model_dir, [args.variant])
    images = ensure_images(OUT / "images", args.images)
    results = []
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(image_server(OUT / "images")) if args.urls else None
        inputs = write_inputs(OUT / "inputs", images, args.texts, base)
        for mode in args.modes:
            if mode == "encoder":
                ref = encoder_reference(model_dir, args.variant, images, inputs["texts"], args.batch_size)
                for kind in ("images", "texts"):
                    n, seconds = ref[kind]
                    if n:
                        summary = {
                            "written": n,
                            "seconds": round(seconds, 3),
                            "rows_per_s": round(n / seconds, 2),
                            "wall_s": round(seconds, 1),
                            "cmd": "encoder loop in bench_batch.py",
                        }
                        results.append((mode, kind, summary))
                        print(f"{mode:8s} {kind:6s} {n:5d} rows {seconds:7.1f} s {n / seconds:7.2f} rows/s", flush=True)
                continue
            if mode == "local":
                target = ["--local", "--model-dir", str(model_dir), "--variant", args.variant]
                if args.urls:
                    target.append("--allow-private-urls")
                concurrency = args.concurrency or 2
            else:
                url = stack.enter_context(gunicorn(model_dir, args.variant, args.http_threads))
                target = ["--endpoint", url]
                concurrency = args.concurrency or 4
            for kind in ("images", "texts"):
                if (args.images if kind == "images" else args.texts) <= 0:
                    continue
                summary = run_cli("embed", inputs[kind], target, args.batch_size, concurrency)
                results.append((mode, kind, summary))
                print(
                    f"{mode:8s} {kind:6s} {summary['written']:5d} rows {summary['seconds']:7.1f} s "
                    f"{summary['rows_per_s']:7.2f} rows/s (wall {summary['wall_s']} s)",
                    flush=True,
                )
    print(
        f"\nMachine: {machine()}, load average {load_average()}; {args.variant} `real`-size random bundle; batch {args.batch_size}; "
        f"images {'as loopback URLs' if args.urls else 'as local files'} (640x480 JPEG)\n"
    )
    print("| target | rows | rows | seconds | rows/s |\n|---|---|---|---|---|")
    for mode, kind, s in results:
        print(f"| {mode} | {kind} | {s['written']} | {s['seconds']} | {s['rows_per_s']} |")
    print()
    for mode, kind, s in results:
        print(f"- {mode} {kind}: `{s['cmd']}`")


if __name__ == "__main__":
    main()
