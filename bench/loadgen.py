"""A closed-loop HTTP load generator, run as its own process so the server is measured from outside.

    python bench/loadgen.py '{"url": "http://127.0.0.1:8080", "workload": "image1", "concurrency": 16,
                              "seconds": 10, "warmup": 2, "dim": 512}'

Each of `concurrency` threads keeps one keep-alive connection and sends the next request as soon as
the last answer arrived. Every 200 is checked (the right number of vectors of the right dimension;
for `"workload": "file"`, `"path"` and `"bodies"` (a JSONL file of request bodies): the answer has
`results`); requests completed during the `seconds` after `warmup` are counted. With `"models": [a, b]` (and
`"dims": {a: 512, b: 640}`) each client's requests name the models in turn (half each) and the answer adds
`by_model`: requests, items/s and latency percentiles per model. Prints one JSON object.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import photo_b64, prompts  # noqa: E402

# name -> (path, items per request, kind)
WORKLOADS = {"image1": ("/embed/image", 1, "images"), "image8": ("/embed/image", 8, "images"),
             "image16": ("/embed/image", 16, "images"),
             "text1": ("/embed/text", 1, "texts"), "text32": ("/embed/text", 32, "texts")}
_IMAGE_POOL = 16
_TEXT_POOL = 2000


def bodies(workload: str, spec: dict | None = None) -> tuple[str, int, list[bytes]]:
    """(path, items per request, request bodies to cycle through)."""
    if workload == "file":
        lines = Path(spec["bodies"]).read_bytes().splitlines()
        return spec["path"], 1, [line for line in lines if line.strip()]
    path, per_request, kind = WORKLOADS[workload]
    if kind == "images":
        images = [photo_b64(seed) for seed in range(_IMAGE_POOL)]
        batches = [[images[(i + j) % _IMAGE_POOL] for j in range(per_request)] for i in range(_IMAGE_POOL)]
    else:
        pool = prompts(_TEXT_POOL)
        batches = [pool[i:i + per_request] for i in range(0, _TEXT_POOL - per_request + 1, per_request)]
    return path, per_request, [orjson.dumps({kind: batch}) for batch in batches]


def run(spec: dict) -> dict:
    url = urlsplit(spec["url"])
    path, per_request, payloads = bodies(spec["workload"], spec)
    warmup, seconds, timeout = spec.get("warmup", 2.0), spec["seconds"], spec.get("timeout", 120.0)
    pause_after_429 = spec.get("pause_after_429", 0.05)
    begin = time.perf_counter()
    cpu_begin = time.process_time()
    window = (begin + warmup, begin + warmup + seconds)
    lock = threading.Lock()
    done: list[tuple[float, float, int, str | None]] = []   # (finished at, latency, status, model)
    failures: Counter = Counter()
    models = spec.get("models") or [None]
    by_model = {m: payloads if m is None else [orjson.dumps({**orjson.loads(b), "model": m}) for b in payloads]
                for m in models}
    dims = spec.get("dims") or {}

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        n, sent = index, 0
        while time.perf_counter() < window[1]:
            model = models[(index + sent) % len(models)]
            sent += 1
            body = by_model[model][n % len(payloads)]
            n += spec["concurrency"]
            started = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
                continue
            finished = time.perf_counter()
            if status == 200 and not answer_ok(data, per_request, dims.get(model, spec["dim"]), path):
                status = -1  # a 200 with the wrong answer
            with lock:
                done.append((finished, finished - started, status, model))
            if status == 429:
                time.sleep(pause_after_429)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(spec["concurrency"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + seconds + warmup + 30)
    cpu_s = time.process_time() - cpu_begin
    counted = [(lat, status, model) for finished, lat, status, model in done if window[0] <= finished <= window[1]]
    ok = np.array([lat for lat, status, _ in counted if status == 200]) * 1000
    statuses = Counter(str(status) for _, status, _ in counted)
    per_model = {}
    for m in models if models != [None] else []:
        mine = np.array([lat for lat, status, model in counted if status == 200 and model == m]) * 1000
        per_model[m] = {"requests": len(mine), "items_per_s": len(mine) * per_request / seconds,
                        "p50_ms": _pct(mine, 50), "p99_ms": _pct(mine, 99)}
    return {
        "workload": spec["workload"], "concurrency": spec["concurrency"], "seconds": seconds,
        "requests": len(ok), "req_per_s": len(ok) / seconds, "items_per_s": len(ok) * per_request / seconds,
        "p50_ms": _pct(ok, 50), "p95_ms": _pct(ok, 95), "p99_ms": _pct(ok, 99),
        "max_ms": float(ok.max()) if len(ok) else None,
        "max_any_ms": max((lat for _, lat, _, _ in done), default=0) * 1000,
        "statuses": dict(statuses), "all_statuses": dict(Counter(str(s) for _, _, s, _ in done)),
        **({"by_model": per_model} if per_model else {}),
        "client_errors": dict(failures),
        # the load generator's own CPU per request sent (warm-up included): when it nears the service's, the
        # client shares the cores enough to be the bound
        "client_cpu_ms_per_request": 1000 * cpu_s / max(1, len(done)),
    }


def answer_ok(data: bytes, count: int, dim: int, path: str = "/embed/text") -> bool:
    try:
        if path == "/search":
            return isinstance(orjson.loads(data)["results"], list)
        if path == "/index":
            body = orjson.loads(data)
            return body["upserted"] == len(body["ids"]) and not body["errors"]
        vectors = orjson.loads(data)["embeddings"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return len(vectors) == count and all(v is not None and len(v) == dim for v in vectors)


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
