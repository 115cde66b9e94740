"""Search at scale: index build, open, recall and /search latency through the real gunicorn.

    python bench/bench_search.py [--n 1000000] [--queries 500] [--json bench/out/search.json]

Data (seeded, cached in bench/out/search-data): N unit vectors of dim 512 from a clustered distribution,
"diffuse clusters": 10,000 Gaussian clusters in a 64-d latent space (centres N(0, I), spread 1.0 inside
a cluster), mapped into 512-d by a fixed random matrix around a shared mean direction (0.6) plus small
full-rank noise (0.02), then normalized: a low intrinsic dimension and a cone, as CLIP embeddings have,
with clusters that overlap (a hard case for IVF, see RESULTS). Queries are fresh draws of the same
distribution. A uniform-random control (i.i.d. Gaussian, normalized) checks what recall means when
the data has no structure. Metadata: `category` (an integer 0-99, so one value keeps 1%) and `price`.

Everything is built by the production command (`clipserve-batch index build --input emb.npy --metadata
meta.csv --local`, real-size random english bundle) and served by the production gunicorn; load comes
from bench/loadgen.py in another process. The bare FAISS loop on the same queries, one thread, is the
ceiling.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (DEFAULT_BUNDLES, OUT, REPO, ensure_bundles, load_average, machine, prompts,  # noqa: E402
                          save_json, serving)

DIM = 512
DATA = OUT / "search-data"


# --- data ---------------------------------------------------------------------------------------------------


def diffuse_clusters(n: int, seed: int, latent: int = 64, centers: int = 10_000, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(DIM).astype(np.float32)
    mean /= np.linalg.norm(mean)
    mapping = (rng.standard_normal((latent, DIM)) / np.sqrt(latent)).astype(np.float32)
    centres = rng.standard_normal((centers, latent)).astype(np.float32)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        m = min(n, start + 100_000) - start
        z = centres[rng.integers(0, centers, m)] + spread * rng.standard_normal((m, latent), dtype=np.float32)
        x = 0.6 * mean + (z @ mapping) / np.sqrt(latent) + 0.02 * rng.standard_normal((m, DIM), dtype=np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def uniform(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_data(kind: str, n: int, queries: int) -> dict[str, Path]:
    """emb.image.npy + emb.ids.txt (what `merge` writes), meta.csv and queries.npy, made once per (kind, n)."""
    folder = DATA / f"{kind}-{n}"
    paths = {"emb": folder / "emb.npy", "vectors": folder / "emb.image.npy", "ids": folder / "emb.ids.txt",
             "meta": folder / "meta.csv", "queries": folder / "queries.npy"}
    if all(p.exists() for k, p in paths.items() if k != "emb"):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    make = diffuse_clusters if kind == "clustered" else uniform
    everything = make(n + queries, seed=0)
    np.save(paths["vectors"], everything[:n])
    np.save(paths["queries"], everything[n:])
    paths["ids"].write_text("".join(f"item{i}\n" for i in range(n)))
    rng = np.random.default_rng(1)
    with paths["meta"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "category", "price"])
        categories, prices = rng.integers(0, 100, n), np.round(rng.random(n) * 1000, 2)
        writer.writerows((f"item{i}", int(categories[i]), float(prices[i])) for i in range(n))
    return paths


# --- building -------------------------------------------------------------------------------------------------


def build(paths: dict[str, Path], out: Path, index_type: str, bundles: Path) -> dict:
    """The production build in a child process: wall time and the child's peak RSS."""
    if (out / "manifest.json").exists():
        return json.loads((out.parent / f"{out.name}.build.json").read_text())
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "batch", "index", "build", "--input", str(paths["emb"]),
                    "--metadata", str(paths["meta"]), "--output", str(out), "--local", "--model-dir", str(bundles),
                    "--index-type", index_type], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {"index_type": index_type, "build_s": round(time.perf_counter() - started, 1),
              "peak_rss_mb": round(max(peak, before) / 1024), "files_mb": round(_size(out) / 2**20)}
    (out.parent / f"{out.name}.build.json").write_text(json.dumps(result))
    return result


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


