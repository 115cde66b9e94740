"""``POST /search`` (and the writes, ``POST /index``, ``/index/delete``): validate, turn the query into a unit
vector, ask the search backend, answer.

The query is embedded by the same paths as the embedding routes (text cache, image loading and its
per-image error codes, the batching engine); the backend (``search/``) knows nothing of HTTP.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from flask import Response, jsonify

from handler import observability, scoring
from handler.errors import AllItemsFailed, ImageFailed, IndexNotConfigured, InvalidRequest
from handler.openapi import Multipart, RouteDoc
from handler.parsing import read_json, read_with_images
from handler.schemas import IndexDeleteResponse, IndexWriteResponse, SearchResponse
from search.filters import parse_filter
from search.query import Hit, Item, Query
from search.service import SearchService

if TYPE_CHECKING:
    from handler.app import ClipApi

_ERRORS = ("invalid_json", "invalid_request", "image_failed", "index_not_configured", "item_not_found",
           "payload_too_large", "unsupported_media_type", "overloaded", "internal_error", "model_loading",
           "index_loading", "search_unavailable", "timeout")
NOT_CONFIGURED = ("this service has no search index: build one with `clipserve-batch index build --input FILE "
                  "--output DIR --local`, then start the service with INDEX_DIR=DIR (or QDRANT_URL=... for a "
                  "Qdrant collection); see the README's search section")


class SearchViews:
    def __init__(self, api: "ClipApi", search: SearchService | None) -> None:
        self.api = api
        self.search = search

    def routes(self) -> list[tuple[RouteDoc, Callable[[], Any]]]:
        return [(RouteDoc("/search", "POST", "Nearest indexed items to a text, an image, a vector or an item's id.",
                          SearchResponse, self.api.models.search, errors=_ERRORS,
                          multipart=Multipart(files="image", single=True, json_only=())), self.search_view)]

    def backend(self) -> Any:
        if self.search is None:
            raise IndexNotConfigured(NOT_CONFIGURED)
        return self.search.backend

    def search_view(self) -> Response:
        backend = self.backend()  # 404 / 503 before reading or embedding anything
        req, images = read_with_images(self.api.models.search, self.api.settings.max_image_bytes, file_field="image")
        deadline = self.api.deadline()
        vector, exclude = self._query_vector(req, images, backend, deadline)
        columns = backend.columns()
        query = Query(vector=vector, top_k=req.top_k, score_threshold=req.score_threshold,
                      filter=None if req.filter is None else parse_filter(req.filter, columns),
                      include_metadata=req.include_metadata, include_vectors=req.include_vectors,
                      exclude_id=exclude)
        started = time.perf_counter()
        hits = backend.search(query)
        observability.record_search(req.kind, time.perf_counter() - started, len(hits),
                                    filtered=req.filter is not None)
        return jsonify({**self.api.model_fields(), "results": [_hit(h, req) for h in hits],
                        "index": backend.info().public()})

    def _query_vector(self, req: Any, images: list | None, backend: Any,
                      deadline: float) -> tuple[np.ndarray, str | None]:
        """(unit query vector, id to leave out of the results)."""
        if req.kind == "text":
            return self.api.embed_texts([req.text], normalize=True, deadline=deadline, field="text").embeddings[0], None
        if req.kind == "image":
            prepared, _, errors = self.api.load_images(images, deadline)
            if errors:
                raise ImageFailed(f"image: {errors[0]['code']}: {errors[0]['message']}", param="image")
            return self.api.encode_images(prepared, normalize=True, deadline=deadline)[0], None
        if req.kind == "id":
            return backend.vector_of(req.id), req.id
        return unit_vector(req.vector, self.api.engine.info.dim, "vector"), None


def unit_vector(values: list[float], dim: int, field: str) -> np.ndarray:
    """A client's vector, checked (length, finite, not all zero) and normalized."""
    if len(values) != dim:
        raise InvalidRequest(f"{field}: has {len(values)} values, the model's dimension is {dim}", param=field)
    vector = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vector).all() or not vector.any():
        raise InvalidRequest(f"{field}: must be finite and not all zero", param=field)
    return scoring.unit_rows(vector[None, :])[0].astype(np.float32)


