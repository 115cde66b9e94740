"""Several models in one process: one inference thread shared fairly, and a memory budget they load within.

Why one thread: the models share the container's cores. Two model calls at once would oversubscribe them (and
multiply torch's or ONNX Runtime's threads), so every model's batches go through one Batcher, each model in its
own lane, and the lanes take turns (engine.batcher). Why a budget: a deployment may list more models than fit in
its memory at once. They load at boot in list order while they fit, the rest on first use; a load that would not
fit first unloads the least recently used idle model (no request using it, nothing of it queued or running). A
request for a model that is not loaded waits for it within its deadline (up to ``load_wait_s``), then gets
``NotReady`` with a Retry-After estimate. Sizes are the bundles' own (the files the chosen runtime maps), given
by whoever builds the set, so this module reads no manifest and imports no model code.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from engine.batcher import Batcher, Unbatched
from engine.cache import CacheStats, SharedCache
from engine.service import EmbeddingEngine, ModelState, NotReady

log = logging.getLogger(__name__)

GiB = 1024 ** 3
# What the process needs besides the models' weights (the runtime's libraries, request threads, images being
# decoded: up to DECODE_CONCURRENCY x ~300 MB for 40 MP pictures), taken off the container's limit.
PROCESS_MARGIN_BYTES = int(1.5 * GiB)
_RETRY_LOAD_S = 0.05  # how often a load waiting for memory looks again


class UnknownModel(KeyError):
    """A request named a model this deployment does not serve."""

    def __init__(self, name: str, served: list[str], aliases: Mapping[str, str]) -> None:
        listed = ", ".join(served) + (f" (aliases: {', '.join(f'{a}={v}' for a, v in aliases.items())})"
                                      if aliases else "")
        super().__init__(f"unknown model {name[:100]!r}: this deployment serves {listed}")
        self.name = name
        self.served = served

    def __str__(self) -> str:
        return str(self.args[0])


class ModelTooLarge(ValueError):
    """A model cannot fit in the memory budget even alone: the boot stops with the sizes."""


def container_memory_bytes() -> int | None:
    """The memory limit of this container (cgroup v2, then v1), else the machine's memory; None if unknown."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(path, encoding="ascii").read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 writes a huge number for "no limit"
            return int(raw)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def default_budget(limit: int | None) -> int | None:
    """The container's limit less PROCESS_MARGIN_BYTES, at least half of it; None (no budget) if unknown."""
    return None if limit is None else max(limit - PROCESS_MARGIN_BYTES, limit // 2)


@dataclass
class _Slot:
    engine: EmbeddingEngine
    size: int  # bytes the model takes once loaded (its budget share)
    leases: int = 0  # requests using it now
    last_used: float = 0.0
    requests: int = 0
    loads: int = 0
    evictions: int = 0
    on_demand: bool = False  # its current load was asked for by a request (which may wait for it)
    loader: threading.Thread | None = None
    resident_seen: int | None = None  # RSS growth measured over its last load


class ModelSet:
    """The models a deployment serves, by name, the first the default; each an EmbeddingEngine on one shared
    batcher. Offers the process-wide part of an engine's interface (start, health, observers, the default
    model's state and info), so code that served one model keeps working."""

    def __init__(self, engines: Mapping[str, EmbeddingEngine], *, sizes: Mapping[str, int] | None = None,
                 budget_bytes: int | None = None, load_wait_s: float = 30.0, aliases: Mapping[str, str] | None = None,
                 batcher: Batcher | Unbatched | None = None) -> None:
        """``batcher``: the one the engines share (None: a single engine that owns its own). ``sizes``: each model's
        bytes in memory once loaded; ``budget_bytes``: what all may take together (None: no limit)."""
        if not engines:
            raise ValueError("a ModelSet needs at least one model")
        self.names = list(engines)
        self.default = self.names[0]
        self.aliases = dict(aliases or {})
        self.budget_bytes = budget_bytes
        self.load_wait_s = load_wait_s
        self._batcher = batcher
        self._slots = {name: _Slot(engine, int((sizes or {}).get(name, 0))) for name, engine in engines.items()}
        self._lock = threading.RLock()
        self._started_pid: int | None = None
        for name, slot in self._slots.items():
            if budget_bytes is not None and slot.size > budget_bytes:
                raise ModelTooLarge(f"model {name} needs {_mb(slot.size)} in memory, more than the whole budget of "
                                    f"{_mb(budget_bytes)} (MODEL_MEMORY_BUDGET, or the container's memory less "
                                    f"{_mb(PROCESS_MARGIN_BYTES)}): give the container more memory or serve a "
                                    "smaller model")

    @classmethod
    def from_settings(cls, settings: Any, loader_for: Callable[[str], Callable[[], Any]],
                      sizes: Mapping[str, int], shared_cache: SharedCache | None = None) -> "ModelSet":
        """The set MODELS names, on one batcher; the default model starts loading at ``start``, the others wait."""
        stats = CacheStats()
        engines: dict[str, EmbeddingEngine] = {}

        def run(kind: str, options: Any, payloads: list[Any]) -> list[Any]:  # options: (model name, normalize)
            return engines[options[0]]._run_batch(kind, options, payloads)

        if settings.batching:
            batcher: Batcher | Unbatched = Batcher(
                run, max_batch_size=settings.batch_max_size, max_wait_s=settings.batch_max_wait_ms / 1000,
                queue_size=settings.queue_size, stall_timeout_s=settings.stall_timeout_s,
                max_queue_wait_s=settings.queue_wait_budget_s,
                more_coming=lambda: any(e.busy_preparing for e in engines.values()))
        else:
            batcher = Unbatched(run, stall_timeout_s=settings.stall_timeout_s)
        for i, name in enumerate(settings.served_models):
            engines[name] = EmbeddingEngine.from_settings(
                settings, loader_for(name), shared_cache, name=name, batcher=batcher, cache_stats=stats,
                initial_state=ModelState.LOADING if i == 0 else ModelState.UNLOADED)
        budget = settings.memory_budget_bytes or default_budget(container_memory_bytes())
        return cls(engines, sizes=sizes, budget_bytes=budget, load_wait_s=settings.model_load_wait_s,
                   aliases=settings.aliases(), batcher=batcher)

    @classmethod
    def around(cls, engine: EmbeddingEngine, name: str) -> "ModelSet":
        """One engine that owns its batcher (tests, and callers that built their own engine)."""
        engine.name = engine.name or name
        return cls({engine.name: engine})

    # names -----------------------------------------------------------------------------------

    def resolve(self, name: str | None) -> str:
        """The served variant a request's ``model`` means: None -> the default, an alias -> its variant."""
        if name is None:
            return self.default
        if name in self._slots:
            return name
        if name in self.aliases:
            return self.aliases[name]
        raise UnknownModel(name, self.names, self.aliases)

    def engine(self, name: str | None = None) -> EmbeddingEngine:
        return self._slots[self.resolve(name)].engine

    def info_of(self, name: str | None = None) -> Any:
        """A model's facts, also while it is unloaded (from its last load); NotReady before its first load."""
        engine = self.engine(name)
        return engine.known_info or engine.info

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the inference thread and load the models in list order while they fit (once per process)."""
        pid = os.getpid()
        if self._started_pid == pid:
            return
        with self._lock:
            if self._started_pid == pid:
                return
            self._started_pid = pid
            if self._batcher is None:  # one engine with its own batcher: it loads itself
                self._slots[self.default].engine.start()
                return
            self._batcher.start()
            for slot in self._slots.values():
                slot.loader = None  # threads do not survive a fork
            threading.Thread(target=self._load_at_boot, name="clipserve-load", daemon=True).start()

    def shutdown(self, timeout: float = 5.0) -> None:
        if self._batcher is None:
            self._slots[self.default].engine.shutdown(timeout)
        else:
            self._batcher.shutdown(timeout)

    def _load_at_boot(self) -> None:
        for name in self.names:
            slot = self._slots[name]
            with self._lock:
                if name != self.default:
                    if slot.engine.state is not ModelState.UNLOADED:
                        continue  # a request is loading it already
                    if not self._fits(slot.size):
                        log.info("model %s does not fit beside those loaded (%s of %s budgeted): it loads on first "
                                 "use", name, _mb(self._committed()), _mb(self.budget_bytes or 0))
                        return
                    slot.engine.reserve()
            self._load(name)

    def _load(self, name: str) -> bool:
        slot = self._slots[name]
        before = _rss_bytes()
        ready = slot.engine.load_now()
        after = _rss_bytes()
        with self._lock:
            slot.loads += ready
            slot.on_demand = False
            if before is not None and after is not None:
                slot.resident_seen = max(0, after - before)
        return ready

    # requests --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def use(self, name: str | None, timeout: float) -> Iterator[EmbeddingEngine]:
        """The engine of the model ``name`` (None: the default), loaded, held for the duration: it is not evicted
        while any request holds it. Raises UnknownModel, or NotReady once ``timeout`` (capped at load_wait_s) passes
        while it loads."""
        resolved = self.resolve(name)
        slot = self._slots[resolved]
        with self._lock:
            slot.leases += 1
            slot.requests += 1
            slot.last_used = time.monotonic()
        try:
            self._wait_loaded(resolved, slot, timeout)
            yield slot.engine
        finally:
            with self._lock:
                slot.leases -= 1
                slot.last_used = time.monotonic()

    def _wait_loaded(self, name: str, slot: _Slot, timeout: float) -> None:
        engine = slot.engine
        if engine.state is ModelState.READY:
            return
        if engine.state is ModelState.FAILED or (engine.state is ModelState.LOADING and not self.booted):
            # failed for good, or the service itself is still starting (/health says so): answer at once
            raise NotReady(engine.state, model=name, retry_after_s=self._retry_after(slot))
        if engine.state is ModelState.UNLOADED:
            self._load_on_demand(name, slot)
        if not engine.wait_ready(max(0.0, min(timeout, self.load_wait_s))):
            raise NotReady(engine.state if engine.state is ModelState.FAILED else ModelState.LOADING, model=name,
                           retry_after_s=self._retry_after(slot))

    @property
    def booted(self) -> bool:
        """The default model has been ready once: the service is up (models load and unload after that)."""
        return self._slots[self.default].engine.load_seconds is not None

    def _load_on_demand(self, name: str, slot: _Slot) -> None:
        with self._lock:
            if slot.loader is not None and slot.loader.is_alive():
                return
            slot.on_demand = True
            slot.loader = threading.Thread(target=self._make_room_and_load, args=(name, slot),
                                           name=f"clipserve-load-{name}", daemon=True)
            slot.loader.start()

    def _make_room_and_load(self, name: str, slot: _Slot) -> None:
        """Evict least recently used idle models until ``name`` fits, then load it; while nothing can be evicted,
        look again shortly, as long as a request still wants the model."""
        while True:
            with self._lock:
                if slot.engine.state is ModelState.READY:
                    return
                if self._evict_for(name, slot.size) and slot.engine.reserve():
                    break
                if slot.leases == 0:  # every request that wanted it has given up: load it when asked again
                    slot.on_demand = False
                    return
            time.sleep(_RETRY_LOAD_S)
        self._load(name)

    def _evict_for(self, name: str, size: int) -> bool:
        """Under the lock: unload idle models, least recently used first, until ``size`` more bytes fit."""
        while not self._fits(size):
            idle = [(s.last_used, n) for n, s in self._slots.items()
                    if n != name and s.engine.state is ModelState.READY and s.leases == 0 and not s.engine.busy
                    and s.engine.queued() == 0]
            if not idle:
                return False
            _, victim = min(idle)
            if self._slots[victim].engine.unload():
                self._slots[victim].evictions += 1
                log.info("model %s unloaded to make room for %s", victim, name)
                _release_memory()
        return True

    def _fits(self, size: int) -> bool:
        return self.budget_bytes is None or self._committed() + size <= self.budget_bytes

    def _committed(self) -> int:
        """Bytes of the models loaded or loading."""
        return sum(s.size for s in self._slots.values() if s.engine.state in (ModelState.READY, ModelState.LOADING))

    def _retry_after(self, slot: _Slot) -> int:
        """Seconds until the model is likely ready: its last load time, else a guess from its size (~1 s per GB)."""
        seconds = slot.engine.load_seconds or slot.size / GiB + 1
        return max(1, math.ceil(seconds))

    # what the process-wide code asks (the default model, the shared thread) ---------------------

    @property
    def state(self) -> ModelState:
        return self._slots[self.default].engine.state

    @property
    def load_error(self) -> BaseException | None:
        return self._slots[self.default].engine.load_error

    @property
    def info(self) -> Any:
        """The default model's facts (NotReady before its first load)."""
        return self.info_of()

    @property
    def device_error(self) -> str | None:
        return next((s.engine.device_error for s in self._slots.values() if s.engine.device_error), None)

    @property
    def cache_stats(self) -> CacheStats:
        return self._slots[self.default].engine.cache_stats

    @property
    def vectors(self) -> Any:
        return self._slots[self.default].engine.vectors

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._slots[self.default].engine.wait_ready(timeout)

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, on the loader's thread, when the default model has loaded (the service is up)."""
        self._slots[self.default].engine.on_first_ready = callback

    def loop_health(self) -> Any:
        return (self._batcher or self._slots[self.default].engine._batcher).health()

    def set_batch_observer(self, observer: Any) -> None:
        self._slots[self.default].engine.set_batch_observer(observer)

    def set_batch_tracer(self, tracer: Any) -> None:
        self._slots[self.default].engine.set_batch_tracer(tracer)

    def set_request_observer(self, observer: Any) -> None:
        for slot in self._slots.values():
            slot.engine.set_request_observer(observer)

    def describe(self) -> list[dict[str, Any]]:
        """Per model, in MODELS order: its state, facts, use and memory (GET /, /stats, metrics)."""
        out = []
        for name, slot in self._slots.items():
            engine = slot.engine
            counts = engine.batch_counts
            batches = {kind: {"calls": counts[kind, "calls"], "items": counts[kind, "items"],
                              "mean_size": round(counts[kind, "items"] / counts[kind, "calls"], 2)}
                       for kind in sorted({k for k, _ in counts}) if counts[kind, "calls"]}
            out.append({"name": name, "default": name == self.default, "state": engine.state.value,
                        "info": engine.known_info, "aliases": sorted(a for a, v in self.aliases.items() if v == name),
                        "requests": slot.requests, "in_use": slot.leases, "queued": engine.queued(),
                        "batches": batches, "load_seconds": engine.load_seconds, "loads": slot.loads,
                        "evictions": slot.evictions, "budgeted_bytes": slot.size,
                        "resident_bytes": slot.resident_seen if engine.state is ModelState.READY else 0})
        return out

    def memory(self) -> dict[str, Any]:
        return {"budget_bytes": self.budget_bytes, "committed_bytes": self._committed()}


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_memory() -> None:
    """After an unload: collect the model's cycles and hand freed heap back to the OS (glibc keeps it otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
