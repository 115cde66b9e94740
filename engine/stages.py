"""CPU seconds spent per stage of serving, process-wide: where a request's cost goes besides the model.

Each stage is timed with the calling thread's CPU clock (``time.thread_time``), so a thread waiting for the
GIL or for the model costs nothing here; the benchmark subtracts the bare model's CPU from the process's to
get the serving overhead and splits it with these counters (``clipserve_stage_cpu_seconds_total``).
Stages: ``request`` (a request thread from the first to the last line of the app, the others included),
``parse`` (read and validate the body), ``tokenize`` (texts to token ids, cache look-ups included),
``images`` (decode and preprocess, on the decode threads) and ``serialize`` (JSON out). The model's own CPU
is not a stage: torch spreads it over its threads, so the benchmark measures it bare.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ContextManager

STAGES = ("request", "parse", "tokenize", "images", "serialize")


class StageClock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = dict.fromkeys(STAGES, 0.0)
        self._counted_elsewhere: dict[str, Callable[[], float]] = {}

    def count_elsewhere(self, stage: str, read: Callable[[], float]) -> None:
        """A stage whose threads keep their own total (images: the decode threads in inputs/)."""
        self._counted_elsewhere[stage] = read

    @contextlib.contextmanager
    def timing(self, stage: str, traced: bool = True) -> Iterator[None]:
        """The stage's CPU on this thread, inside a span of the same name when tracing is on (``traced``:
        a stage too short to be worth a span's own cost, JSON out, says False)."""
        started = time.thread_time()
        try:
            with span(f"clipserve.{stage}") if traced else contextlib.nullcontext():
                yield
        finally:
            self.add(stage, time.thread_time() - started)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] += seconds

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            out = dict(self._seconds)
        return out | {stage: read() for stage, read in self._counted_elsewhere.items()}


clock = StageClock()


def _no_span(name: str, **attributes: Any) -> ContextManager[Any]:
    return contextlib.nullcontext()


_span_factory: Callable[..., ContextManager[Any]] = _no_span


def set_span_factory(factory: Callable[..., ContextManager[Any]] | None) -> None:
    """How ``span`` opens a span (infra/tracing.py's when tracing is on): engine/ never imports a tracer."""
    global _span_factory
    _span_factory = factory or _no_span


def span(name: str, **attributes: Any) -> ContextManager[Any]:
    """A span around a block on the current thread; nothing at all by default."""
    return _span_factory(name, **attributes)
