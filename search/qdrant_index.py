"""The live backend: a Qdrant collection, through the official qdrant-client (a server by URL, or the
client's embedded local mode on a folder), behind the same `Query` -> `Hit`s contract as the FAISS index.

The collection carries clipserve's description in Qdrant's collection metadata (`clipserve`: the model
identity the FAISS manifest carries, the modality, the metadata columns and their types), so a service
refuses a collection made for another model, and filters are checked against the columns before they
are passed through. Points: the caller's string id maps to a UUIDv5 point id (re-sending an item replaces
it) and is kept in the payload under `id`, beside the metadata keys.

A Qdrant that refuses connections or fails answers `Unavailable` (503 with Retry-After); one that does not
answer within the timeout, `BackendTimeout` (504): never a hang, never internals in the answer.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from search.errors import BackendTimeout, IndexUnusable, ItemNotFound, Unavailable
from search.filters import Filter, Match, MatchAny, Range
from search.query import Hit, IndexInfo, Item, Query, model_mismatch

log = logging.getLogger(__name__)

META_KEY = "clipserve"
ID_KEY = "id"  # the caller's id, in each point's payload
META_FORMAT = 1
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/clipserve/point-ids")
# Payload index types for the filterable column types (a server indexes them; local mode ignores them).
_PAYLOAD_SCHEMA = {"str": "keyword", "int": "integer", "float": "float", "bool": "bool"}


def point_id(item_id: str) -> str:
    """The Qdrant point id of a caller's id: the same id always gives the same point."""
    return str(uuid.uuid5(_NAMESPACE, item_id))


def connect(*, url: str | None = None, path: str | None = None, api_key: str | None = None,
            timeout_s: float = 5.0) -> Any:
    """A qdrant-client for a server (`url`) or for local mode on a folder (`path`); makes no request."""
    from qdrant_client import QdrantClient

    if path is not None:
        return QdrantClient(path=str(path))
    return QdrantClient(url=url, api_key=api_key, timeout=max(1, round(timeout_s)), check_compatibility=False)


