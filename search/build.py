"""Write an index version folder from unit vectors, ids and metadata (the batch job's last step).

Index types (`--index-type`, measured in bench/RESULTS.md):

- ``flat``: exact inner product over every vector. The default up to FLAT_MAX items, where one query
  costs under ~10 ms on 2 cores; at 1M items it costs ~160 ms.
- ``hnsw``: FAISS HNSW over the unquantized vectors (IndexHNSWFlat): a graph walk picks which items
  to score, the scores are exact inner products, and any item's vector reads back. Chosen over
  IVF-Flat after measuring both at 1M x 512 on 2 cores: on a diffuse clustered set IVF needed 14 ms
  for recall@10 0.93, HNSW 1.3 ms for 0.95 (bench/RESULTS.md). Tight clusters (near-duplicates) leave
  a graph built with efConstruction 40 and walked with efSearch 128 poorly connected (some queries
  find nothing of their own cluster); 80 and 256 fixed that in every case tried.

Building twice from the same input gives the same files: rows in input order, and FAISS's HNSW
inserts gave byte-identical graphs for 1, 2 and 3 threads and repeated builds (tests check it).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search import index_format
from search import thumbnails as thumbnail_files
from search.items_db import ItemsWriter

FLAT_MAX = 50_000
INDEX_TYPES = ("auto", "flat", "hnsw")
# HNSW: graph degree, build and query breadth (recall@10 >= 0.95 at 1M on the benchmark's clustered set).
HNSW_M = 32
EF_CONSTRUCTION = 80
EF_SEARCH = 256


class BuildError(ValueError):
    """The input cannot become an index (no usable rows, an impossible option)."""


@dataclass(frozen=True)
class IndexOptions:
    index_type: str = "auto"
    m: int = HNSW_M
    ef_construction: int = EF_CONSTRUCTION
    ef_search: int = EF_SEARCH


def index_params(count: int, options: IndexOptions) -> dict[str, Any]:
    """The index type and parameters for `count` vectors (what the manifest records)."""
    kind = options.index_type
    if kind not in INDEX_TYPES:
        raise BuildError(f"unknown index type {kind!r}; choose one of {', '.join(INDEX_TYPES)}")
    if kind == "auto":
        kind = "flat" if count <= FLAT_MAX else "hnsw"
    if kind == "flat":
        return {"type": "flat", "metric": "inner_product"}
    for name in ("m", "ef_construction", "ef_search"):
        if getattr(options, name) < 1:
            raise BuildError(f"{name} must be at least 1")
    return {"type": "hnsw", "metric": "inner_product", "m": options.m, "ef_construction": options.ef_construction,
            "ef_search": options.ef_search}


def build_faiss(vectors: np.ndarray, params: Mapping[str, Any]) -> Any:
    """A FAISS index over `vectors` (rows = ids 0..N-1), per `params` from `index_params`."""
    import faiss

    dim = vectors.shape[1]
    if params["type"] == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        index.hnsw.efSearch = params["ef_search"]
    _add_in_chunks(index, vectors)
    return index


def _add_in_chunks(index: Any, vectors: np.ndarray, chunk: int = 65_536) -> None:
    for start in range(0, len(vectors), chunk):  # a memmap is read a slice at a time
        index.add(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32))


def write_index(final: Path, vectors: np.ndarray, items: Iterable[tuple[str, Mapping[str, Any]]], *,
                columns: Mapping[str, str], from_csv: bool, model: Mapping[str, Any], modality: str, name: str,
                options: IndexOptions = IndexOptions(), build: Mapping[str, Any] | None = None,
                thumbnails: Iterable[bytes | None] | None = None, thumbnail_size: int | None = None) -> Path:
    """Publish `final` holding `vectors` (N x dim, unit rows) and `items` ((id, metadata) per row, same order),
    and with `thumbnails` a JPEG (or None) per row, `thumbnail_size` px on the long side."""
    import faiss

    if modality not in index_format.MODALITIES:
        raise BuildError(f"modality must be one of {', '.join(index_format.MODALITIES)}")
    if len(vectors) == 0:
        raise BuildError("no usable rows: nothing to index")
    params = index_params(len(vectors), options)
    with index_format.stage(final) as staging:
        writer = ItemsWriter(staging / index_format.ITEMS, columns, from_csv)
        batch: list[tuple[str, Mapping[str, Any]]] = []
        for item in items:
            batch.append(item)
            if len(batch) >= 10_000:
                writer.add(batch)
                batch.clear()
        writer.add(batch)
        if writer.rows != len(vectors):
            raise BuildError(f"{writer.rows} items for {len(vectors)} vectors")
        writer.close()
        faiss.write_index(build_faiss(vectors, params), str(staging / index_format.VECTORS))
        manifest: dict[str, Any] = {
            "name": name, "version": final.name, "created": _now(), "modality": modality,
            "count": len(vectors), "model": dict(model), "index": params,
            "metadata": {"columns": dict(columns)}, "build": dict(build or {}),
        }
        if thumbnails is not None:
            manifest["thumbnails"] = thumbnail_files.write(staging, thumbnails, count=len(vectors),
                                                           size=thumbnail_size or 0)
        return index_format.publish(final, manifest)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
