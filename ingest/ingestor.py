"""Bucket events in, index writes out: at least once (a failure that may pass is answered so the platform
retries), never twice (the item id is the object's ``gs://`` / ``s3://`` URI, so every delivery rewrites one
point), newest wins (``ordering``, remembered in the ``ledger``), and what can never succeed goes to the dead
letter once.

One ``Delivery`` is one platform message (a Pub/Sub push, a CloudEvent, an SQS record); its ``Outcome`` says
whether to acknowledge it. The events of a batch are handled together: the objects read in parallel, their
images embedded in one write, so an SQS batch of ten costs one model call.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import posixpath
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ingest.deadletter import DeadLetter, DeadLetterFailed, NoDeadLetter
from ingest.events import ObjectEvent
from ingest.ledger import Ledger
from ingest.objects import ObjectGone, ObjectStore, ObjectTooLarge, StoredObject, StoreUnavailable
from ingest.ordering import Mark, decide, newest_per_object
from inputs.decode import is_image
from search.errors import BackendTimeout, Unavailable

log = logging.getLogger("clipserve.ingest")

Result = Literal["upserted", "deleted", "skipped", "failed", "dead_lettered"]
RESULTS: tuple[Result, ...] = ("upserted", "deleted", "skipped", "failed", "dead_lettered")
LAG_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800)


class Transient(Exception):
    """A failure that may pass (the model loading, Qdrant down, overload): the platform must redeliver."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class NewItem:
    id: str
    data: bytes
    metadata: dict[str, Any]


class Writer(Protocol):
    """The service's side: the open collection, and writes through its embedding path."""

    def index(self) -> Any: ...

    def write(self, items: list[NewItem]) -> dict[int, tuple[str, str]]: ...

    def delete(self, ids: list[str]) -> None: ...


@dataclass(frozen=True)
class Delivery:
    """One platform message: its events, and the message as received (what a dead letter forwards)."""

    events: Sequence[ObjectEvent]
    message: Any = None


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: str = ""
    transient: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.result != "failed"


@dataclass
class _Work:
    event: ObjectEvent
    delivery: int
    result: Result | None = None
    reason: str = ""
    transient: bool = False
    message: str = ""  # why it failed, for the dead letter

    def end(self, result: Result, reason: str, transient: bool = False, message: str = "") -> None:
        self.result, self.reason, self.transient, self.message = result, reason, transient, message or reason


@dataclass
class Counts:
    """What /stats and /metrics show: events by result and reason, and the lag from upload to searchable."""

    events: collections.Counter = field(default_factory=collections.Counter)
    received: int = 0
    lag_buckets: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    lag_sum: float = 0.0
    lag_count: int = 0
    recent_lags: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1024))


def item_metadata(event: ObjectEvent, stored: StoredObject, path_keys: Sequence[str] = ()) -> dict[str, Any]:
    """An object's item metadata, for filters (the same from an event and from a backfill): the object's own
    metadata, then the path rule's keys (INGEST_PATH_KEYS), then where it came from (which wins over a metadata
    key of the same name)."""
    folder = posixpath.dirname(event.name)
    parts = folder.split("/") if folder else []
    return {**stored.metadata, **dict(zip(path_keys, parts)), "uri": event.uri, "bucket": event.bucket,
            "object": event.name, "folder": folder, "content_type": stored.content_type or "",
            "version": event.version or stored.version}


