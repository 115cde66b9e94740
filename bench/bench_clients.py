"""A 2,048-text /v1/embeddings request (OpenAI's limit, what LangChain and LlamaIndex send in bulk) through the
real gunicorn: its time against the same texts as 32 requests of 64, and the p99 of one-text requests from 8
other clients while it runs against their p99 without it (target: no more than 2x).

    python bench/bench_clients.py [--bundles bench/out/bundles-real] [--seconds 20] [--rounds 2] [--json FILE]

The server is the production command on a real-size random english bundle (default settings: PRECISION=auto,
TEXT_CACHE_SIZE=0 so every text reaches the model). The one-text clients are bench/loadgen.py in their own
process; the large requests are sent back to back from this one during the same window. Rounds alternate
"without" and "with" so the machine's drift falls on both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DEFAULT_BUNDLES, OUT, REPO, ensure_bundles, load_average, machine, prompts, save_json, serving  # noqa: E402

BIG = 2048
SMALL_CLIENTS = 8


def embed(url: str, texts: list[str]) -> float:
    """Seconds for one /v1/embeddings request of ``texts`` (checked: one 512-d vector each)."""
    body = orjson.dumps({"model": "english", "input": texts, "encoding_format": "base64"})
    started = time.perf_counter()
    r = requests.post(f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}, timeout=600)
    seconds = time.perf_counter() - started
    assert r.status_code == 200 and len(r.json()["data"]) == len(texts), r.text[:300]
    return seconds


def one_text_clients(url: str, seconds: float) -> subprocess.Popen:
    spec = {"url": url, "workload": "text1", "concurrency": SMALL_CLIENTS, "seconds": seconds, "warmup": 1.0,
            "dim": 512}
    return subprocess.Popen([sys.executable, "bench/loadgen.py", json.dumps(spec)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)


def small_requests(url: str, seconds: float, with_big: bool, offset: int) -> dict:
    """The one-text clients' figures over ``seconds``; with ``with_big``, 2,048-text requests run meanwhile."""
    load = one_text_clients(url, seconds)
    big_times: list[float] = []
    stop = time.perf_counter() + 1.0 + seconds

    def big_loop() -> None:
        n = offset
        while time.perf_counter() < stop:
            big_times.append(embed(url, prompts(BIG, start=n)))
            n += BIG

    thread = threading.Thread(target=big_loop, daemon=True) if with_big else None
    if thread is not None:
        time.sleep(0.5)
        thread.start()
    out, _ = load.communicate(timeout=seconds + 600)
    if thread is not None:
        thread.join(600)
    figures = json.loads(out)
    figures["big_requests"] = [round(s, 2) for s in big_times]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--seconds", type=float, default=20.0, help="window of each with/without measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=OUT / "bench_clients.json")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the server")
    args = parser.parse_args()
    ensure_bundles(args.bundles, ["english"])
    env = {"MODEL_DIR": str(args.bundles), "MODEL_VARIANT": "english", "TEXT_CACHE_SIZE": "0",
           **dict(pair.split("=", 1) for pair in args.env)}
    results: dict = {"machine": machine(), "command": " ".join(sys.argv), "rounds": []}
    with serving(env, OUT / "bench_clients.log") as server:
        info = requests.get(f"{server.url}/", timeout=10).json()["model"]
        results["precision"], results["runtime"] = info["precision"], info["runtime"]
        embed(server.url, prompts(64))  # warm-up
        for r in range(args.rounds):
            one = embed(server.url, prompts(BIG, start=10_000 * r))
            sixty_fours = sum(embed(server.url, prompts(64, start=10_000 * r + 64 * i)) for i in range(BIG // 64))
            without = small_requests(server.url, args.seconds, False, 0)
            with_big = small_requests(server.url, args.seconds, True, 50_000 * (r + 1))
            row = {"one_2048_s": round(one, 2), "32_of_64_s": round(sixty_fours, 2),
                   "small_without": without, "small_with": with_big,
                   "p99_ratio": with_big["p99_ms"] / without["p99_ms"], "load": load_average()}
            results["rounds"].append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("small")}
                             | {"p99_without_ms": without["p99_ms"], "p99_with_ms": with_big["p99_ms"],
                                "p50_without_ms": without["p50_ms"], "p50_with_ms": with_big["p50_ms"],
                                "big_requests_s": with_big["big_requests"]}), flush=True)
    rounds = results["rounds"]
    results["summary"] = {
        "one_2048_s": statistics.median(r["one_2048_s"] for r in rounds),
        "32_of_64_s": statistics.median(r["32_of_64_s"] for r in rounds),
        "p99_ratio": statistics.median(r["p99_ratio"] for r in rounds),
        "p99_ratios": [round(r["p99_ratio"], 2) for r in rounds],
    }
    save_json(args.json, results)
    s = results["summary"]
    print(f"\n{results['machine']}; {results['precision']} / {results['runtime']}")
    print("| | measured | target |\n|---|---|---|")
    print(f"| one request of 2,048 texts | {s['one_2048_s']:.2f} s | about the 32 x 64 time |")
    print(f"| 32 requests of 64 texts, one after another | {s['32_of_64_s']:.2f} s | |")
    verdict = "yes" if max(s["p99_ratios"]) <= 2 else "no"
    print(f"| one-text p99 with / without a 2,048-text request running (8 clients) | {s['p99_ratio']:.2f}x "
          f"(rounds: {s['p99_ratios']}) | <= 2x: {verdict} |")


if __name__ == "__main__":
    main()
