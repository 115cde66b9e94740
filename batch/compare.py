"""clipserve-batch score --compare: the same rows scored one per request and in batches, checked equal and timed.

It answers "what does batching buy on this target, and does it change the scores?" with the user's own
rows: both runs go through the same target (``--endpoint`` or ``--local``) with the same ``--concurrency``;
only the rows per request differ. The batched run writes OUTPUT as ``score`` does; the one-per-request run
writes to a scratch file; ``OUTPUT-stem_comparison.csv`` gets one line per mode with its timing and the
largest clip_score difference between the two.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from batch import options
from batch.export import merge, output_format
from batch.output import iter_records
from batch.reader import read_rows
from batch.retry import RetryTally
from batch.runner import JobSpec, JobStopped, Summary, run_job

log = logging.getLogger("batch")

# Batching changes a score's last bits (the model sums in another order); bf16 more than fp32. In
# clip_score points (100 x cosine): 0.1 is a cosine difference of 0.001.
DEFAULT_TOLERANCE = 0.1
COLUMNS = ("mode", "batch_size", "concurrency", "rows", "errors", "seconds", "images_per_s", "speedup",
           "max_clip_score_difference", "tolerance", "same")


def comparison_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_comparison.csv")


def cmd_compare(args: argparse.Namespace, work_part: Path) -> int:
    """0 when both modes gave the same scores within the tolerance, 4 when not, 2 when the target failed; the
    summary goes to stdout as one JSON object, as every command's does."""
    if options.shard(args).count > 1:
        raise ValueError("--compare times one whole job: it does not run as a shard")
    if any(p.exists() for p in (args.output, work_part)):
        raise ValueError(f"--compare times both runs from the start: {args.output} (or its part) already exists")
    tally = RetryTally()
    target = options.make_target(args, tally)
    try:
        _warm_up(target, args)
        with tempfile.TemporaryDirectory(prefix="clipserve-compare-") as scratch:
            batched = _timed(args, target, tally, work_part, args.batch_size)
            single = _timed(args, target, tally, Path(scratch) / "single.jsonl", 1)
            difference, mismatched = _differences(work_part, Path(scratch) / "single.jsonl")
        model = options.describe(target)
    except JobStopped as stopped:
        options.report(stopped.summary.as_dict())
        log.error("stopped: %s; re-run with a fresh --output", stopped.cause)
        return 2
    finally:
        target.close()
    files = merge(args.input, [work_part], args.output, options.columns(args)).files \
        if output_format(args.output) != ".jsonl" else [str(args.output)]
    same = not mismatched and difference <= args.compare_tolerance
    speedup = batched.rows_per_s / single.rows_per_s if single.rows_per_s else 0.0
    lines = [_line("one per request", 1, args, single, 1.0, difference, same),
             _line("batched", args.batch_size, args, batched, speedup, difference, same)]
    _write_csv(comparison_path(args.output), lines)
    log.info("one per request: %.2f images/s; batches of %d: %.2f images/s; speedup %.2fx; largest clip_score "
             "difference %.3g (tolerance %g): %s", single.rows_per_s, args.batch_size, batched.rows_per_s, speedup,
             difference, args.compare_tolerance, "same scores" if same else "SCORES DIFFER")
    if mismatched:
        log.error("rows scored in one mode and failed in the other: %s", ", ".join(mismatched[:10]))
    summary = {"command": "score --compare", "rows": batched.rows, "modes": lines, "speedup": round(speedup, 3),
               "max_clip_score_difference": difference, "same": same, "mismatched_rows": mismatched[:100],
               "files": [*files, str(comparison_path(args.output))], "model": model}
    print(json.dumps(summary), flush=True)
    return 0 if same else 4


def _warm_up(target: Any, args: argparse.Namespace) -> None:
    """One row through the target first, so neither timing pays a cold start or first-call set-up."""
    first = next(iter(read_rows(args.input, options.columns(args))), None)
    if first is not None:
        target.score([first])


def _timed(args: argparse.Namespace, target: Any, tally: RetryTally, part: Path, batch_size: int) -> Summary:
    spec = JobSpec(command="score", input=args.input, part=part, columns=options.columns(args),
                   batch_size=batch_size, concurrency=args.concurrency, progress_interval_s=args.progress_interval)
    started = time.perf_counter()
    summary = run_job(spec, target, tally)
    summary.seconds = time.perf_counter() - started
    summary.rows_per_s = summary.written / summary.seconds if summary.seconds else 0.0
    return summary


def _differences(a: Path, b: Path) -> tuple[float, list[str]]:
    """(largest |clip_score difference| over rows scored in both, ids scored in one and failed in the other)."""
    scores = {r["id"]: r.get("clip_score") for r in iter_records(a)}
    largest, mismatched = 0.0, []
    for record in iter_records(b):
        mine, theirs = record.get("clip_score"), scores.get(record["id"])
        if (mine is None) != (theirs is None):
            mismatched.append(str(record["id"]))
        elif mine is not None:
            largest = max(largest, abs(mine - theirs))
    return largest, mismatched


def _line(mode: str, batch_size: int, args: argparse.Namespace, summary: Summary, speedup: float,
          difference: float, same: bool) -> dict[str, Any]:
    return {"mode": mode, "batch_size": batch_size, "concurrency": args.concurrency, "rows": summary.written,
            "errors": sum(summary.errors.values()), "seconds": round(summary.seconds, 3),
            "images_per_s": round(summary.rows_per_s, 3), "speedup": round(speedup, 3),
            "max_clip_score_difference": difference, "tolerance": args.compare_tolerance, "same": same}


def _write_csv(path: Path, lines: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(lines)