OPEN_SCRIPT = """
import json, sys, time, psutil
from search.faiss_index import FaissIndex
rss = psutil.Process().memory_info().rss
started = time.perf_counter()
index = FaissIndex.open(sys.argv[1], load=sys.argv[2], verify_sha256=sys.argv[3] == "sha256")
opened = time.perf_counter() - started
print(json.dumps({"open_s": opened, "rss_added_mb": (psutil.Process().memory_info().rss - rss) / 2**20}))
"""


def open_cost(directory: Path, load: str, verify: str) -> dict:
    out = subprocess.run([sys.executable, "-c", OPEN_SCRIPT, str(directory), load, verify], cwd=REPO, check=True,
                         capture_output=True, text=True)
    return {"load": load, "verify": verify, **json.loads(out.stdout.strip().splitlines()[-1])}


# --- recall and the bare loop ---------------------------------------------------------------------------------


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Brute force, in blocks (the ground truth)."""
    best = np.empty((len(queries), k), np.int64)
    for i, q in enumerate(queries):
        scores = vectors @ q
        if keep is not None:
            scores = np.where(keep, scores, -np.inf)
        top = np.argpartition(-scores, k)[:k]
        best[i] = top[np.argsort(-scores[top])]
    return best


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def bare_loop(directory: Path, queries: np.ndarray, k: int = 10) -> dict:
    """The FAISS search loop alone, one query at a time on one thread: the ceiling for /search by vector."""
    import faiss

    from search.faiss_index import FaissIndex

    index = FaissIndex.open(directory)
    faiss.omp_set_num_threads(1)
    params = faiss.SearchParametersHNSW(efSearch=index.params["ef_search"]) if index.params["type"] == "hnsw" \
        else None
    for q in queries[:20]:  # touch the pages the first queries need, as a warm service would have
        index.index.search(q[None, :], k, params=params)
    latencies, found = [], []
    for q in queries:
        started = time.perf_counter()
        _, rows = index.index.search(q[None, :], k, params=params)
        latencies.append(time.perf_counter() - started)
        found.append(rows[0].tolist())
    index.close()
    ms = np.array(latencies) * 1000
    return {"qps": round(len(queries) / ms.sum() * 1000, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "found": found}


# --- the service ----------------------------------------------------------------------------------------------


def loadgen(url: str, bodies: Path, path: str, concurrency: int, seconds: float) -> dict:
    spec = {"url": url, "workload": "file", "path": path, "bodies": str(bodies), "concurrency": concurrency,
            "seconds": seconds, "warmup": 2.0, "dim": DIM}
    out = subprocess.run([sys.executable, str(REPO / "bench" / "loadgen.py"), json.dumps(spec)], check=True,
                         capture_output=True, text=True)
    result = json.loads(out.stdout)
    keep = ("concurrency", "requests", "req_per_s", "p50_ms", "p95_ms", "p99_ms", "statuses")
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items() if k in keep}


def write_bodies(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def worker_rss_mb(server) -> float:
    import psutil

    [worker] = psutil.Process(server.proc.pid).children()
    return worker.memory_info().rss / 2**20


def service_runs(directory: Path | None, bundles: Path, queries: np.ndarray, seconds: float, log: Path) -> dict:
    """Cold start, the worker's RSS, and /search latencies for the index at `directory` (None: no index)."""
    env = {"MODEL_DIR": str(bundles), "MODEL_VARIANT": "english", "LOG_LEVEL": "WARNING", "HTTP_THREADS": "8"}
    if directory is not None:
        env["INDEX_DIR"] = str(directory)
    started = time.perf_counter()
    with serving(env, log) as server:
        result: dict = {"cold_start_s": round(time.perf_counter() - started, 2)}
        if directory is None:
            text = write_bodies(log.with_suffix(".text.jsonl"), [{"texts": [p]} for p in prompts(500)])
            result["embed_text_c1"] = loadgen(server.url, text, "/embed/text", 1, seconds)
            result["worker_rss_mb"] = round(worker_rss_mb(server))
            return result
        vector = write_bodies(log.with_suffix(".vector.jsonl"),
                              [{"vector": q.tolist(), "include_metadata": True} for q in queries])
        text = write_bodies(log.with_suffix(".text.jsonl"), [{"text": p} for p in prompts(500)])
        filtered = write_bodies(log.with_suffix(".filter.jsonl"), [
            {"vector": q.tolist(), "filter": {"must": [{"key": "category", "match": {"value": 7}}]}} for q in queries])
        result["vector_c1"] = loadgen(server.url, vector, "/search", 1, seconds)
        result["vector_c8"] = loadgen(server.url, vector, "/search", 8, seconds)
        result["text_c1"] = loadgen(server.url, text, "/search", 1, seconds)
        result["filter1pct_c1"] = loadgen(server.url, filtered, "/search", 1, seconds)
        result["worker_rss_mb"] = round(worker_rss_mb(server))
        result["answers"] = _answers(server.url, queries[:100])
    return result


