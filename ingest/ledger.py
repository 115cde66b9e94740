"""Per object, the last event applied (``ordering.Mark``), in a Qdrant collection beside the index's.

It outlives deletes, which is the point: a create that arrives after its own delete must find the tombstone.
The points carry a one-value vector (Qdrant collections have vectors) and a payload; their ids are the item's
point ids, so a mark and its item are addressed the same way. Calls go through the index's guard: the same
client, local mode's lock, and a Qdrant that is down is ``Unavailable`` here as for the index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ingest.ordering import Mark
from search.qdrant_index import QdrantIndex, point_id

SUFFIX = "-ingest-ledger"
_META = {"clipserve_ledger": {"format": 1, "what": "the last bucket event applied per object (ingest/ledger.py)"}}


class Ledger:
    def __init__(self, index: QdrantIndex) -> None:
        self.index = index
        self.collection = index.collection + SUFFIX
        self._ready = False

    def marks(self, uris: Iterable[str]) -> dict[str, Mark]:
        uris = list(dict.fromkeys(uris))
        if not uris:
            return {}
        self._ensure()
        with self.index.guarded():
            points = self.index.client.retrieve(self.collection, [point_id(u) for u in uris], with_payload=True)
        out = {}
        for point in points:
            p = point.payload or {}
            out[str(p["uri"])] = Mark(version=str(p.get("version", "")), state=p["state"], etag=str(p.get("etag", "")),
                                      at=float(p.get("at", 0.0)))
        return out

    def record(self, marks: Mapping[str, Mark]) -> None:
        if not marks:
            return
        from qdrant_client import models

        self._ensure()
        points = [models.PointStruct(id=point_id(uri), vector=[1.0],
                                     payload={"uri": uri, "version": m.version, "state": m.state, "etag": m.etag,
                                              "at": m.at}) for uri, m in marks.items()]
        with self.index.guarded():
            self.index.client.upsert(self.collection, points=points, wait=True)

    def _ensure(self) -> None:
        """Create the ledger collection on first use (a deployment that never ingests never has one)."""
        if self._ready:
            return
        from qdrant_client import models

        with self.index.guarded():
            client: Any = self.index.client
            if not client.collection_exists(self.collection):
                client.create_collection(self.collection, metadata=_META,
                                         vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT))
        self._ready = True