class Ingestor:
    def __init__(self, writer: Writer, stores: Mapping[str, ObjectStore], buckets: frozenset[str], *,
                 max_bytes: int, path_keys: Sequence[str] = (), dead_letter: DeadLetter | None = None,
                 read_concurrency: int = 8) -> None:
        self.writer = writer
        self.stores = dict(stores)
        self.buckets = buckets
        self.max_bytes = max_bytes
        self.path_keys = tuple(path_keys)
        self.dead_letter = dead_letter or NoDeadLetter()
        self.counts = Counts()
        self._counts_lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(256)]
        self._readers = concurrent.futures.ThreadPoolExecutor(read_concurrency, thread_name_prefix="ingest-read")
        self._ledger: Ledger | None = None

    # --- the one entry point -------------------------------------------------------------------------

    def handle(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """An outcome per delivery: acknowledged (done, skipped, dead-lettered) or failed (redeliver)."""
        work = [_Work(event, d) for d, delivery in enumerate(deliveries) for event in delivery.events]
        for w in work:
            self._screen(w)
        live = [w for w in work if w.result is None]
        chosen, _ = newest_per_object([w.event for w in live])
        keep = {id(e) for e in chosen}
        for w in live:
            if id(w.event) not in keep:
                w.end("skipped", "superseded")
        todo = [w for w in live if w.result is None]
        with self._locked({w.event.uri for w in todo}):
            ledger = self._apply(todo) if todo else None
            outcomes = self._outcomes(deliveries, work, ledger)
        self._count(work)
        return outcomes

    def snapshot(self) -> Counts:
        """A copy of the counts, consistent with itself."""
        with self._counts_lock:
            c = self.counts
            return Counts(collections.Counter(c.events), c.received, list(c.lag_buckets), c.lag_sum, c.lag_count,
                          collections.deque(c.recent_lags, maxlen=c.recent_lags.maxlen))

    def stats(self) -> dict[str, Any]:
        """GET /stats' ``ingest``: events by result, the reasons, the lag's recent percentiles."""
        c = self.snapshot()
        by_result = {r: sum(n for (res, _), n in c.events.items() if res == r) for r in RESULTS}
        reasons = {f"{res}:{reason}": n for (res, reason), n in sorted(c.events.items()) if reason}
        lags = sorted(c.recent_lags)
        pick = (lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))], 3)) if lags else (lambda q: None)
        return {"events": {"received": c.received, **by_result}, "reasons": reasons,
                "lag_s": {"p50": pick(0.5), "p95": pick(0.95), "max": round(lags[-1], 3) if lags else None,
                          "count": c.lag_count}}

    # --- steps --------------------------------------------------------------------------------------

    def _screen(self, w: _Work) -> None:
        """What needs no index: foreign buckets and event kinds that change nothing."""
        e = w.event
        if f"{e.scheme}://{e.bucket}" not in self.buckets:
            log.warning("ingest: event for a bucket not in INGEST_BUCKETS skipped", extra={"scheme": e.scheme})
            w.end("skipped", "foreign_bucket")
        elif e.action == "ignore":
            w.end("skipped", "event_type")

    def _apply(self, todo: list[_Work]) -> Ledger | None:
        """Order, read and write ``todo``; the ledger used (None when the index could not be reached)."""
        try:
            ledger = self._ledger_of(self.writer.index())
            marks = ledger.marks(w.event.uri for w in todo)
        except (Transient, Unavailable, BackendTimeout) as exc:
            self._all_transient(todo, exc)
            return None
        deletes, upserts = [], []
        for w in todo:
            verdict = decide(w.event, marks.get(w.event.uri))
            if verdict == "stale":
                w.end("skipped", "stale")
            elif verdict == "already_dead_lettered":
                w.end("dead_lettered", "already_dead_lettered")
            elif w.event.action == "delete":
                deletes.append((w, verdict == "ask_bucket"))
            else:
                upserts.append(w)
        try:
            self._deletes(deletes, ledger)
            self._upserts(upserts, ledger)
        except (Transient, Unavailable, BackendTimeout) as exc:
            self._all_transient([w for w in todo if w.result is None], exc)
        return ledger

    def _deletes(self, deletes: list[tuple[_Work, bool]], ledger: Ledger) -> None:
        doomed = []
        for w, ask in deletes:
            try:
                if ask and self._store(w.event).exists(w.event.bucket, w.event.name):
                    w.end("skipped", "object_exists")  # an unordered delete of an object that is back
                    continue
            except StoreUnavailable as exc:
                w.end("failed", "bucket_unavailable", transient=True)
                log.warning("ingest: %s", exc)
                continue
            doomed.append(w)
        if not doomed:
            return
        self.writer.delete([w.event.uri for w in doomed])
        ledger.record({w.event.uri: Mark(w.event.version, "deleted", at=time.time()) for w in doomed})
        for w in doomed:
            w.end("deleted", "")

    def _upserts(self, upserts: list[_Work], ledger: Ledger) -> None:
        read = list(self._readers.map(self._read, upserts))
        ready = [(w, stored) for w, stored in zip(upserts, read) if stored is not None]
        if not ready:
            return
        errors = self.writer.write([NewItem(w.event.uri, stored.data, item_metadata(w.event, stored, self.path_keys))
                                    for w, stored in ready])
        written = {}
        now = time.time()
        for i, (w, stored) in enumerate(ready):
            if i in errors:
                w.end("failed", errors[i][0], message=errors[i][1])
            else:
                written[w.event.uri] = Mark(w.event.version or stored.version, "present",
                                            etag=w.event.etag or stored.etag, at=now)
        ledger.record(written)  # before answering: an event acknowledged is one later events are ordered against
        for w, stored in ready:
            if w.event.uri in written:
                w.end("upserted", "")
                created = w.event.created or stored.created
                if created is not None:
                    self._observe_lag(max(0.0, now - created))

    def _read(self, w: _Work) -> StoredObject | None:
        """The object, or None (and ``w`` ended) when there is nothing to write."""
        e = w.event
        try:
            if e.size is not None and e.size > self.max_bytes:
                raise ObjectTooLarge(f"the object has {e.size} bytes, more than MAX_IMAGE_BYTES ({self.max_bytes})")
            stored = self._store(e).read(e.bucket, e.name, e.version, self.max_bytes)
        except ObjectGone:
            w.end("skipped", "gone")  # deleted or overwritten since: that change's own event follows
            return None
        except ObjectTooLarge as exc:
            w.end("failed", "too_large", message=str(exc))
            return None
        except StoreUnavailable as exc:
            log.warning("ingest: %s", exc)
            w.end("failed", "bucket_unavailable", transient=True)
            return None
        if not is_image(stored.data):
            log.info("ingest: object is not an image, skipped", extra={"content_type": stored.content_type})
            w.end("skipped", "not_an_image")
            return None
        return stored

    def _outcomes(self, deliveries: Sequence[Delivery], work: list[_Work], ledger: Ledger | None) -> list[Outcome]:
        """Per delivery: a transient failure anywhere redelivers it; a permanent one dead-letters it once."""
        by_delivery: dict[int, list[_Work]] = collections.defaultdict(list)
        for w in work:
            by_delivery[w.delivery].append(w)
        outcomes = []
        for d, delivery in enumerate(deliveries):
            mine = by_delivery.get(d, [])
            transient = [w for w in mine if w.result == "failed" and w.transient]
            permanent = [w for w in mine if w.result == "failed" and not w.transient]
            if transient:
                outcomes.append(Outcome("failed", transient[0].reason, transient=True))
            elif permanent:
                outcomes.append(self._dead_letter(delivery, permanent, ledger))
            elif not mine:
                outcomes.append(Outcome("skipped", "no_records"))  # S3's setup test event
            else:
                first = next((w for w in mine if w.result != "skipped"), mine[0])
                outcomes.append(Outcome(first.result or "skipped", first.reason))
        return outcomes

    def _dead_letter(self, delivery: Delivery, failed: list[_Work], ledger: Ledger | None) -> Outcome:
        code = failed[0].reason
        message = failed[0].message
        for w in failed:
            log.warning("ingest: object cannot be indexed (%s)", w.reason, extra={"error_code": w.reason})
        if not self.dead_letter.configured:
            return Outcome("failed", code)  # the platform's own dead-letter policy takes it after its attempts
        try:
            self.dead_letter.send(delivery.message, code, message)
            if ledger is not None:  # permanent failures come from _apply, which had the ledger
                ledger.record({w.event.uri: Mark(w.event.version, "failed", etag=w.event.etag, at=time.time())
                               for w in failed})
        except (DeadLetterFailed, Unavailable, BackendTimeout) as exc:
            log.warning("ingest: %s", exc)
            return Outcome("failed", "dead_letter_unavailable", transient=True)
        for w in failed:
            w.end("dead_lettered", code)
        return Outcome("dead_lettered", code)

    # --- helpers ------------------------------------------------------------------------------------

    def _store(self, event: ObjectEvent) -> ObjectStore:
        return self.stores[event.scheme]

    def _ledger_of(self, index: Any) -> Ledger:
        if self._ledger is None or self._ledger.index is not index:
            self._ledger = Ledger(index)
        return self._ledger

    def _all_transient(self, todo: list[_Work], exc: Exception) -> None:
        code = getattr(exc, "code", "search_unavailable")
        log.warning("ingest: will be retried (%s)", code)
        for w in todo:
            w.end("failed", code, transient=True)

    @contextlib.contextmanager
    def _locked(self, uris: set[str]) -> Iterator[None]:
        """One writer per object in this process (ordering is read, then written)."""
        stripes = sorted({zlib.crc32(u.encode()) % len(self._stripes) for u in uris})
        with contextlib.ExitStack() as stack:
            for s in stripes:
                stack.enter_context(self._stripes[s])
            yield

    def _observe_lag(self, lag: float) -> None:
        with self._counts_lock:
            c = self.counts
            c.lag_sum += lag
            c.lag_count += 1
            c.recent_lags.append(lag)
            c.lag_buckets[next((i for i, b in enumerate(LAG_BUCKETS) if lag <= b), len(LAG_BUCKETS))] += 1

    def _count(self, work: list[_Work]) -> None:
        with self._counts_lock:
            self.counts.received += len(work)
            for w in work:
                self.counts.events[(w.result or "skipped", w.reason)] += 1
