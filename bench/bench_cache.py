"""The shared cache through the real gunicorn: two instances sharing a redis-server on loopback.

    python bench/bench_cache.py [--bundles bench/out/bundles-real] [--seconds 20] [--json FILE]

1. Latency of one request, one client, p50 / p99 over many requests: a text the model encodes (miss), a text in
   the instance's own LRU (level 1), a text another instance put in Redis (level 2); a 640x480 JPEG embedded
   (miss) and one another instance put in Redis (hit). Targets: a level-2 text hit <= 2 ms p50 above a level-1
   hit and >= 5x cheaper than encoding; an image hit >= 10x faster than a miss.
2. A query stream with a realistic repeat distribution (Zipf s=1.1 over 3,000 texts and 300 images, 80% texts,
   one item per request, 8 clients alternating between the two instances): hit ratio after warm-up, requests/s
   with the cache and with the same two instances without it.
3. Redis stalled (SIGSTOP) under that stream: latency per second before, during and after; the stall should cost
   at most REDIS_TIMEOUT_MS once, then the breaker keeps the no-cache latency.
0. Before the servers start: redis-py's reply parser, hiredis against the pure-Python one, on the reads the
   service makes (MGET of 1 and of 64 text vectors, 512 float32 each), to show whether hiredis pays.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (DEFAULT_BUNDLES, OUT, ensure_bundles, free_port, load_average, machine, photo_jpeg,  # noqa: E402
                          prompts, save_json, serving)

TEXTS, IMAGES, ZIPF_S = 3000, 300, 1.1


def redis_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no", "--maxmemory", "1gb",
                             "--maxmemory-policy", "allkeys-lru"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def parser_cost(redis_url: str, rounds: int = 2000) -> dict:
    """Microseconds per MGET with each reply parser (the extra is what the service pays per cache read)."""
    import redis as redis_py
    from redis.connection import _HiredisParser, _RESP2Parser

    value = b"\x00\x02" + np.random.default_rng(0).standard_normal(512).astype(np.float32).tobytes()
    keys = [f"bench:parser:{i}" for i in range(64)]
    seed = redis_py.Redis.from_url(redis_url)
    seed.mset({k: value for k in keys})
    out = {}
    for name, parser_class in (("hiredis", _HiredisParser), ("python", _RESP2Parser)):
        client = redis_py.Redis(connection_pool=redis_py.ConnectionPool.from_url(redis_url, parser_class=parser_class))
        for n in (1, 64):
            client.mget(keys[:n])
            started = time.perf_counter()
            for _ in range(rounds):
                client.mget(keys[:n])
            out[f"{name}_mget{n}_us"] = round((time.perf_counter() - started) / rounds * 1e6, 1)
    seed.delete(*keys)
    return out


def percentiles(values: list[float]) -> dict:
    ms = np.array(values) * 1000
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def timed(session: requests.Session, url: str, body: dict) -> float:
    started = time.perf_counter()
    r = session.post(url, json=body, timeout=120)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text[:300]
    return elapsed


def latencies(a: str, b: str, images: list[str]) -> dict:
    """Sequential, one client: miss, level-1 hit and level-2 hit, for texts and images."""
    s = requests.Session()
    fresh = prompts(400, start=90_000)
    miss = [timed(s, f"{a}/embed/text", {"texts": [t]}) for t in fresh[:200]]
    l1 = [timed(s, f"{a}/embed/text", {"texts": [fresh[i % 20]]}) for i in range(200)]
    l2 = [timed(s, f"{b}/embed/text", {"texts": [t]}) for t in fresh[20:200]]  # put by a, new to b
    image_miss = [timed(s, f"{a}/embed/image", {"images": [im]}) for im in images[:60]]
    image_hit = [timed(s, f"{b}/embed/image", {"images": [im]}) for im in images[:60]]
    return {"text_miss": percentiles(miss), "text_l1_hit": percentiles(l1), "text_l2_hit": percentiles(l2),
            "image_miss": percentiles(image_miss), "image_l2_hit": percentiles(image_hit)}


def zipf_stream(n: int, seed: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)

    def ranks(count: int, size: int) -> np.ndarray:
        weights = 1.0 / np.arange(1, count + 1) ** ZIPF_S
        return rng.choice(count, size=size, p=weights / weights.sum())

    kinds = rng.random(n) < 0.8
    texts, images = ranks(TEXTS, n), ranks(IMAGES, n)
    return [("text", int(t)) if k else ("image", int(i)) for k, t, i in zip(kinds, texts, images)]


def run_stream(urls: list[str], stream: list[tuple[str, int]], images: list[str], seconds: float, clients: int,
               marks: list | None = None) -> dict:
    """Clients walk the stream (each its own slice), alternating instances; returns rate and latencies."""
    text_pool = prompts(TEXTS, start=200_000)
    done: list[tuple[float, float]] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while time.perf_counter() < stop:
            kind, rank = stream[i % len(stream)]
            url = urls[i % len(urls)]
            body = {"texts": [text_pool[rank]]} if kind == "text" else {"images": [images[rank % len(images)]]}
            started = time.perf_counter()
            r = session.post(f"{url}/embed/{kind}", json=body, timeout=120)
            finished = time.perf_counter()
            if r.status_code == 200:
                with lock:
                    done.append((finished, finished - started))
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = [d for _, d in done]
    out = {"requests": len(done), "req_per_s": round(len(done) / seconds, 1), **percentiles(lat)}
    if marks is not None:
        out["per_second"] = [percentiles([d for f, d in done if s <= f - began < s + 1]) | {"second": s}
                             for s in range(int(seconds)) if any(s <= f - began < s + 1 for f, _ in done)]
    return out


def hit_ratio(urls: list[str]) -> dict:
    """Items answered from a cache (the instance's LRU or Redis) over items looked up: a text goes to Redis only
    when the LRU missed, an image always (no LRU for images)."""
    hits = lookups = 0
    for url in urls:
        cache = requests.get(f"{url}/stats", timeout=10).json()["cache"]
        l1, l2 = cache.get("l1", {}), cache.get("l2", {})
        empty = {"hits": 0, "misses": 0}
        text_l1, text_l2, image_l2 = l1.get("text", empty), l2.get("text", empty), l2.get("image", empty)
        hits += text_l1["hits"] + text_l2["hits"] + image_l2["hits"]
        lookups += text_l1["hits"] + text_l1["misses"] + image_l2["hits"] + image_l2["misses"]
    return {"hits": hits, "lookups": lookups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", type=Path, default=OUT / "bench_cache.json")
    args = parser.parse_args()
    ensure_bundles(args.bundles, ["english"])
    images = [base64.b64encode(photo_jpeg(seed)).decode() for seed in range(IMAGES)]
    stream = zipf_stream(200_000, seed=1)
    results: dict = {"machine": machine(), "command": " ".join(sys.argv), "zipf": {"s": ZIPF_S, "texts": TEXTS,
                     "images": IMAGES, "text_share": 0.8}}
    redis, redis_url = redis_server()
    results["parser"] = parser_cost(redis_url)
    print(json.dumps({"parser": results["parser"]}), flush=True)
    base = {"MODEL_DIR": str(args.bundles), "MODEL_VARIANT": "english", "HTTP_THREADS": "8"}
    try:
        cached = {**base, "REDIS_URL": redis_url}
        with serving(cached, OUT / "bench_cache_a.log") as a, serving(cached, OUT / "bench_cache_b.log") as b:
            results["precision"] = requests.get(f"{a.url}/", timeout=10).json()["model"]["precision"]
            results["latency"] = latencies(a.url, b.url, images)
            print(json.dumps(results["latency"]), flush=True)
            warm = run_stream([a.url, b.url], stream, images, args.seconds, args.clients)
            before = hit_ratio([a.url, b.url])
            measured = run_stream([a.url, b.url], stream[50_000:], images, args.seconds, args.clients)
            after = hit_ratio([a.url, b.url])
            measured["hit_ratio"] = round((after["hits"] - before["hits"]) / max(1, after["lookups"] - before["lookups"]), 3)
            results["stream_cached"] = {"warmup": warm, "measured": measured}
            print(json.dumps({"stream_cached": measured}), flush=True)
            stall: dict = {}

            def stall_redis() -> None:
                time.sleep(5)
                redis.send_signal(signal.SIGSTOP)
                stall["stopped_at_s"] = 5
                time.sleep(5)
                redis.send_signal(signal.SIGCONT)
                stall["resumed_at_s"] = 10

            threading.Thread(target=stall_redis, daemon=True).start()
            stall["stream"] = run_stream([a.url, b.url], stream[100_000:], images, 16, args.clients, marks=[])
            results["stall"] = stall
            print(json.dumps({"stall": [(p["second"], p["p50_ms"], p["p99_ms"]) for p in stall["stream"]["per_second"]]}),
                  flush=True)
        with serving(base, OUT / "bench_cache_a.log") as a, serving(base, OUT / "bench_cache_b.log") as b:
            run_stream([a.url, b.url], stream, images, args.seconds, args.clients)  # the same warm-up (LRU only)
            plain = run_stream([a.url, b.url], stream[50_000:], images, args.seconds, args.clients)
            results["stream_no_shared_cache"] = plain
            print(json.dumps({"stream_no_shared_cache": plain}), flush=True)
    finally:
        redis.send_signal(signal.SIGCONT)
        redis.kill()
    results["load"] = load_average()
    save_json(args.json, results)
    lat = results["latency"]
    print(f"\n{results['machine']}; {results['precision']}")
    print("| | p50 | p99 |\n|---|---|---|")
    for name in ("text_miss", "text_l1_hit", "text_l2_hit", "image_miss", "image_l2_hit"):
        print(f"| {name} | {lat[name]['p50_ms']} ms | {lat[name]['p99_ms']} ms |")
    print(f"text: l2 - l1 p50 {lat['text_l2_hit']['p50_ms'] - lat['text_l1_hit']['p50_ms']:.2f} ms (target <= 2); "
          f"miss / l2 {lat['text_miss']['p50_ms'] / lat['text_l2_hit']['p50_ms']:.1f}x (target >= 5); "
          f"image miss / hit {lat['image_miss']['p50_ms'] / lat['image_l2_hit']['p50_ms']:.1f}x (target >= 10)")
    c, p = results["stream_cached"]["measured"], results["stream_no_shared_cache"]
    print(f"stream: hit ratio {c['hit_ratio']}, {c['req_per_s']} req/s (p50 {c['p50_ms']} ms) vs {p['req_per_s']} "
          f"req/s (p50 {p['p50_ms']} ms) without the shared cache")
    print(f"median over the stall's per-second p99: {statistics.median(x['p99_ms'] for x in results['stall']['stream']['per_second'])} ms")


if __name__ == "__main__":
    main()
