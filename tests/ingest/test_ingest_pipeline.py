"""The pipeline's decisions with the service and the bucket replaced by small fakes (the real ones are driven in
test_ingest_gcs.py and test_ingest_s3.py): what is acknowledged, retried or dead-lettered, per platform message;
and how the service's errors are sorted into 'may pass' and 'never will'."""

from __future__ import annotations

import pytest

from engine.batcher import Overloaded
from engine import ModelState
from engine.service import NotReady
from handler.errors import IndexReadOnly, InvalidRequest, ModelLoading
from handler.ingest import ServiceWriter
from ingest.deadletter import DeadLetterFailed
from ingest.events import ObjectEvent
from ingest.ingestor import Delivery, Ingestor, Transient
from ingest.objects import ObjectGone, StoredObject, StoreUnavailable
from ingest.ordering import Mark
from ingest_support import corrupt_jpeg, jpeg
from search.errors import Unavailable


BAD = corrupt_jpeg()


class FakeLedger:
    def __init__(self):
        self.held: dict[str, Mark] = {}

    def marks(self, uris):
        return {u: self.held[u] for u in uris if u in self.held}

    def record(self, marks):
        self.held.update(marks)


class FakeWriter:
    """Writes into a dict; ``fail``: an exception every call raises."""

    def __init__(self):
        self.items: dict[str, dict] = {}
        self.fail: Exception | None = None

    def index(self):
        return self

    def write(self, items):
        if self.fail:
            raise self.fail
        errors = {}
        for i, item in enumerate(items):
            if item.data == BAD:  # the real service's decoder refuses it (test_ingest_gcs shows it)
                errors[i] = ("invalid_image", "truncated")
            else:
                self.items[item.id] = item.metadata
        return errors

    def delete(self, ids):
        if self.fail:
            raise self.fail
        for i in ids:
            self.items.pop(i, None)


class FakeStore:
    def __init__(self, objects):
        self.objects = objects
        self.down = False

    def read(self, bucket, name, version, max_bytes):
        if self.down:
            raise StoreUnavailable("down")
        if name not in self.objects:
            raise ObjectGone(name)
        return StoredObject(self.objects[name], version="", etag="e")

    def exists(self, bucket, name):
        return name in self.objects


class FakeDeadLetter:
    configured = True

    def __init__(self):
        self.sent = []
        self.broken = False

    def send(self, message, code, reason):
        if self.broken:
            raise DeadLetterFailed("down")
        self.sent.append((message, code))


@pytest.fixture
def pipeline(monkeypatch):
    writer, store, dead, ledger = FakeWriter(), FakeStore({"ok.jpg": jpeg(1), "bad.jpg": BAD,
                                                          "notes.txt": b"hello"}), FakeDeadLetter(), FakeLedger()
    ingestor = Ingestor(writer, {"s3": store}, frozenset({"s3://b"}), max_bytes=1 << 20, dead_letter=dead)
    monkeypatch.setattr(ingestor, "_ledger_of", lambda index: ledger)
    ingestor._ledger = ledger
    return ingestor, writer, store, dead


def ev(name, action="upsert", version="", bucket="b"):
    return ObjectEvent(action, "s3", bucket, name, version=version, etag="e")


def results(ingestor, *deliveries):
    return [(o.result, o.reason, o.transient) for o in ingestor.handle([Delivery(d, {"m": i})
                                                                         for i, d in enumerate(deliveries)])]


def test_each_message_gets_its_own_answer(pipeline):
    ingestor, writer, _, dead = pipeline
    assert results(ingestor, [ev("ok.jpg")], [ev("notes.txt")], [ev("bad.jpg")], [ev("x.jpg", bucket="other")],
                   [ev("gone.jpg")], []) == [
        ("upserted", "", False), ("skipped", "not_an_image", False), ("dead_lettered", "invalid_image", False),
        ("skipped", "foreign_bucket", False), ("skipped", "gone", False), ("skipped", "no_records", False)]
    assert list(writer.items) == ["s3://b/ok.jpg"] and dead.sent == [({"m": 2}, "invalid_image")]
    stats = ingestor.stats()
    assert stats["events"] == {"received": 5, "upserted": 1, "deleted": 0, "skipped": 3, "failed": 0,
                               "dead_lettered": 1}
    assert stats["reasons"]["dead_lettered:invalid_image"] == 1


