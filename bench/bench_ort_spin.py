"""ONNX Runtime's spin-waiting, measured where it matters to the text path: one-text calls with gaps between them.

    python bench/bench_ort_spin.py [--variant english] [--rounds 5]

A service calls the model, then spends a millisecond or more on HTTP, JSON and the next request before it calls
again. ONNX Runtime's intra-op workers spin after a call (by default) waiting for the next one, on the cores the
request threads need. Three sessions of the same text graph, in one process, measured in turns (so drift on a
shared VM hits them alike):
- ``spin``: ONNX Runtime's default (workers spin between calls);
- ``stop``: ``session.force_spinning_stop=1`` (spin within a call, sleep as soon as it returns; what the service
  uses);
- ``no-spin``: ``session.intra_op.allow_spinning=0`` (never spin: every op wakes sleeping workers).
Per mode: the wall time of a one-text call and of batches of 8 and 32, back to back and with a 2 ms gap of Python work
between calls (what a request thread does), and the process CPU per call, the gap's CPU included: what spinning
costs the rest of the process. Each figure is the median over rounds; the machine is named.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DEFAULT_BUNDLES, machine, prompts  # noqa: E402

MODES = {"spin": {}, "stop": {"session.force_spinning_stop": "1"}, "no-spin": {"session.intra_op.allow_spinning": "0"}}


def text_session(graph: Path, threads: int, config: dict[str, str]):  # noqa: ANN201 - an InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])


def busy(seconds: float) -> None:
    """Python work on this thread, as a request thread would do between model calls."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def measure(session, tokens: np.ndarray, calls: int, gap_s: float) -> tuple[float, float]:
    """(median wall ms of a call, process CPU ms per call including the gap's own work)."""
    walls = []
    cpu = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        session.run(None, {"tokens": tokens})
        walls.append(time.perf_counter() - started)
        if gap_s:
            busy(gap_s)
    return 1000 * statistics.median(walls), 1000 * (time.process_time() - cpu) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--variant", default="english")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from models.loader import load_encoder
    from models.threads import cpu_budget

    bundle = args.bundles / args.variant
    manifest = json.loads((bundle / "manifest.json").read_text())
    graph = bundle / manifest["onnx"]["text"]["file"]
    threads = args.threads or cpu_budget()
    encoder = load_encoder(args.variant, args.bundles, precision="fp32", runtime="onnx", threads=threads)
    prepared = [encoder.prepare_text(t) for t in prompts(32)]

    def batch_of(size: int) -> np.ndarray:
        width = max(len(p.ids) for p in prepared[:size])
        tokens = np.zeros((size, width), dtype=np.int64)
        for i, p in enumerate(prepared[:size]):
            tokens[i, :len(p.ids)] = p.ids
        return tokens

    batches = {1: (batch_of(1), 100), 8: (batch_of(8), 20), 32: (batch_of(32), 6)}
    sessions = {mode: text_session(graph, threads, config) for mode, config in MODES.items()}
    cells = {(mode, batch, gap): [] for mode in MODES for batch in batches for gap in (0.0, 0.002)}
    for session in sessions.values():
        measure(session, batches[1][0], 20, 0.0)
    for _ in range(args.rounds):
        for mode, session in sessions.items():
            for batch, (tokens, calls) in batches.items():
                for gap in (0.0, 0.002):
                    cells[mode, batch, gap].append(measure(session, tokens, calls, gap))
    print(f"Machine: {machine()}; {args.variant} text graph, ONNX Runtime, {threads} intra-op threads, "
          f"{args.rounds} rounds\n")
    print("| mode | batch | gap between calls | wall ms per call | process CPU ms per call (gap included) |")
    print("|---|---|---|---|---|")
    results = []
    for (mode, batch, gap), samples in cells.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        results.append({"mode": mode, "batch": batch, "gap_ms": gap * 1000, "wall_ms": wall, "cpu_ms": cpu})
        print(f"| {mode} | {batch} | {gap * 1000:.0f} ms | {wall:.2f} | {cpu:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "threads": threads, "cells": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