def _hit(hit: Hit, req: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": hit.id, "score": hit.score, "clip_score": scoring.clip_score(np.float32(hit.score))}
    if req.include_metadata:
        out["metadata"] = hit.metadata if hit.metadata is not None else {}
    if req.include_vectors and hit.vector is not None:
        out["vector"] = hit.vector.astype(np.float32)
    return out


class IndexWriteViews:
    """``POST /index`` and ``POST /index/delete``: writes, where the backend takes them (Qdrant).

    Items are embedded by the same paths as the embedding routes, with the collection's modality; an
    item that fails (its image, its vector, its metadata) is reported by position and not written.
    """

    def __init__(self, search_views: SearchViews) -> None:
        self.views = search_views
        self.api = search_views.api

    def routes(self) -> list[tuple[RouteDoc, Callable[[], Any]]]:
        errors = ("invalid_json", "invalid_request", "index_not_configured", "index_read_only", "all_items_failed",
                  "payload_too_large", "unsupported_media_type", "overloaded", "internal_error", "model_loading",
                  "index_loading", "search_unavailable", "timeout")
        return [
            (RouteDoc("/index", "POST", "Embed and upsert items (a backend that takes writes: Qdrant).",
                      IndexWriteResponse, self.api.models.index_write, errors=errors,
                      multipart=Multipart(files="images", required=("items",), json_only=())), self.write),
            (RouteDoc("/index/delete", "POST", "Delete items by ids or by a filter.", IndexDeleteResponse,
                      self.api.models.index_delete, errors=errors[:4] + errors[6:]), self.delete),
        ]

    def writable_backend(self) -> Any:
        backend = self.views.backend()
        backend.check_writable()  # 405 for the read-only index, before reading or embedding anything
        return backend

    def write(self) -> Response:
        backend = self.writable_backend()
        req, files = read_with_images(self.api.models.index_write, self.api.settings.max_image_bytes)
        deadline = self.api.deadline()
        if files is not None:
            if len(files) != len(req.items) or any(i.text or i.image or i.vector for i in req.items):
                raise InvalidRequest(f"multipart: one 'images' file part per item ({len(files)} files, "
                                     f"{len(req.items)} items), and items without text, image or vector")
        info = backend.info()
        vectors, errors = self._embed(req.items, files, info.modality, deadline)
        columns = backend.columns()
        new_columns: dict[str, str] = {}
        items = []
        for i, item in enumerate(req.items):
            if i in errors:
                continue
            problem = _metadata_problem(item.metadata, columns, new_columns)
            if problem:
                errors[i] = ("invalid_metadata", problem)
            else:
                items.append(Item(id=item.id, vector=vectors[i], metadata=item.metadata))
        if not items:
            raise AllItemsFailed(f"none of the {len(req.items)} items could be written",
                                 details=_error_list(errors))
        if new_columns:
            backend.add_columns(new_columns)
        backend.upsert(items)
        observability.annotate(upserted=len(items), item_errors=len(errors))
        return jsonify({**self.api.model_fields(), "upserted": len(items), "ids": [item.id for item in items],
                        "errors": _error_list(errors), "index": backend.info().public()})

    def _embed(self, items: list, files: list | None, modality: str,
               deadline: float) -> tuple[dict[int, np.ndarray], dict[int, tuple[str, str]]]:
        """Each item's unit vector, or its error (code, message): vectors as given, texts and images embedded."""
        dim = self.api.engine.info.dim
        vectors: dict[int, np.ndarray] = {}
        errors: dict[int, tuple[str, str]] = {}
        texts, images = [], []
        for i, item in enumerate(items):
            given = [k for k in ("text", "image", "vector") if getattr(item, k) is not None]
            if files is not None:
                images.append((i, files[i]))
            elif len(given) != 1:
                errors[i] = ("invalid_request", "give exactly one of text, image or vector")
            elif given[0] == "vector":
                try:
                    vectors[i] = unit_vector(item.vector, dim, f"items[{i}].vector")
                except InvalidRequest as exc:
                    errors[i] = ("invalid_request", exc.message)
            elif given[0] != modality:
                errors[i] = ("wrong_modality", f"this collection holds {modality} embeddings: send "
                                               f"{'an image' if modality == 'image' else 'a text'} or a vector")
            else:
                (texts if given[0] == "text" else images).append((i, getattr(item, given[0])))
        if texts:
            result = self.api.embed_texts([t for _, t in texts], normalize=True, deadline=deadline,
                                          field="items.text")
            vectors.update(zip((i for i, _ in texts), result.embeddings))
        if images:
            prepared, ok, image_errors = self.api.load_images([img for _, img in images], deadline)
            for e in image_errors:
                errors[images[e["index"]][0]] = (e["code"], e["message"])
            if prepared:
                embedded = self.api.encode_images(prepared, normalize=True, deadline=deadline)
                vectors.update(zip((images[j][0] for j in ok), embedded))
        return vectors, errors

    def delete(self) -> Response:
        backend = self.writable_backend()
        req = read_json(self.api.models.index_delete)
        if req.ids is not None:
            deleted = backend.delete(ids=req.ids)
        else:
            deleted = backend.delete(filter=parse_filter(req.filter, backend.columns()))
        observability.annotate(deleted=deleted)
        return jsonify({"deleted": deleted, "index": backend.info().public()})


def _metadata_problem(metadata: dict[str, Any], columns: dict[str, str], new: dict[str, str]) -> str | None:
    """Why this metadata cannot be written (None if it can); records keys the collection does not have yet."""
    from search.items_db import fits, value_kind
    from search.qdrant_index import ID_KEY

    if ID_KEY in metadata:
        return f"metadata.{ID_KEY}: reserved (the item's id is kept under it)"
    for key, value in metadata.items():
        kind = value_kind(value)
        if kind is None:
            continue
        column = columns.get(key) or new.get(key)
        if column is None:
            new[key] = kind
        elif not fits(kind, column):
            return f"metadata.{key}: a {kind} value; the collection's {key!r} holds {column} values"
    return None


def _error_list(errors: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"index": i, "code": code, "message": message} for i, (code, message) in sorted(errors.items())]
