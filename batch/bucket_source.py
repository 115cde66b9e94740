"""``clipserve-batch index push --bucket gs://B[/prefix] | s3://B[/prefix]``: what a bucket already holds, pushed
with the ids, metadata and ledger marks the event path gives (``ingest/``), so a backfill and live events
never make two items of one object and never undo each other.

The objects are read with this machine's credentials (google-cloud-storage, boto3) into a staging folder as
rows (``id`` = the object's URI, ``image`` = the staged file, the metadata columns), which ``index push``
then embeds and upserts as any other rows. Objects that are not images are left out (counted); an object
whose ledger mark is newer than what the listing shows (an event overtook the backfill) is not pushed.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ingest.events import ObjectEvent
from ingest.ingestor import item_metadata
from ingest.ledger import Ledger
from ingest.objects import GcsStore, ObjectGone, ObjectStore, ObjectTooLarge, S3Store
from ingest.ordering import Mark, decide
from inputs.decode import is_image
from search import qdrant_index

log = logging.getLogger("batch")


def parse_bucket(uri: str) -> tuple[Any, str, str]:
    """(scheme, bucket, prefix) of gs://B/prefix or s3://B/prefix."""
    scheme, sep, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    if not sep or scheme not in ("gs", "s3") or not bucket:
        raise ValueError(f"--bucket {uri!r}: expected gs://BUCKET[/prefix] or s3://BUCKET[/prefix]")
    return scheme, bucket, prefix


def store_for(scheme: str) -> ObjectStore:
    return GcsStore() if scheme == "gs" else S3Store()


class Staged:
    """A bucket's objects as rows to push, and the ledger marks to record for them once pushed."""

    def __init__(self, rows: Path) -> None:
        self.rows = rows
        self.events: dict[str, ObjectEvent] = {}
        self.marks: dict[str, Mark] = {}
        self.skipped: dict[str, int] = {}
        self.columns: dict[str, None] = {}  # the metadata keys seen, in order (the staged file's path is none)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def drop_overtaken(self, index: qdrant_index.QdrantIndex) -> int:
        """Leave out the objects an event has changed since they were listed (their ledger mark is newer)."""
        held = Ledger(index).marks(self.events)
        overtaken = {uri for uri, event in self.events.items() if uri in held and decide(event, held[uri]) != "apply"}
        if overtaken:
            kept = [line for line in self.rows.read_text().splitlines() if json.loads(line)["id"] not in overtaken]
            self.rows.write_text("".join(line + "\n" for line in kept))
            for uri in overtaken:
                self.marks.pop(uri)
                self.skipped["overtaken_by_an_event"] = self.skipped.get("overtaken_by_an_event", 0) + 1
        return len(overtaken)

    def record(self, index: qdrant_index.QdrantIndex) -> None:
        """The ledger marks of what was pushed, so later events are ordered against it."""
        Ledger(index).record(self.marks)


@contextmanager
def staged_rows(uri: str, max_bytes: int, path_keys: tuple[str, ...] = (), store: ObjectStore | None = None
                ) -> Iterator[Staged]:
    """The bucket's images as rows in a staging folder, removed afterwards."""
    scheme, bucket, prefix = parse_bucket(uri)
    store = store or store_for(scheme)
    with tempfile.TemporaryDirectory(prefix="clipserve-backfill-") as folder:
        staged = Staged(Path(folder) / "rows.jsonl")
        with staged.rows.open("w") as rows:
            for n, listed in enumerate(store.list(bucket, prefix)):
                event = ObjectEvent("upsert", scheme, bucket, listed.name, version=listed.version, etag=listed.etag)
                try:
                    stored = store.read(bucket, listed.name, listed.version, max_bytes)
                except (ObjectGone, ObjectTooLarge) as exc:
                    staged.skip("gone" if isinstance(exc, ObjectGone) else "too_large")
                    continue
                if not is_image(stored.data):
                    staged.skip("not_an_image")
                    continue
                file = Path(folder) / f"{n}.img"
                file.write_bytes(stored.data)
                metadata = item_metadata(event, stored, path_keys)
                metadata.pop("image", None)  # the column the staged file takes
                staged.columns.update(dict.fromkeys(metadata))
                rows.write(json.dumps({"id": event.uri, "image": str(file), **metadata}) + "\n")
                staged.events[event.uri] = event
                staged.marks[event.uri] = Mark(listed.version or stored.version, "present",
                                               etag=listed.etag or stored.etag)
        log.info("backfill: %d images staged from %s://%s (left out: %s)", len(staged.marks), scheme, bucket,
                 staged.skipped or "none")
        yield staged
