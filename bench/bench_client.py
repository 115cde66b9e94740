"""The Python client's cost: texts/s and images/s through ``clipserve_client.Client`` against raw ``requests`` calls
sending the same requests, with 1 and 8 requests in flight, against the real gunicorn on a real-size bundle.

    python bench/bench_client.py [--texts 1024] [--images 128] [--rounds 2] [--json bench/out/client.json]

Both sides send chunks of the service's MAX_ITEMS (64) with base64 vectors; raw requests uses a thread pool of the
same size as the client's concurrency and a requests.Session per thread. The two alternate within each round, so
drift on a shared VM hits both. The client's extra work (planning chunks, base64 of the images it reads, decoding,
reassembly) should be lost in the service's time; the table says whether it is.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DEFAULT_BUNDLES, OUT, machine, photo_jpeg, prompts, save_json, serving  # noqa: E402

CHUNK = 64


def raw(url: str, path: str, field: str, items: list, concurrency: int) -> np.ndarray:
    """The same requests with requests: chunks of CHUNK, ``concurrency`` threads, results put back in order."""
    local = threading.local()

    def send(start: int) -> tuple[int, list[str]]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        response = session.post(url + path, json={field: items[start:start + CHUNK], "encoding_format": "base64"},
                                timeout=600)
        response.raise_for_status()
        return start, response.json()["embeddings"]

    rows: dict[int, list[str]] = {}
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for start, vectors in pool.map(send, range(0, len(items), CHUNK)):
            rows[start] = vectors
    flat = [v for start in sorted(rows) for v in rows[start]]
    return np.stack([np.frombuffer(base64.b64decode(v), "<f4") for v in flat])


def timed(fn) -> tuple[float, np.ndarray]:  # noqa: ANN001 - a zero-argument callable
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from clipserve_client import Client

    texts = prompts(args.texts)
    jpegs = [photo_jpeg(seed) for seed in range(args.images)]
    encoded = [base64.b64encode(j).decode() for j in jpegs]
    env = {"MODEL_VARIANT": "english", "MODEL_DIR": str(args.bundles), "TEXT_CACHE_SIZE": "0"}
    cells: dict[tuple[str, str, int], list[float]] = {}
    with serving(env, OUT / "serving-logs" / "client.log") as server:
        for _ in range(args.rounds):
            for concurrency in (1, 8):
                with Client(server.url, concurrency=concurrency) as clip:
                    for kind, count in (("texts", args.texts), ("images", args.images)):
                        if kind == "texts":
                            client_s, got = timed(lambda: clip.embed_text(texts).vectors)
                            raw_s, expected = timed(lambda: raw(server.url, "/embed/text", "texts", texts, concurrency))
                        else:
                            client_s, got = timed(lambda: clip.embed_image(jpegs).vectors)
                            raw_s, expected = timed(lambda: raw(server.url, "/embed/image", "images", encoded,
                                                                concurrency))
                        np.testing.assert_allclose(got, expected, atol=1e-5)
                        cells.setdefault((kind, "client", concurrency), []).append(count / client_s)
                        cells.setdefault((kind, "raw requests", concurrency), []).append(count / raw_s)
                        print(f"  {kind} c{concurrency}: client {count / client_s:.1f}/s, raw {count / raw_s:.1f}/s",
                              file=sys.stderr, flush=True)
    print(f"Machine: {machine()}; english real-size random bundle, default settings, {args.texts} texts and "
          f"{args.images} 640x480 JPEGs per run, {args.rounds} rounds (median)\n")
    print("| items | requests in flight | client items/s | raw requests items/s | client / raw |")
    print("|---|---|---|---|---|")
    results = []
    for kind in ("texts", "images"):
        for concurrency in (1, 8):
            client = statistics.median(cells[kind, "client", concurrency])
            plain = statistics.median(cells[kind, "raw requests", concurrency])
            results.append({"kind": kind, "concurrency": concurrency, "client_per_s": client, "raw_per_s": plain,
                            "rounds": {"client": cells[kind, "client", concurrency],
                                       "raw": cells[kind, "raw requests", concurrency]}})
            print(f"| {kind} | {concurrency} | {client:.1f} | {plain:.1f} | {client / plain:.2f} |")
    save_json(args.json, {"machine": machine(), "cells": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
