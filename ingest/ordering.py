"""Whether an event may change what the index holds for its object: the newest event wins, whatever order the
platform delivers them in.

Each object's last applied event is kept as a ``Mark`` (its version, and whether it left the object present,
deleted or dead-lettered). Versions are compared only within one object: GCS generations as numbers, S3
sequencers as hex strings left-padded to one width (AWS's rule). At one version a delete outranks a create: a
delete that arrives before its create leaves the object absent. An event or a mark without a version (S3 events
from some emitters, a backfill of S3, which lists no sequencers) cannot be ordered: then the bucket decides (the
object is read as it is now; a delete applies only if the object is really gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ingest.events import ObjectEvent

State = Literal["present", "deleted", "failed"]
Verdict = Literal["apply", "stale", "ask_bucket", "already_dead_lettered"]
_WIDTH = 64


@dataclass(frozen=True)
class Mark:
    """What the ledger holds for one object."""

    version: str
    state: State
    etag: str = ""
    at: float = 0.0


def version_key(version: str) -> str:
    """A version comparable as a string with any other of the same object's (GCS digits or S3 hex)."""
    return version.upper().rjust(_WIDTH, "0")


def decide(event: ObjectEvent, mark: Mark | None) -> Verdict:
    """Whether ``event`` applies over ``mark`` (None: nothing recorded for the object)."""
    if mark is None:
        return "ask_bucket" if event.action == "delete" and not event.version else "apply"
    if (mark.state == "failed" and event.action == "upsert" and (event.version or event.etag)
            and (event.version, event.etag) == (mark.version, mark.etag)):
        return "already_dead_lettered"  # the same content failed before (without an identity: tried again)
    if not event.version or not mark.version:
        return "ask_bucket" if event.action == "delete" else "apply"
    rank = {"upsert": 0, "delete": 1}
    held = (version_key(mark.version), 1 if mark.state == "deleted" else 0)
    return "apply" if (version_key(event.version), rank[event.action]) >= held else "stale"


def newest_per_object(events: list[ObjectEvent]) -> tuple[list[ObjectEvent], list[ObjectEvent]]:
    """(the newest event of each object in a batch, the ones it supersedes); without versions, the last wins."""
    chosen: dict[str, ObjectEvent] = {}
    superseded: list[ObjectEvent] = []
    for event in events:
        held = chosen.get(event.uri)
        if held is not None and _key(held) > _key(event):
            superseded.append(event)
            continue
        if held is not None:
            superseded.append(held)
        chosen[event.uri] = event
    return list(chosen.values()), superseded


def _key(event: ObjectEvent) -> tuple[str, int]:
    return version_key(event.version), 1 if event.action == "delete" else 0
