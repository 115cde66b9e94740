"""Progress: a tqdm bar (rate, ETA) on a terminal, plain periodic log lines otherwise
(Cloud Run Jobs and CI capture stderr line by line, where a bar would be noise)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

log = logging.getLogger("batch.progress")


class Progress(Protocol):
    def update(self, rows: int, errors: int) -> None: ...

    def close(self) -> None: ...


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class LogProgress:
    """One log line every `interval_s` seconds, and one at the end."""

    def __init__(self, total: int, desc: str, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.interval_s, self._clock = total, desc, interval_s, clock
        self.rows = self.errors = 0
        self._start = self._last = clock()

    def update(self, rows: int, errors: int) -> None:
        self.rows += rows
        self.errors += errors
        if self._clock() - self._last >= self.interval_s:
            self._emit()

    def _emit(self) -> None:
        now = self._clock()
        self._last = now
        rate = self.rows / max(now - self._start, 1e-9)
        percent = 100.0 * self.rows / self.total if self.total else 100.0
        eta = format_duration((self.total - self.rows) / rate) if rate > 0 else "?"
        log.info(
            "%s: %d/%d rows (%.1f%%), %.1f rows/s, ETA %s, %d errors",
            self.desc,
            self.rows,
            self.total,
            percent,
            rate,
            eta,
            self.errors,
        )

    def close(self) -> None:
        self._emit()


class BarProgress:
    def __init__(self, total: int, desc: str, stream: TextIO) -> None:
        from tqdm import tqdm

        sized = _terminal_columns(stream) > 0  # a pty without a size (some CI runners) would get an empty bar
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="row",
            file=stream,
            smoothing=0.1,
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            nrows=None if sized else 20,
        )
        self._errors = 0

    def update(self, rows: int, errors: int) -> None:
        if errors:
            self._errors += errors
            self._bar.set_postfix(errors=self._errors, refresh=False)
        self._bar.update(rows)

    def close(self) -> None:
        self._bar.close()


def _terminal_columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def make_progress(total: int, desc: str, interval_s: float = 30.0, stream: TextIO | None = None) -> Progress:
    stream = stream or sys.stderr
    if stream.isatty():
        return BarProgress(total, desc, stream)
    return LogProgress(total, desc, interval_s)
