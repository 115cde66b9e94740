"""The contract every search backend keeps: a `Query` in, `Hit`s out, best first.

Vectors are unit length (the HTTP layer normalizes what it embeds or receives), so the inner product
is the cosine; a hit's `score` is that cosine, recomputed exactly from the stored vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from search.filters import Filter

# Identity of the model an index was built with; a backend refuses to serve another.
MODEL_KEYS = ("variant", "architecture", "dim", "weights")


@dataclass(frozen=True)
class Query:
    vector: np.ndarray  # (dim,) float32, unit length
    top_k: int = 10
    score_threshold: float | None = None  # keep hits with cosine >= this
    filter: Filter | None = None
    include_metadata: bool = True
    include_vectors: bool = False
    exclude_id: str | None = None  # "more like this": the item queried by id is not its own result


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Item:
    """One item to write: its caller-given id, unit vector and metadata."""

    id: str
    vector: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexInfo:
    """What `GET /` and every search answer say about the index."""

    backend: str  # "faiss" or "qdrant"
    name: str
    version: str
    count: int | None  # None when the backend cannot tell now
    modality: str  # "image" or "text": what the items' vectors were embedded from
    model: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    thumbnails: bool = False  # GET /items/<id>/thumbnail has something to serve

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "count": self.count, "modality": self.modality,
                "model": (self.model or {}).get("variant")}


class SearchBackend(Protocol):
    writable: bool

    def info(self) -> IndexInfo: ...

    def check_model(self, model: dict[str, Any]) -> None:
        """Raise IndexUnusable unless the index was built with this model (MODEL_KEYS)."""

    def search(self, query: Query) -> list[Hit]: ...

    def vector_of(self, item_id: str) -> np.ndarray:
        """The stored vector of an item; ItemNotFound if there is none."""

    def columns(self) -> dict[str, str] | None:
        """Filterable metadata columns (name -> type), or None when the backend has no schema."""

    def thumbnail(self, item_id: str) -> bytes | None:
        """The item's stored thumbnail (JPEG), None when there is none."""

    def check_writable(self) -> None:
        """Raise ReadOnly (before any work) if this backend takes no writes."""

    def upsert(self, items: Sequence[Item]) -> None: ...

    def add_columns(self, columns: dict[str, str]) -> None:
        """Record new metadata keys and their types, so filters on them are checked, not refused."""

    def delete(self, ids: Sequence[str] | None = None, filter: Filter | None = None) -> int | None: ...

    def close(self) -> None: ...


def model_mismatch(served: dict[str, Any], indexed: dict[str, Any]) -> list[str]:
    """The MODEL_KEYS on which two model identities differ, as 'key: index X, service Y'."""
    return [f"{key}: index {indexed.get(key)!r}, service {served.get(key)!r}"
            for key in MODEL_KEYS if indexed.get(key) != served.get(key)]
