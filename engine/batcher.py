"""One inference thread fed by a bounded queue, a Future per item, batches grouped by kind and options.

Why this shape: several torch calls at once from different request threads oversubscribe the cores,
and batching across requests is worth about 1.8x (bench notes). So request threads only enqueue
and wait; a single thread runs the model. Batches are shared fairly: each submitter's items form a
group, and while several groups wait, none takes more than its share of a batch, so a request of two
thousand texts cannot make one-text requests wait behind all of it. Bulk work (a request larger than a
batch) also yields the model to interactive requests while they keep coming: its items ride along in
the batches they start rather than keeping the cores busy between them. Several models can share the one
thread (engine.models): each submits in its own lane, items of two lanes never share a batch, and the next
batch goes to the lane served least recently among those with items waiting, so a busy model cannot starve
a quiet one. Admission is by expected wait, not item count: the loop measures what an item of each kind costs
in each lane (seconds of model call per item, a moving average), and a request is refused at once (``Overloaded``,
mapped to 429 with a ``Retry-After`` from the same estimate) when the work queued ahead of it plus its own would
take longer than the budget (``max_queue_wait_s``). A text and an image then weigh what they cost, and a queue
holding a second of work takes requests it can answer in time. The item count (``queue_size``) stays as a hard
bound on memory. Three failure rules keep a bad batch from hurting others:
- a request the queue cannot take is refused whole at once, never half of it;
- when ``run_batch`` raises, every future of that batch gets an exception: nobody waits forever;
- the loop records its progress, so a model call that hangs shows up in ``health()``.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

log = logging.getLogger(__name__)

# run_batch(kind, options, payloads) -> one result per payload, in order.
RunBatch = Callable[[str, Hashable, list[Any]], Sequence[Any]]
# Interactive requests seen this recently make bulk-only batches wait (up to _BULK_YIELD_S) for one of theirs.
_INTERACTIVE_RECENT_S = 0.1
_BULK_YIELD_S = 0.02
# Bulk items a batch with interactive ones may carry at least (see _take_matching).
_BULK_FLOOR = 2
# Weight of the newest batch in the moving average of an item's cost (about the last ten batches count).
_COST_WEIGHT = 0.2


class Overloaded(RuntimeError):
    """The queue cannot take the request's items now; the client should retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineStopped(RuntimeError):
    """The engine was shut down (or never started) while work was pending."""


class BatchFailed(RuntimeError):
    """``run_batch`` raised or returned the wrong number of results; the cause is chained."""


@dataclass(frozen=True)
class LoopHealth:
    """What ``/health`` needs to tell a working loop from a wedged one."""

    running: bool          # the inference thread is alive in this process
    stalled: bool          # a model call, or the oldest queued item's wait, has lasted longer than stall_timeout_s
    busy_for_s: float      # how long the current model call has run (0 when idle)
    queue_depth: int
    batches_done: int
    batches_failed: int
    oldest_wait_s: float = 0.0  # how long the oldest queued item has waited (0 when the queue is empty)
    expected_wait_s: float = 0.0  # the queued and running work's measured cost: what a new item would wait

    @property
    def healthy(self) -> bool:
        return self.running and not self.stalled


class ItemFuture(Future):
    """A Future that also says which model call served it, for the request's log line."""

    batch_size: int = 0        # items in the model call that produced this result
    queue_wait_s: float = 0.0  # time from enqueue to the start of that call


@dataclass
class _Item:
    key: tuple[str, Hashable]
    payload: Any
    future: ItemFuture
    enqueued_at: float
    group: object  # the request the item belongs to: batches are shared fairly between groups
    bulk: bool = False  # part of a request larger than a batch: yields to interactive requests
    tag: object = None  # what the batch tracer captured on the request's thread (its trace context)
    lane: Hashable = None  # the model it is for: lanes take turns (see _pick_key)


# The batch tracer: ``capture()`` on the request's thread when its items are queued; after each model call, on
# the inference thread, ``report(kind, batch_size, [(tag, enqueued_at)], started, ended, lane=model)`` (monotonic
# seconds).
BatchTracer = tuple[Callable[[], object], Callable[[str, int, list[tuple[object, float]], float, float], None]]


