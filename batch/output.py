"""The JSONL part file: append whole records durably, and find what a killed run already wrote.

Records are appended with O_APPEND, then fsync'd, batch by batch. A SIGKILL can only tear the
last line; `recover` drops it, so a re-run starts from the last whole record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class PartInUse(RuntimeError):
    """Another process is appending to the same part file (the same command started twice)."""


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Holds an exclusive lock beside `path` for the job's duration, so two runs of the same command
    cannot both append (and write rows twice). A file system without locks only gets a warning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")  # not the part itself: --retry-errors replaces it
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PartInUse(f"{path}: another clipserve-batch process is writing it; wait for it or stop it") from None
        except OSError as exc:
            log.warning("%s: cannot lock (%s); make sure only one process writes this part", path, exc)
        yield


class CorruptOutput(RuntimeError):
    """A line other than the last is not a JSON record: the file was not written by this tool."""


def vector_to_json(vector: np.ndarray | None) -> list[float] | None:
    """Shortest decimal that reads back to the same float32 (about half the size of float64 repr)."""
    if vector is None:
        return None
    return [float(str(x)) for x in np.asarray(vector, dtype=np.float32)]


def dump_record(record: dict[str, Any]) -> bytes:
    """One record as one line of UTF-8 JSON, newline included."""
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode()


class RecordWriter:
    """Appends batches of records to a JSONL file; each batch is on disk when write() returns."""

    def __init__(self, path: Path, fsync: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fsync = fsync
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        data = b"".join(dump_record(r) for r in records)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_lines_with_offsets(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line including its newline) for every line of a file."""
    offset = 0
    with path.open("rb") as f:
        for line in f:
            yield offset, line
            offset += len(line)


def parse_line(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "id" in record else None


@dataclass
class PartState:
    """What a part file already holds: the ids written and their per-row errors by code."""

    done: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)


def recover(path: Path) -> PartState:
    """Ids already in the part file. Truncates a torn last line (a killed run) in place."""
    state = PartState()
    if not path.exists():
        return state
    good_end = 0
    bad: tuple[int, int] | None = None  # (offset, length) of an unparsable line
    for offset, line in iter_lines_with_offsets(path):
        if bad is not None:
            raise CorruptOutput(f"{path}: unreadable line at byte {bad[0]} is not the last line")
        record = parse_line(line)
        if record is None:
            bad = (offset, len(line))
            continue
        state.done.add(str(record["id"]))
        if record.get("error"):
            state.errors[str(record["error"].get("code", "error"))] += 1
        good_end = offset + len(line)
    if bad is not None:
        log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, bad[1])
        with path.open("r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return state


def drop_error_records(path: Path) -> int:
    """Rewrites the part without its per-row errors (atomically), so a re-run retries those rows.
    Returns how many were dropped. A torn last line is dropped too."""
    if not path.exists():
        return 0
    tmp = path.with_name(f".{path.name}.retry-{os.getpid()}")
    dropped = 0
    with tmp.open("wb") as out:
        for _, line in iter_lines_with_offsets(path):
            record = parse_line(line)
            if record is None or record.get("error"):
                dropped += record is not None
                continue
            out.write(line)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return dropped


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Whole records of a part file (a torn last line is skipped, not repaired)."""
    for _, line in iter_lines_with_offsets(path):
        record = parse_line(line)
        if record is not None:
            yield record
