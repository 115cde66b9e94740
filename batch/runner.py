"""Running one task of a job: the rows of its shard not yet in its part file, in batches,
`concurrency` batches in flight, results appended in input order as each batch completes."""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batch import output
from batch.progress import make_progress
from batch.reader import Columns, Row, read_rows
from batch.results import embed_record, score_record
from batch.retry import RetryTally
from batch.sharding import Shard
from batch.targets import FatalTargetError, Target

log = logging.getLogger(__name__)

COMMANDS = ("embed", "score")


@dataclass(frozen=True)
class JobSpec:
    command: str  # "embed" or "score"
    input: Path
    part: Path  # the JSONL file this task appends to
    shard: Shard = Shard(0, 1)
    columns: Columns = Columns()
    batch_size: int = 16
    concurrency: int = 4
    normalize: bool = True
    progress_interval_s: float = 30.0
    retry_errors: bool = False  # drop rows written with an error, so this run does them again


@dataclass
class Summary:
    command: str
    input: str
    part: str
    shard: str
    rows: int = 0  # rows of this shard in the input
    already_done: int = 0  # found in the part file at start
    written: int = 0  # written by this run
    complete: bool = False  # every row of the shard is in the part file
    errors: dict[str, int] = field(default_factory=dict)  # per-row errors by code, whole part file
    retries: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rows_per_s: float = 0.0
    model: dict[str, Any] = field(default_factory=dict)
    clip_score: dict[str, float] | None = None  # score only: statistics over the whole part

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shard_rows(spec: JobSpec) -> Iterator[Row]:
    return (row for row in read_rows(spec.input, spec.columns) if spec.shard.owns(row))


def _records_for(spec: JobSpec, target: Target, rows: list[Row]) -> list[dict[str, Any]]:
    """Runs in a worker thread: one batch through the target, as output records."""
    if spec.command == "embed":
        results = target.embed(rows, spec.normalize)
        records = [embed_record(row.id, result) for row, result in zip(rows, results, strict=True)]
    else:
        results = target.score(rows)
        records = [score_record(row.id, row.fields, result) for row, result in zip(rows, results, strict=True)]
    return records


def clip_score_stats(part: Path) -> dict[str, float] | None:
    scores = [r["clip_score"] for r in output.iter_records(part) if r.get("clip_score") is not None]
    if not scores:
        return None
    return {
        "count": len(scores),
        "mean": statistics.fmean(scores),
        "std": statistics.pstdev(scores),
        "min": min(scores),
        "median": statistics.median(scores),
        "max": max(scores),
    }


def run_job(spec: JobSpec, target: Target, retries: RetryTally | None = None) -> Summary:
    """Process what is left of the shard. Raises JobStopped after writing what finished, and
    PartInUse if the same part is being written by another process."""
    with output.exclusive(spec.part):
        return _run_locked(spec, target, retries)


def _run_locked(spec: JobSpec, target: Target, retries: RetryTally | None) -> Summary:
    summary = Summary(spec.command, str(spec.input), str(spec.part), f"{spec.shard.index}/{spec.shard.count}")
    if spec.retry_errors:
        log.info("%s: %d rows with errors dropped, to be retried", spec.part, output.drop_error_records(spec.part))
    state = output.recover(spec.part)
    todo = _count_rows(spec, state.done, summary)
    errors: Counter[str] = Counter(state.errors)
    start = time.monotonic()
    fatal = _process(spec, target, state.done, todo, summary, errors)
    summary.seconds = round(time.monotonic() - start, 3)
    summary.rows_per_s = round(summary.written / summary.seconds, 2) if summary.seconds > 0 else 0.0
    summary.errors = dict(sorted(errors.items()))
    summary.complete = fatal is None and summary.already_done + summary.written == summary.rows
    summary.retries = retries.as_dict() if retries is not None else {}
    if spec.command == "score":
        summary.clip_score = clip_score_stats(spec.part)
    if fatal is not None:
        raise JobStopped(summary, fatal)
    return summary


def _count_rows(spec: JobSpec, done: set[str], summary: Summary) -> int:
    """First pass over the input: the shard's rows and those already written; returns rows to do."""
    for row in _shard_rows(spec):
        summary.rows += 1
        summary.already_done += row.id in done
    todo = summary.rows - summary.already_done
    log.info(
        "%s %s -> %s (shard %s): %d rows, %d already written, %d to do",
        spec.command, spec.input, spec.part, summary.shard, summary.rows, summary.already_done, todo,
    )  # fmt: skip
    return todo


def _process(
    spec: JobSpec, target: Target, done: set[str], todo: int, summary: Summary, errors: Counter[str]
) -> FatalTargetError | None:
    """Second pass: batches to the target, `concurrency` in flight, appended in input order."""
    progress = make_progress(todo, spec.command, spec.progress_interval_s)
    rows_left = (row for row in _shard_rows(spec) if row.id not in done)
    batches = iter(lambda: list(itertools.islice(rows_left, spec.batch_size)), [])
    pending: deque[Future[list[dict[str, Any]]]] = deque()

    def write_oldest(writer: output.RecordWriter) -> None:
        records = pending.popleft().result()  # raises what the worker raised
        writer.write(records)
        batch_errors = Counter(r["error"]["code"] for r in records if r.get("error"))
        errors.update(batch_errors)
        summary.written += len(records)
        progress.update(len(records), sum(batch_errors.values()))

    pool = ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="batch")
    try:
        with output.RecordWriter(spec.part) as writer:
            try:
                for batch in batches:
                    pending.append(pool.submit(_records_for, spec, target, batch))
                    while len(pending) > spec.concurrency:
                        write_oldest(writer)
                while pending:
                    write_oldest(writer)
            except FatalTargetError as exc:
                for future in pending:
                    future.cancel()
                _write_finished(pending, writer, summary, errors)
                return exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
    return None


def _write_finished(
    pending: deque[Future[list[dict[str, Any]]]], writer: output.RecordWriter, summary: Summary, errors: Counter[str]
) -> None:
    """After a fatal error: keep the batches that did finish (resume will skip them)."""
    for future in pending:
        if future.cancelled():
            continue
        try:
            records = future.result()
        except Exception:  # noqa: BLE001 - already stopping on the first error
            continue
        writer.write(records)
        errors.update(r["error"]["code"] for r in records if r.get("error"))
        summary.written += len(records)


class JobStopped(RuntimeError):
    """The target failed for good; the summary says how far the job got."""

    def __init__(self, summary: Summary, cause: FatalTargetError) -> None:
        super().__init__(str(cause))
        self.summary = summary
        self.cause = cause
