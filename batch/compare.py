"""clipserve-batch score --compare: the same rows scored one per request and in batches, checked equal and timed.

It answers "what does batching buy on this target, and does it change the scores?" with the user's own
rows: both runs go through the same target (``--endpoint`` or ``--local``) with the same ``--concurrency``;
only the rows per request differ. The batched run writes OUTPUT as ``score`` does; the one-per-request run
writes to a scratch file; ``OUTPUT-stem_comparison.csv`` gets one line per mode with its timing and the
largest clip_score difference between the two.
"""

from __future__ import annotations

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
from batch.specs import JobArgs

log = logging.getLogger("batch")

# Batching changes a score's last bits (the model sums in another order); bf16 more than fp32. In
# clip_score points (100 x cosine): 0.1 is a cosine difference of 0.001.
DEFAULT_TOLERANCE = 0.1
COLUMNS = ("mode", "batch_size", "concurrency", "rows", "errors", "seconds", "images_per_s", "speedup",
           "max_clip_score_difference", "tolerance", "same")


def comparison_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_comparison.csv")


def cmd_compare(job: JobArgs, work_part: Path) -> int:
    """0 when both modes gave the same scores within the tolerance, 4 when not, 2 when the target failed; the
    summary goes to stdout as one JSON object, as every command's does."""
    if job.shard.count > 1:
        raise ValueError("--compare times one whole job: it does not run as a shard")
    if any(p.exists() for p in (job.output, work_part)):
        raise ValueError(f"--compare times both runs from the start: {job.output} (or its part) already exists")
    tally = RetryTally()
    target = options.make_target(job.target, job.input, tally)
    try:
        _warm_up(target, job)
        with tempfile.TemporaryDirectory(prefix="clipserve-compare-") as scratch:
            batched = _timed(job, target, tally, work_part, job.run.batch_size)
            single = _timed(job, target, tally, Path(scratch) / "single.jsonl", 1)
            difference, mismatched = _differences(work_part, Path(scratch) / "single.jsonl")
        model = options.describe(target)
    except JobStopped as stopped:
        options.report(stopped.summary.as_dict())
        log.error("stopped: %s; re-run with a fresh --output", stopped.cause)
        return 2
    finally:
        target.close()
    tolerance = job.compare_tolerance if job.compare_tolerance is not None else DEFAULT_TOLERANCE
    files = merge(job.input, [work_part], job.output, job.columns).files \
        if output_format(job.output) != ".jsonl" else [str(job.output)]
    same = not mismatched and difference <= tolerance
    speedup = batched.rows_per_s / single.rows_per_s if single.rows_per_s else 0.0
    concurrency = job.run.concurrency_for(job.target)
    lines = [_line("one per request", 1, concurrency, tolerance, single, 1.0, difference, same),
             _line("batched", job.run.batch_size, concurrency, tolerance, batched, speedup, difference, same)]
    _write_csv(comparison_path(job.output), lines)
    log.info("one per request: %.2f images/s; batches of %d: %.2f images/s; speedup %.2fx; largest clip_score "
             "difference %.3g (tolerance %g): %s", single.rows_per_s, job.run.batch_size, batched.rows_per_s, speedup,
             difference, tolerance, "same scores" if same else "SCORES DIFFER")
    if mismatched:
        log.error("rows scored in one mode and failed in the other: %s", ", ".join(mismatched[:10]))
    summary = {"command": "score --compare", "rows": batched.rows, "modes": lines, "speedup": round(speedup, 3),
               "max_clip_score_difference": difference, "same": same, "mismatched_rows": mismatched[:100],
               "files": [*files, str(comparison_path(job.output))], "model": model}
    print(json.dumps(summary), flush=True)
    return 0 if same else 4


def _warm_up(target: Any, job: JobArgs) -> None:
    """One row through the target first, so neither timing pays a cold start or first-call set-up."""
    first = next(iter(read_rows(job.input, job.columns)), None)
    if first is not None:
        target.score([first])


def _timed(job: JobArgs, target: Any, tally: RetryTally, part: Path, batch_size: int) -> Summary:
    spec = JobSpec(command="score", input=job.input, part=part, columns=job.columns, batch_size=batch_size,
                   concurrency=job.run.concurrency_for(job.target), progress_interval_s=job.run.progress_interval_s)
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


def _line(mode: str, batch_size: int, concurrency: int, tolerance: float, summary: Summary, speedup: float,
          difference: float, same: bool) -> dict[str, Any]:
    return {"mode": mode, "batch_size": batch_size, "concurrency": concurrency, "rows": summary.written,
            "errors": sum(summary.errors.values()), "seconds": round(summary.seconds, 3),
            "images_per_s": round(summary.rows_per_s, 3), "speedup": round(speedup, 3),
            "max_clip_score_difference": difference, "tolerance": tolerance, "same": same}


def _write_csv(path: Path, lines: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(lines)