class CostModel:
    """Seconds of model call per item, per (lane, kind): a moving average of the batches run. Until a batch of that
    kind ran in that lane its cost is 0: admission counts it as free, as the count bound did."""

    def __init__(self) -> None:
        self._per_item: dict[tuple[Hashable, str], float] = {}

    def observe(self, lane: Hashable, kind: str, seconds: float, items: int) -> None:
        per_item = seconds / items
        old = self._per_item.get((lane, kind))
        self._per_item[lane, kind] = per_item if old is None else old + _COST_WEIGHT * (per_item - old)

    def per_item(self, lane: Hashable, kind: str) -> float:
        return self._per_item.get((lane, kind), 0.0)

    def of(self, counts: collections.Counter) -> float:
        """Seconds the items counted per (lane, kind) would take the model."""
        return sum(n * self.per_item(lane, kind) for (lane, kind), n in counts.items())


class Batcher:
    """Bounded queue + one inference thread. ``start``/``shutdown`` come as a pair."""

    def __init__(self, run_batch: RunBatch, *, max_batch_size: int = 32, max_wait_s: float = 0.005,
                 queue_size: int = 256, stall_timeout_s: float = 120.0, idle_poll_s: float = 0.25,
                 isolate_failures: bool = True, more_coming: Callable[[], bool] | None = None,
                 max_queue_wait_s: float | None = None) -> None:
        """``more_coming``: whether items are on their way (requests still preparing inputs); a batch waits
        up to ``max_wait_s`` for more only while it says so, so a lone request at idle never waits.
        ``max_queue_wait_s``: the expected-wait budget a request must fit (None: the item count alone)."""
        if max_batch_size < 1 or queue_size < 1:
            raise ValueError("max_batch_size and queue_size must be positive")
        if max_queue_wait_s is not None and max_queue_wait_s <= 0:
            raise ValueError("max_queue_wait_s must be positive")
        self._max_queue_wait = max_queue_wait_s
        self.costs = CostModel()
        self._queued: collections.Counter = collections.Counter()  # (lane, kind) -> items waiting
        self._running: tuple[Hashable, str, int, float] | None = None  # the batch in the model: lane, kind, size, start
        self._run_batch = run_batch
        self._max_batch = max_batch_size
        self._max_wait = max_wait_s
        self._capacity = queue_size
        self._stall_timeout = stall_timeout_s
        self._idle_poll = idle_poll_s
        self._isolate_failures = isolate_failures
        self._more_coming = more_coming
        self._pending: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._busy_since: float | None = None
        self._batches_done = 0
        self._batches_failed = 0
        self._on_batch: Callable[[str, int, float], None] | None = None
        self._tracer: BatchTracer | None = None
        self._interactive_at = -1e9  # when the last interactive (not bulk) item was queued
        self._served_at: dict[Hashable, float] = {}  # lane -> when its last batch started

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the inference thread; idempotent, and restarts it in a forked child (threads do not survive fork)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            if self._pid != os.getpid():
                # A forked child inherits the parent's queue but not its thread: drop what cannot be served.
                self._pending.clear()
                self._queued.clear()
            self._stop.clear()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="clipserve-inference", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop after its current batch; fail whatever is still queued with EngineStopped."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._cond:
            leftovers, self._pending = list(self._pending), collections.deque()
            self._queued.clear()
        for item in leftovers:
            _fail(item.future, EngineStopped("the service is shutting down"))

    def set_batch_observer(self, observer: Callable[[str, int, float], None] | None) -> None:
        """Call ``observer(kind, batch_size, queue_wait_s)`` after each batch (logs/metrics hook)."""
        self._on_batch = observer

    def set_batch_tracer(self, tracer: BatchTracer | None) -> None:
        """See BatchTracer: how a model call serving many requests is tied to each of them (tracing hook)."""
        self._tracer = tracer

    # request side ----------------------------------------------------------------------------

    def submit(self, kind: str, options: Hashable, payloads: Sequence[Any], group: object = None,
               bulk: bool = False, lane: Hashable = None) -> list[Future]:
        """Queue every payload or none: raises Overloaded when they do not all fit. ``group``: the request the
        payloads belong to (a request that submits in several parts passes the same one); None = its own.
        ``bulk``: part of a request larger than a batch, which yields to interactive ones. ``lane``: the model the
        payloads are for (``options`` must tell models apart too: a batch is one kind and one options value)."""
        if self._stop.is_set() or self._thread is None or self._pid != os.getpid():
            raise EngineStopped("the inference loop is not running")
        now = time.monotonic()
        group = object() if group is None else group
        tag = self._tracer[0]() if self._tracer is not None else None
        items = [_Item((kind, options), p, ItemFuture(), now, group, bulk, tag, lane) for p in payloads]
        with self._cond:
            self._admit(kind, lane, len(items))
            if not bulk:
                self._interactive_at = now
            self._pending.extend(items)
            self._queued[lane, kind] += len(items)
            self._cond.notify()
        return [i.future for i in items]

    def _admit(self, kind: str, lane: Hashable, count: int) -> None:
        """Raise Overloaded unless ``count`` items fit: the item bound, then the expected-wait budget. A request
        alone in an idle queue is always taken (waiting would not make it fit); otherwise Retry-After is the time
        until the work ahead has drained enough for it to fit."""
        ahead = self._expected_wait()
        if len(self._pending) + count > self._capacity:
            excess = len(self._pending) + count - self._capacity
            drain = ahead * excess / max(1, len(self._pending))
            raise Overloaded(f"the model queue is full ({len(self._pending)} of {self._capacity} items waiting)",
                             retry_after_s=_whole_seconds(drain))
        if self._max_queue_wait is None or ahead <= 0:
            return
        own = count * self.costs.per_item(lane, kind)
        if ahead + own > self._max_queue_wait:
            drain = ahead - max(0.0, self._max_queue_wait - own)
            raise Overloaded(f"the model has {ahead:.1f} s of work queued; this request's {own:.1f} s more would "
                             f"exceed the {self._max_queue_wait:g} s budget", retry_after_s=_whole_seconds(drain))

    def _expected_wait(self) -> float:
        """Seconds until the model would start on an item queued now: the queued items' measured cost and what is
        left of the batch in the model."""
        queued = self.costs.of(self._queued)
        running = self._running
        if running is None:
            return queued
        lane, kind, size, started = running
        return queued + max(0.0, size * self.costs.per_item(lane, kind) - (time.monotonic() - started))

    def poke(self) -> None:
        """Wake a batch that is waiting for more items, so it checks ``more_coming`` again."""
        with self._cond:
            self._cond.notify()

    def depth_by_lane(self) -> dict[Hashable, int]:
        """Items waiting per lane (model)."""
        return dict(collections.Counter(item.lane for item in list(self._pending)))

    def health(self) -> LoopHealth:
        busy_since = self._busy_since
        busy_for = time.monotonic() - busy_since if busy_since is not None else 0.0
        running = self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
        oldest_wait = self._oldest_wait()
        # Either a model call hangs, or the loop stopped taking work (alive but stuck elsewhere): no progress.
        stalled = max(busy_for, oldest_wait) > self._stall_timeout
        with self._cond:
            expected = self._expected_wait()
        return LoopHealth(running=running, stalled=stalled, busy_for_s=busy_for,
                          queue_depth=len(self._pending), batches_done=self._batches_done,
                          batches_failed=self._batches_failed, oldest_wait_s=oldest_wait,
                          expected_wait_s=expected)

    def _oldest_wait(self) -> float:
        try:
            return time.monotonic() - self._pending[0].enqueued_at
        except IndexError:  # empty (possibly emptied by the loop between the check and the read)
            return 0.0

    # inference thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if batch:
                self._run(batch)

    def _next_batch(self) -> list[_Item]:
        """Wait for an item, then gather items with the same (kind, options) up to the size or wait limit."""
        with self._cond:
            if not self._pending:
                self._cond.wait(self._idle_poll)
            if not self._pending or self._stop.is_set():
                return []
            self._yield_to_interactive()
            key, lane = self._pick_key()
            self._served_at[lane] = time.monotonic()
            batch = self._take_matching(key, [])
            deadline = time.monotonic() + self._max_wait
            while len(batch) < self._max_batch and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._more_coming is not None and not self._more_coming()):
                    break
                self._cond.wait(remaining)
                batch += self._take_matching(key, batch)
        # Skip items whose request already gave up (timed out and cancelled its futures).
        return [i for i in batch if i.future.set_running_or_notify_cancel()]

    def _pick_key(self) -> tuple[tuple[str, Hashable], Hashable]:
        """The next batch's (kind, options) and lane: the oldest waiting item's, in the lane (model) served least
        recently of those with items waiting. One lane: simply the oldest item's."""
        first: dict[Hashable, _Item] = {}
        for item in self._pending:
            first.setdefault(item.lane, item)
        lane = min(first, key=lambda name: (self._served_at.get(name, -1e9), first[name].enqueued_at))
        return first[lane].key, lane

    def _yield_to_interactive(self) -> None:
        """With only bulk items queued while interactive requests keep coming, wait a little for one of them:
        the bulk items then ride along in its batch instead of taking the cores between interactive batches
        (on a small instance the model and the request threads share the same cores)."""
        deadline = time.monotonic() + _BULK_YIELD_S
        while (all(item.bulk for item in self._pending) and not self._stop.is_set()
               and time.monotonic() - self._interactive_at < _INTERACTIVE_RECENT_S):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take_matching(self, key: tuple[str, Hashable], batch: list[_Item]) -> list[_Item]:
        """Queued items with ``key`` to add to ``batch``, oldest first, each group up to its fair share.

        The share is the batch size over the number of groups in the batch or waiting for it: one request
        alone fills whole batches; with others waiting, a large request adds only its share, so the batch
        stays short and the others' items run in it rather than after the large request's. Bulk items ride
        along in a batch that has interactive ones only up to half their number (at least _BULK_FLOOR): on a
        model-bound instance a batch's time grows with its items, and that time is the interactive
        requests' latency."""
        matching = [item for item in self._pending if item.key == key]
        per_group = collections.Counter(item.group for item in batch)
        share = -(-self._max_batch // max(1, len(set(per_group) | {item.group for item in matching})))
        room = self._max_batch - len(batch)
        taken: list[_Item] = []

        def take(items: list[_Item], limit: int) -> None:
            for item in items:
                if len(taken) >= room or limit <= 0:
                    return
                if per_group[item.group] < share:
                    per_group[item.group] += 1
                    taken.append(item)
                    limit -= 1

        take([item for item in matching if not item.bulk], room)
        interactive = sum(not item.bulk for item in (*batch, *taken))
        bulk_limit = room if not interactive else max(_BULK_FLOOR, interactive // 2) - sum(i.bulk for i in batch)
        take([item for item in matching if item.bulk], bulk_limit)
        chosen = set(map(id, taken))
        self._pending = collections.deque(item for item in self._pending if id(item) not in chosen)
        if taken:
            self._queued[taken[0].lane, key[0]] -= len(taken)
        return taken

    def _run(self, batch: list[_Item]) -> None:
        kind, options = batch[0].key
        lane = batch[0].lane
        started = time.monotonic()
        self._busy_since = started
        self._running = (lane, kind, len(batch), started)
        try:
            results = self._call(kind, options, [i.payload for i in batch])
        except BaseException as exc:  # noqa: BLE001 - every future must hear about it, whatever it is
            self._batches_failed += 1
            if self._isolate_failures and len(batch) > 1:
                log.warning("batch of %d %s items failed (%s); retrying them one by one", len(batch), kind, exc)
                for item in batch:
                    self._run_alone(item)
            else:
                log.error("batch of %d %s items failed", len(batch), kind, exc_info=exc)
                for item in batch:
                    _fail(item.future, exc)
        else:
            self._batches_done += 1
            with self._cond:
                self.costs.observe(lane, kind, time.monotonic() - started, len(batch))
            for item, result in zip(batch, results, strict=True):
                item.future.batch_size, item.future.queue_wait_s = len(batch), started - item.enqueued_at
                item.future.set_result(result)
        finally:
            self._busy_since = None
            self._running = None
        if self._on_batch is not None:
            try:
                self._on_batch(kind, len(batch), started - min(i.enqueued_at for i in batch))
            except Exception:  # noqa: BLE001 - an observer must never stop inference
                log.exception("batch observer failed")
        if self._tracer is not None:
            try:
                self._tracer[1](kind, len(batch), [(i.tag, i.enqueued_at) for i in batch], started, time.monotonic(),
                                lane=batch[0].lane)
            except Exception:  # noqa: BLE001 - tracing must never stop inference
                log.exception("batch tracer failed")

    def _run_alone(self, item: _Item) -> None:
        kind, options = item.key
        self._busy_since = time.monotonic()
        item.future.batch_size, item.future.queue_wait_s = 1, self._busy_since - item.enqueued_at
        try:
            item.future.set_result(self._call(kind, options, [item.payload])[0])
        except BaseException as exc:  # noqa: BLE001
            log.error("single %s item failed", kind, exc_info=exc)
            _fail(item.future, exc)

    def _call(self, kind: str, options: Hashable, payloads: list[Any]) -> Sequence[Any]:
        return call_batch(self._run_batch, kind, options, payloads)


class Unbatched:
    """The naive design, kept for comparison (``BATCHING=false``): each request runs its own model call
    in its own request thread, at once, with no queue. Same interface as ``Batcher``.

    Concurrent calls oversubscribe the cores and every call is small; the benchmark measures what
    batching gains over this.
    """

    def __init__(self, run_batch: RunBatch, *, stall_timeout_s: float = 120.0) -> None:
        self._run_batch = run_batch
        self._stall_timeout = stall_timeout_s
        self._running: dict[int, float] = {}  # id of a call in progress -> its start time
        self._lock = threading.Lock()
        self._done = 0
        self._failed = 0
        self._stopped = False
        self._on_batch: Callable[[str, int, float], None] | None = None

    def start(self) -> None:
        self._stopped = False

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopped = True

    def set_batch_observer(self, observer: Callable[[str, int, float], None] | None) -> None:
        self._on_batch = observer

    def poke(self) -> None:
        pass  # nothing ever waits for more items here

    def depth_by_lane(self) -> dict[Hashable, int]:
        return {}

    def submit(self, kind: str, options: Hashable, payloads: Sequence[Any], group: object = None,
               bulk: bool = False, lane: Hashable = None) -> list[Future]:
        """Run the model on ``payloads`` now, in the calling thread; the futures come back done."""
        if self._stopped:
            raise EngineStopped("the service is shutting down")
        futures = [ItemFuture() for _ in payloads]
        started = time.monotonic()
        token = id(futures)
        with self._lock:
            self._running[token] = started
        try:
            results = call_batch(self._run_batch, kind, options, list(payloads))
        except BaseException as exc:  # noqa: BLE001 - delivered through the futures, like Batcher
            self._failed += 1
            for f in futures:
                f.set_exception(exc)
        else:
            self._done += 1
            for f, result in zip(futures, results, strict=True):
                f.batch_size = len(payloads)
                f.set_result(result)
        finally:
            with self._lock:
                del self._running[token]
        if self._on_batch is not None:
            try:
                self._on_batch(kind, len(payloads), 0.0)
            except Exception:  # noqa: BLE001 - an observer must never fail a request
                log.exception("batch observer failed")
        return futures

    def health(self) -> LoopHealth:
        with self._lock:
            oldest = min(self._running.values(), default=None)
        busy_for = time.monotonic() - oldest if oldest is not None else 0.0
        return LoopHealth(running=not self._stopped, stalled=busy_for > self._stall_timeout, busy_for_s=busy_for,
                          queue_depth=0, batches_done=self._done, batches_failed=self._failed)


def call_batch(run_batch: RunBatch, kind: str, options: Hashable, payloads: list[Any]) -> Sequence[Any]:
    """``run_batch`` with its failures wrapped in BatchFailed and its result count checked."""
    try:
        results = run_batch(kind, options, payloads)
    except Exception as exc:
        raise BatchFailed(f"{kind} batch of {len(payloads)} failed: {type(exc).__name__}") from exc
    if len(results) != len(payloads):
        raise BatchFailed(f"{kind} batch returned {len(results)} results for {len(payloads)} items")
    return results


def _whole_seconds(seconds: float) -> int:
    """Retry-After takes whole seconds: rounded up, at least 1."""
    return max(1, math.ceil(seconds))


def _fail(future: Future, exc: BaseException) -> None:
    try:
        future.set_exception(exc)
    except InvalidStateError:
        pass  # the request already cancelled it or it is done