def _answers(url: str, queries: np.ndarray) -> dict:
    """The service's ids for the recall computation (unfiltered and 1% filtered)."""
    import requests

    plain, filtered = [], []
    for q in queries:
        body = {"vector": q.tolist(), "top_k": 10, "include_metadata": False}
        plain.append([int(r["id"][4:]) for r in requests.post(f"{url}/search", json=body, timeout=60).json()["results"]])
        body["filter"] = {"must": [{"key": "category", "match": {"value": 7}}]}
        filtered.append([int(r["id"][4:]) for r in requests.post(f"{url}/search", json=body, timeout=60).json()["results"]])
    return {"plain": plain, "filtered": filtered}


# --- the run --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=15.0, help="per load-generator run")
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--skip-control", action="store_true", help="no uniform-random control")
    parser.add_argument("--json", type=Path, default=OUT / "search.json")
    args = parser.parse_args()
    ensure_bundles(args.bundles, ["english"])
    results: dict = {"machine": machine(), "n": args.n, "dim": DIM, "started_load": load_average()}
    paths = make_data("clustered", args.n, args.queries)
    vectors = np.load(paths["vectors"], mmap_mode="r")
    queries = np.load(paths["queries"])
    category = np.array([int(row["category"]) for row in csv.DictReader(paths["meta"].open())])
    indexes = DATA / f"clustered-{args.n}" / "indexes"
    truth = exact_top(np.asarray(vectors), queries, 10)
    truth_filtered = exact_top(np.asarray(vectors), queries[:100], 10, keep=category == 7)
    for kind in ("flat", "hnsw"):
        directory = indexes / kind
        entry = {"build": build(paths, directory, kind, args.bundles)}
        print(kind, "built", entry["build"], file=sys.stderr, flush=True)
        entry["open"] = [open_cost(directory, "mmap", "size"), open_cost(directory, "memory", "size"),
                         open_cost(directory, "mmap", "sha256")]
        bare = bare_loop(directory, queries if kind == "hnsw" else queries[:100])
        entry["bare"] = {k: v for k, v in bare.items() if k != "found"}
        entry["bare"]["recall_at_10"] = round(recall(bare["found"], truth[:len(bare["found"])]), 4)
        service = service_runs(directory, args.bundles, queries, args.seconds, OUT / f"search-{kind}.log")
        answers = service.pop("answers")
        service["recall_at_10"] = round(recall(answers["plain"], truth[:100]), 4)
        service["filter1pct_recall_at_10"] = round(recall(answers["filtered"], truth_filtered), 4)
        entry["service"] = service
        results[kind] = entry
        save_json(args.json, results)
        print(kind, json.dumps(entry), file=sys.stderr, flush=True)
    results["no_index"] = service_runs(None, args.bundles, queries, args.seconds, OUT / "search-none.log")
    if not args.skip_control:
        control = make_data("uniform", args.n, args.queries)
        directory = DATA / f"uniform-{args.n}" / "indexes" / "hnsw"
        results["uniform_control"] = {"build": build(control, directory, "hnsw", args.bundles)}
        bare = bare_loop(directory, np.load(control["queries"]))
        truth_u = exact_top(np.asarray(np.load(control["vectors"], mmap_mode="r")), np.load(control["queries"]), 10)
        results["uniform_control"]["bare"] = {**{k: v for k, v in bare.items() if k != "found"},
                                              "recall_at_10": round(recall(bare["found"], truth_u), 4)}
    results["finished_load"] = load_average()
    save_json(args.json, results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(REPO))
    main()
