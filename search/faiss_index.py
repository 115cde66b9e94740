"""The embedded backend: an index version folder opened read-only, searched in this process.

Unfiltered queries go to the FAISS index (exact for `flat`, a graph walk for `hnsw`). A filter first
asks SQLite which rows it keeps: when those are few (at most BRUTE_FORCE_MAX), the query is scored
exactly against just them; when many, the index's nearest candidates are checked against the filter,
fetching more until `top_k` of them pass (exact for `flat`, as good as the graph walk for `hnsw`).
Either way a hit's score is the inner product with the stored vector.

FAISS runs one thread per query: single queries do not gain from more (measured, bench/RESULTS.md)
and the model's threads need the cores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search import index_format
from search.errors import IndexUnusable, ItemNotFound, ReadOnly
from search.filters import Filter
from search.items_db import ItemsDb
from search.query import Hit, IndexInfo, Item, Query, model_mismatch
from search.thumbnails import Thumbnails

# A filter keeping at most this many items is answered by exact scoring of just those items.
BRUTE_FORCE_MAX = 50_000
LOAD_MODES = ("mmap", "memory")


class FaissIndex:
    writable = False

    def __init__(self, directory: Path, manifest: dict[str, Any], index: Any, items: ItemsDb,
                 thumbnails: Thumbnails | None = None) -> None:
        self.directory = directory
        self.thumbnails = thumbnails
        self.manifest = manifest
        self.index = index
        self.items = items
        self.count = int(manifest["count"])
        self.params = manifest["index"]

    @classmethod
    def open(cls, directory: Path | str, *, load: str = "mmap", verify_sha256: bool = False) -> "FaissIndex":
        """Open a version folder. `load`: "mmap" maps the vectors (opens at once; pages come in as queries
        touch them), "memory" reads them in (for file systems with slow random reads, e.g. bucket mounts)."""
        import faiss

        directory = Path(directory)
        manifest = index_format.read_manifest(directory)
        index_format.check_files(directory, manifest, sha256=verify_sha256)
        flags = faiss.IO_FLAG_MMAP_IFC if load == "mmap" else 0  # maps the vectors; the HNSW graph is read in
        try:
            index = faiss.read_index(str(directory / index_format.VECTORS), flags)
        except RuntimeError as exc:
            raise IndexUnusable(f"index {directory}: {index_format.VECTORS} cannot be read ({exc})") from None
        items = ItemsDb(directory / index_format.ITEMS)
        count, dim = int(manifest["count"]), int(manifest["model"]["dim"])
        if index.ntotal != count or items.count != count or index.d != dim:
            raise IndexUnusable(f"index {directory}: the files disagree with the manifest ({index.ntotal} vectors of "
                                f"dim {index.d}, {items.count} items; the manifest says {count} of dim {dim})")
        return cls(directory, manifest, index, items, Thumbnails.of(directory, manifest))

    # --- what the service asks ----------------------------------------------------------------------

    def info(self) -> IndexInfo:
        m = self.manifest
        return IndexInfo(backend="faiss", name=m["name"], version=m["version"], count=self.count,
                         modality=m["modality"], model=m["model"],
                         details={"type": self.params["type"], "params": self.params, "path": str(self.directory),
                                  "created": m.get("created")},
                         thumbnails=self.thumbnails is not None)

    def check_model(self, model: dict[str, Any]) -> None:
        differences = model_mismatch(model, self.manifest["model"])
        if differences:
            raise IndexUnusable(f"index {self.directory} was built with another model than the one served "
                                f"({'; '.join(differences)}); rebuild it with this model or serve the model "
                                "it was built with")

    def columns(self) -> dict[str, str]:
        return self.items.columns

    def vector_of(self, item_id: str) -> np.ndarray:
        return self.index.reconstruct(self._row(item_id))

    def _row(self, item_id: str) -> int:
        row = self.items.row_of(item_id)
        if row is None:
            raise ItemNotFound(f"no item with id {item_id[:200]!r} in index {self.manifest['name']} "
                               f"{self.manifest['version']}", param="id")
        return int(row)

    def thumbnail(self, item_id: str) -> bytes | None:
        """The item's thumbnail, None when it has none; ItemNotFound for an unknown id."""
        row = self._row(item_id)
        return None if self.thumbnails is None else self.thumbnails.get(row)

    def search(self, query: Query) -> list[Hit]:
        exclude = self.items.row_of(query.exclude_id) if query.exclude_id is not None else None
        k = min(self.count, query.top_k + (exclude is not None))
        if k <= 0:
            return []
        vector = np.ascontiguousarray(query.vector, dtype=np.float32)
        if query.filter is None or query.filter.empty:
            scores, rows = self._nearest(vector, k)
        else:
            scores, rows = self._nearest_matching(vector, k, query.filter)
        keep = [(s, r) for s, r in zip(scores, rows)
                if r != exclude and (query.score_threshold is None or s >= query.score_threshold)]
        return self._hits(keep[:query.top_k], query)

    # --- the search paths ---------------------------------------------------------------------------

    def _nearest(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's k nearest rows, best first (ties by row); the HNSW walk is at least k wide."""
        import faiss

        faiss.omp_set_num_threads(1)  # per calling thread
        params = None
        if self.params["type"] == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.params["ef_search"], k))
        scores, rows = self.index.search(vector[None, :], k, params=params)
        found = rows[0] >= 0
        return _ordered(scores[0][found], rows[0][found])

    def _nearest_matching(self, vector: np.ndarray, k: int, filter: Filter) -> tuple[np.ndarray, np.ndarray]:
        rows = self.items.rows_matching(filter, BRUTE_FORCE_MAX + 1)
        if len(rows) <= BRUTE_FORCE_MAX:
            return self._exact_among(vector, np.asarray(rows, dtype=np.int64), k)
        # Many items pass: walk the nearest candidates, fetching more until k of them pass.
        fetch = min(self.count, k * math.ceil(self.count / BRUTE_FORCE_MAX) * 2)
        while True:
            scores, candidates = self._nearest(vector, fetch)
            passing = self.items.keep_matching(filter, candidates.tolist())
            keep = np.fromiter((r in passing for r in candidates), dtype=bool, count=len(candidates))
            if keep.sum() >= k or fetch >= self.count:
                return scores[keep][:k], candidates[keep][:k]
            fetch = min(self.count, fetch * 4)

    def _exact_among(self, vector: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if rows.size == 0:
            return np.zeros(0, np.float32), rows
        scores = self.index.reconstruct_batch(rows) @ vector
        if rows.size > k:
            top = np.argpartition(-scores, k - 1)[:k]
            scores, rows = scores[top], rows[top]
        return _ordered(scores, rows)

    def _hits(self, keep: Sequence[tuple[float, int]], query: Query) -> list[Hit]:
        rows = [int(r) for _, r in keep]
        records = self.items.records(rows, query.include_metadata)
        vectors = self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64)) if query.include_vectors and rows \
            else None
        return [Hit(id=records[row][0], score=float(score), metadata=records[row][1],
                    vector=None if vectors is None else vectors[i])
                for i, (score, row) in enumerate(zip((s for s, _ in keep), rows))]

    # --- writes: not here ---------------------------------------------------------------------------

    def check_writable(self) -> None:
        raise self._read_only()

    def upsert(self, items: Sequence[Item]) -> None:
        raise self._read_only()

    def add_columns(self, columns: dict[str, str]) -> None:
        raise self._read_only()

    def delete(self, ids: Sequence[str] | None = None, filter: Filter | None = None) -> int | None:
        raise self._read_only()

    def _read_only(self) -> ReadOnly:
        m = self.manifest
        return ReadOnly(f"index {m['name']} version {m['version']} is a read-only FAISS index built by "
                        "`clipserve-batch index build`; to change it, build a new version and point INDEX_DIR at "
                        "it (or serve a Qdrant collection, QDRANT_URL, which takes writes)")

    def close(self) -> None:
        self.items.close()
        if self.thumbnails is not None:
            self.thumbnails.close()


def _ordered(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best first; equal scores by row, so answers do not depend on the search path."""
    order = np.lexsort((rows, -scores))
    return scores[order].astype(np.float32), rows[order].astype(np.int64)