def describe_collection(model: Mapping[str, Any], modality: str, columns: Mapping[str, str],
                        name: str) -> dict[str, Any]:
    """The collection metadata clipserve writes at creation."""
    return {META_KEY: {"format": META_FORMAT, "name": name, "model": dict(model), "modality": modality,
                       "columns": dict(columns),
                       "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}


def create_collection(client: Any, collection: str, *, model: Mapping[str, Any], modality: str,
                      columns: Mapping[str, str], local: bool) -> None:
    from qdrant_client import models

    client.create_collection(collection, vectors_config=models.VectorParams(size=int(model["dim"]),
                                                                            distance=models.Distance.COSINE),
                             metadata=describe_collection(model, modality, columns, collection))
    if not local:  # local mode has no payload indexes (it scans)
        for key, kind in columns.items():
            if kind in _PAYLOAD_SCHEMA:
                client.create_payload_index(collection, key, field_schema=_PAYLOAD_SCHEMA[kind])


def read_description(client: Any, collection: str, where: str) -> dict[str, Any]:
    """The clipserve description of an existing collection; IndexUnusable if it is missing or not ours."""
    if not client.collection_exists(collection):
        raise IndexUnusable(f"Qdrant collection {collection!r} does not exist at {where}: create it with "
                            f"`clipserve-batch index push --input FILE --collection {collection} ...`")
    info = client.get_collection(collection)
    meta = (info.config.metadata or {}).get(META_KEY)
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise IndexUnusable(f"Qdrant collection {collection!r} at {where} was not created by clipserve (its "
                            f"metadata has no {META_KEY!r} description of format {META_FORMAT}); push into a new "
                            "collection with clipserve-batch index push")
    return meta


class QdrantIndex:
    writable = True

    def __init__(self, client: Any, collection: str, description: dict[str, Any], where: str,
                 timeout_s: float, local: bool) -> None:
        self.client = client
        self.collection = collection
        self.description = description
        self.where = where
        self.timeout_s = timeout_s
        self._count: int | None = None
        # Local mode's in-process engine is not made for concurrent calls; a server client is thread-safe.
        self._lock: Any = threading.Lock() if local else contextlib.nullcontext()

    @classmethod
    def open(cls, client: Any, collection: str, where: str, *, timeout_s: float = 5.0,
             local: bool = False) -> "QdrantIndex":
        with _translated(where, timeout_s):
            description = read_description(client, collection, where)
        index = cls(client, collection, description, where, timeout_s, local)
        index.refresh_count()
        return index

    # --- what the service asks ----------------------------------------------------------------------

    def info(self) -> IndexInfo:
        """Counted after each write, on the next info; None while Qdrant cannot be asked."""
        if self._count is None:
            with contextlib.suppress(Unavailable, BackendTimeout):
                self.refresh_count()
        d = self.description
        return IndexInfo(backend="qdrant", name=self.collection, version=d.get("created", ""), count=self._count,
                         modality=d["modality"], model=d["model"],
                         details={"where": self.where, "collection": self.collection, "columns": d["columns"]})

    def check_model(self, model: dict[str, Any]) -> None:
        differences = model_mismatch(model, self.description["model"])
        if differences:
            raise IndexUnusable(f"Qdrant collection {self.collection!r} at {self.where} was created for another model "
                                f"than the one served ({'; '.join(differences)}); push into a collection for this "
                                "model, or serve the model it was made for")

    def columns(self) -> dict[str, str]:
        return dict(self.description["columns"])

    def thumbnail(self, item_id: str) -> bytes | None:
        """None: clipserve stores no thumbnails in Qdrant (a payload blob would travel with every search
        answer); a payload's http(s) image URL is what the playground shows."""
        return None

    def refresh_count(self) -> int | None:
        with self.guarded():
            self._count = int(self.client.count(self.collection, exact=True).count)
        return self._count

    def vector_of(self, item_id: str) -> np.ndarray:
        with self.guarded():
            points = self.client.retrieve(self.collection, [point_id(item_id)], with_payload=False, with_vectors=True)
        if not points:
            raise ItemNotFound(f"no item with id {item_id[:200]!r} in Qdrant collection {self.collection!r}",
                               param="id")
        return np.asarray(points[0].vector, dtype=np.float32)

    def search(self, query: Query) -> list[Hit]:
        limit = query.top_k + (query.exclude_id is not None)
        payload: Any = True if query.include_metadata else [ID_KEY]
        with self.guarded():
            points = self.client.query_points(
                self.collection, query=np.asarray(query.vector, dtype=np.float32).tolist(),
                query_filter=None if query.filter is None or query.filter.empty else to_qdrant(query.filter),
                limit=limit, score_threshold=query.score_threshold, with_payload=payload,
                with_vectors=query.include_vectors, timeout=max(1, round(self.timeout_s))).points
        hits = []
        for point in points:
            body = dict(point.payload or {})
            item_id = str(body.pop(ID_KEY, point.id))
            if item_id == query.exclude_id:
                continue
            hits.append(Hit(id=item_id, score=float(point.score), metadata=body if query.include_metadata else None,
                            vector=None if point.vector is None else np.asarray(point.vector, dtype=np.float32)))
        return hits[:query.top_k]

    # --- writes -------------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Writes go straight to the collection."""

    def upsert(self, items: Sequence[Item]) -> None:
        from qdrant_client import models

        points = [models.PointStruct(id=point_id(item.id), vector=np.asarray(item.vector, np.float32).tolist(),
                                     payload={**item.metadata, ID_KEY: item.id}) for item in items]
        with self.guarded():
            self.client.upsert(self.collection, points=points, wait=True)
        self._count = None

    def add_columns(self, columns: Mapping[str, str]) -> None:
        """Record metadata keys a write brought (so filters on them pass the check), with their types."""
        new = {k: v for k, v in columns.items() if k not in self.description["columns"]}
        if not new:
            return
        description = {**self.description, "columns": {**self.description["columns"], **new}}
        with self.guarded():
            self.client.update_collection(self.collection, metadata={META_KEY: description})
        self.description = description

    def delete(self, ids: Sequence[str] | None = None, filter: Filter | None = None) -> int | None:
        from qdrant_client import models

        with self.guarded():
            if ids is not None:
                present = self.client.retrieve(self.collection, [point_id(i) for i in ids], with_payload=False)
                selector: Any = models.PointIdsList(points=[point_id(i) for i in ids])
                deleted = len(present)
            else:
                selector = models.FilterSelector(filter=to_qdrant(filter))
                deleted = int(self.client.count(self.collection, count_filter=to_qdrant(filter), exact=True).count)
            self.client.delete(self.collection, points_selector=selector, wait=True)
        self._count = None
        return deleted

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a client that lost its server
            log.debug("closing the Qdrant client failed", exc_info=True)

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """Around every call to the client: local mode's lock, failures as Unavailable / BackendTimeout (the
        ingest ledger's calls on the same client go through it too)."""
        with self._lock, _translated(self.where, self.timeout_s):
            yield


@contextmanager
def _translated(where: str, timeout_s: float) -> Iterator[None]:
    """qdrant-client's and httpx's failures as the contract's Unavailable / BackendTimeout (no internals)."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except UnexpectedResponse as exc:
        if exc.status_code == 404:
            raise Unavailable(f"Qdrant at {where} no longer has the collection (404); recreate it with "
                              "clipserve-batch index push") from None
        raise Unavailable(f"Qdrant at {where} answered {exc.status_code}; retry later") from None
    except ResponseHandlingException as exc:
        cause = exc.source if isinstance(getattr(exc, "source", None), Exception) else exc.__cause__
        raise _network_error(cause or exc, where, timeout_s) from None
    except (httpx.HTTPError, OSError) as exc:
        raise _network_error(exc, where, timeout_s) from None


def _network_error(exc: BaseException, where: str, timeout_s: float) -> Exception:
    import httpx

    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return BackendTimeout(f"Qdrant at {where} did not answer within {timeout_s:g} s (QDRANT_TIMEOUT_S)")
    return Unavailable(f"Qdrant at {where} cannot be reached ({type(exc).__name__}); retry later")


def to_qdrant(filter: Filter) -> Any:
    """Our parsed filter as qdrant-client's model (the same JSON shape, so it passes through unchanged)."""
    from qdrant_client import models

    def condition(c: Any) -> Any:
        if isinstance(c, Filter):
            return to_qdrant(c)
        if isinstance(c, Match):
            return models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))
        if isinstance(c, MatchAny):
            return models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.values)))
        if isinstance(c, Range):
            return models.FieldCondition(key=c.key, range=models.Range(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte))
        raise TypeError(c)

    return models.Filter(must=[condition(c) for c in filter.must] or None,
                         should=[condition(c) for c in filter.should] or None,
                         must_not=[condition(c) for c in filter.must_not] or None)
