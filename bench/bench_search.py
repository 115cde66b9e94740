"""Search at scale: index build, open, recall and /search latency through the real gunicorn.

    python bench/bench_search.py [--n 1000000] [--queries 500] [--json bench/out/search.json]
    python bench/bench_search.py --backend qdrant-local --n 100000   # beside the FAISS backend, same run

`--backend qdrant-local` also pushes the same vectors into a collection in qdrant-client's local mode
(`index push`), serves it (QDRANT_PATH) with the same queries, and measures upserts: `index push` from the
embed output and from rows it embeds (texts, images), and `POST /index` (texts, images). Local mode is a
test stand-in (brute force in Python over every point), not the production engine: its figures say what
the code path costs, not what a Qdrant server does.

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


def service_runs(directory: Path | None, bundles: Path, queries: np.ndarray, seconds: float, log: Path,
                 backend_env: dict[str, str] | None = None) -> dict:
    """Cold start, the worker's RSS, and /search latencies for the index at `directory` (None: no index), or
    the backend `backend_env` names (QDRANT_PATH)."""
    # No text cache: the text queries measure embedding + search, not a dictionary lookup.
    env = {"MODEL_DIR": str(bundles), "MODEL_VARIANT": "english", "LOG_LEVEL": "WARNING", "HTTP_THREADS": "8",
           "TEXT_CACHE_SIZE": "0"}
    if directory is not None:
        env["INDEX_DIR"] = str(directory)
    env.update(backend_env or {})
    started = time.perf_counter()
    with serving(env, log) as server:
        result: dict = {"cold_start_s": round(time.perf_counter() - started, 2)}
        if directory is None and not backend_env:
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


def cold_starts(bundles: Path, directories: dict[str, Path | None], repeats: int, log: Path) -> dict:
    """Seconds from starting gunicorn to /health 200, per index (None: no index), alternating, median of
    `repeats` (the files are in the page cache, as on a warm host; the VM's speed drifts between minutes)."""
    import statistics

    times: dict[str, list[float]] = {name: [] for name in directories}
    for _ in range(repeats):
        for name, directory in directories.items():
            env = {"MODEL_DIR": str(bundles), "MODEL_VARIANT": "english", "LOG_LEVEL": "WARNING"}
            if directory is not None:
                env["INDEX_DIR"] = str(directory)
            started = time.perf_counter()
            with serving(env, log):
                times[name].append(time.perf_counter() - started)
    return {name: {"median_s": round(statistics.median(t), 2), "runs": [round(x, 2) for x in t]}
            for name, t in times.items()}


# --- Qdrant local mode --------------------------------------------------------------------------------------


def push(paths: dict[str, Path], qdrant: Path, bundles: Path, collection: str = "bench") -> dict:
    """`index push` of the embed output into local mode: wall time and points per second."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "batch", "index", "push", "--input", str(paths["emb"]), "--metadata",
                          str(paths["meta"]), "--qdrant-path", str(qdrant), "--collection", collection, "--local",
                          "--model-dir", str(bundles)], cwd=REPO, check=True, capture_output=True, text=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return {"points": summary["upserted"], "seconds": round(time.perf_counter() - started, 1),
            "points_per_s": summary["points_per_s"]}


def push_rows(kind: str, count: int, qdrant: Path, bundles: Path, scratch: Path) -> dict:
    """`index push` of rows it embeds first (texts or photo-like JPEG files): rows per second, embedding included."""
    from bench.common import photo_jpeg

    scratch.mkdir(parents=True, exist_ok=True)
    rows = scratch / f"{kind}-rows.csv"
    with rows.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", kind])
        for i, text in enumerate(prompts(count)):
            if kind == "image":
                (scratch / f"{i}.jpg").write_bytes(photo_jpeg(i % 16))
                writer.writerow([f"{kind}{i}", f"{i}.jpg"])
            else:
                writer.writerow([f"{kind}{i}", text])
    for stale in scratch.glob(f".{kind}-rows.embeddings.jsonl*"):
        stale.unlink()
    rows.with_name(f"{kind}-rows.embeddings.jsonl").unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "batch", "index", "push", "--input", str(rows), "--qdrant-path",
                    str(qdrant), "--collection", f"rows-{kind}", "--local", "--model-dir", str(bundles)], cwd=REPO,
                   check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    return {"rows": count, "seconds": round(seconds, 1), "rows_per_s": round(count / seconds, 1)}


def post_index_throughput(bundles: Path, qdrant: Path, seconds: float, log: Path) -> dict:
    """POST /index through gunicorn into a fresh local-mode collection: texts (32 per request), images (8)."""
    from bench.common import photo_b64

    from search import qdrant_index
    from models.bundle import model_identity

    client = qdrant_index.connect(path=qdrant)
    for name, modality in (("post-text", "text"), ("post-image", "image")):
        if client.collection_exists(name):
            client.delete_collection(name)
        qdrant_index.create_collection(client, name, model=model_identity(bundles, "english"), modality=modality,
                                       columns={"n": "int"}, local=True)
    client.close()
    results = {}
    for name, kind, per_request in (("post-text", "text", 32), ("post-image", "image", 8)):
        env = {"MODEL_DIR": str(bundles), "MODEL_VARIANT": "english", "LOG_LEVEL": "WARNING",
               "QDRANT_PATH": str(qdrant), "QDRANT_COLLECTION": name}
        pool = prompts(2000) if kind == "text" else [photo_b64(i) for i in range(16)]
        bodies = [{"items": [{"id": f"{kind}-{r}-{j}", kind: pool[(r * per_request + j) % len(pool)],
                              "metadata": {"n": j}} for j in range(per_request)]} for r in range(200)]
        with serving(env, log) as server:
            path = write_bodies(log.with_suffix(f".{kind}.jsonl"), bodies)
            run = loadgen(server.url, path, "/index", 4, seconds)
        run["items_per_s"] = round(run["req_per_s"] * per_request, 1)
        results[kind] = run
    return results


def qdrant_local(paths: dict[str, Path], bundles: Path, queries: np.ndarray, truth: np.ndarray,
                 truth_filtered: np.ndarray, seconds: float) -> dict:
    qdrant = paths["emb"].parent / "qdrant-local"
    import shutil

    shutil.rmtree(qdrant, ignore_errors=True)
    entry: dict = {"note": "qdrant-client local mode: a test stand-in (brute force in Python), not a Qdrant server"}
    entry["push_embed_output"] = push(paths, qdrant, bundles)
    service = service_runs(None, bundles, queries, seconds, OUT / "search-qdrant.log",
                           backend_env={"QDRANT_PATH": str(qdrant), "QDRANT_COLLECTION": "bench"})
    answers = service.pop("answers")
    service["recall_at_10"] = round(recall(answers["plain"], truth[:100]), 4)
    service["filter1pct_recall_at_10"] = round(recall(answers["filtered"], truth_filtered), 4)
    entry["service"] = service
    scratch = paths["emb"].parent / "rows"
    entry["push_rows"] = {"text": push_rows("text", 2000, qdrant, bundles, scratch),
                          "image": push_rows("image", 200, qdrant, bundles, scratch)}
    entry["post_index"] = post_index_throughput(bundles, qdrant, seconds, OUT / "search-post-index.log")
    return entry


# --- the run --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=15.0, help="per load-generator run")
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--skip-control", action="store_true", help="no uniform-random control")
    parser.add_argument("--backend", choices=("faiss", "qdrant-local"), default="faiss",
                        help="qdrant-local: also the local-mode Qdrant backend and upsert throughput")
    parser.add_argument("--kinds", default="flat,hnsw", help="FAISS index types to run (comma-separated)")
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
    for kind in args.kinds.split(","):
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
    results["cold_start"] = cold_starts(args.bundles, {"none": None, **{k: indexes / k for k in args.kinds.split(",")}},
                                        3, OUT / "search-cold.log")
    save_json(args.json, results)
    if args.backend == "qdrant-local":
        results["qdrant_local"] = qdrant_local(paths, args.bundles, queries, truth, truth_filtered, args.seconds)
        save_json(args.json, results)
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