@pytest.mark.parametrize("failure", [Transient("model_loading", "loading"), Unavailable("qdrant down")])
def test_a_failure_that_may_pass_is_retried_and_nothing_is_recorded(pipeline, failure):
    ingestor, writer, _, dead = pipeline
    writer.fail = failure
    assert results(ingestor, [ev("ok.jpg")], [ev("notes.txt")]) == [
        ("failed", getattr(failure, "code", "search_unavailable"), True), ("skipped", "not_an_image", False)]
    writer.fail = None
    assert results(ingestor, [ev("ok.jpg")]) == [("upserted", "", False)]  # the redelivery
    assert not dead.sent


def test_an_unreadable_bucket_is_retried(pipeline):
    ingestor, _, store, _ = pipeline
    store.down = True
    assert results(ingestor, [ev("ok.jpg")]) == [("failed", "bucket_unavailable", True)]


def test_a_dead_letter_that_cannot_be_sent_is_retried_not_lost(pipeline):
    ingestor, _, _, dead = pipeline
    dead.broken = True
    assert results(ingestor, [ev("bad.jpg")]) == [("failed", "dead_letter_unavailable", True)]
    dead.broken = False
    assert results(ingestor, [ev("bad.jpg")]) == [("dead_lettered", "invalid_image", False)]
    assert results(ingestor, [ev("bad.jpg")]) == [("dead_lettered", "already_dead_lettered", False)]
    assert len(dead.sent) == 1


def test_without_a_dead_letter_destination_a_permanent_failure_is_refused(pipeline):
    ingestor, *_ = pipeline
    ingestor.dead_letter = type("None", (), {"configured": False})()
    assert results(ingestor, [ev("bad.jpg")]) == [("failed", "invalid_image", False)]


def test_a_message_with_one_failing_record_is_retried_whole(pipeline):
    ingestor, writer, store, _ = pipeline
    assert results(ingestor, [ev("ok.jpg"), ev("bad.jpg")]) == [("dead_lettered", "invalid_image", False)]
    assert "s3://b/ok.jpg" in writer.items  # what succeeded stays; a redrive would rewrite the same point


def test_an_unordered_delete_asks_the_bucket(pipeline):
    ingestor, writer, store, _ = pipeline
    results(ingestor, [ev("ok.jpg")])
    assert results(ingestor, [ev("ok.jpg", "delete")]) == [("skipped", "object_exists", False)]
    del store.objects["ok.jpg"]
    assert results(ingestor, [ev("ok.jpg", "delete")]) == [("deleted", "", False)]
    assert writer.items == {}


class FakeService:
    """What ServiceWriter calls, raising what the real service raises."""

    def __init__(self, error):
        self.error = error

    def deadline(self):
        return None

    def write_items(self, rows, files, deadline):
        raise self.error

    def writable_backend(self):
        raise self.error


@pytest.mark.parametrize("error, transient", [
    (NotReady(ModelState.LOADING, "english"), True), (Overloaded("queue full", 3), True), (Unavailable("down"), True),
    (ModelLoading("loading"), True), (InvalidRequest("bad"), False), (IndexReadOnly("ro"), False)])
def test_the_services_errors_sort_into_may_pass_and_never_will(error, transient):
    writer = ServiceWriter(FakeService(error))
    if transient:
        with pytest.raises(Transient):
            writer.write([type("Item", (), {"id": "x", "data": b"", "metadata": {}})()])
    else:
        assert writer.write([type("Item", (), {"id": "x", "data": b"", "metadata": {}})()]) == {
            0: (error.code, error.message)}
