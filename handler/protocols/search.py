"""Search in clipserve's protocol: ``POST /search``, and the writes ``POST /index`` and ``/index/delete``.

The query is embedded by the same paths as the embedding routes (text cache, image loading and its
per-image error codes, the batching engine); the backend (``search/``) knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from flask import Response, jsonify, request

from handler import scoring
from handler.openapi import Multipart, RouteDoc
from handler.protocols.common import Protocol, Route
from handler.schemas import IndexDeleteResponse, IndexWriteResponse, SearchResponse
from handler.service import QuerySpec
from search.query import Hit

_ERRORS = ("invalid_json", "invalid_request", "image_failed", "index_not_configured", "item_not_found",
           "payload_too_large", "unsupported_media_type", "overloaded", "internal_error", "model_loading",
           "index_loading", "search_unavailable", "timeout")
_WRITE_ERRORS = ("invalid_json", "invalid_request", "index_not_configured", "index_read_only", "all_items_failed",
                 "payload_too_large", "unsupported_media_type", "overloaded", "internal_error", "model_loading",
                 "index_loading", "search_unavailable", "timeout")


class SearchApi(Protocol):
    name = "search"

    def routes(self) -> list[Route]:
        models = self.service.models
        return [
            Route(RouteDoc("/search", "POST", "Nearest indexed items to a text, an image, a vector or an item's id.",
                           SearchResponse, models.search, errors=_ERRORS,
                           multipart=Multipart(files="image", single=True, json_only=())), self.search),
            Route(RouteDoc("/index", "POST", "Embed and upsert items (a backend that takes writes: Qdrant).",
                           IndexWriteResponse, models.index_write, errors=_WRITE_ERRORS,
                           multipart=Multipart(files="images", required=("items",), json_only=())), self.write),
            Route(RouteDoc("/items/<path:item_id>/thumbnail", "GET",
                           "An item's thumbnail (JPEG), stored by `index build --thumbnails`.", None,
                           errors=("index_not_configured", "item_not_found", "thumbnail_not_found", "index_loading",
                                   "search_unavailable")), self.thumbnail),
            Route(RouteDoc("/index/delete", "POST", "Delete items by ids or by a filter.", IndexDeleteResponse,
                           models.index_delete, errors=_WRITE_ERRORS[:4] + _WRITE_ERRORS[6:]), self.delete),
        ]

    def search(self) -> Response:
        self.service.backend()  # 404 / 503 before reading or embedding anything
        call = self.receive(self.service.models.search, images="image")
        req = call.body
        value = call.images[0] if req.kind == "image" else getattr(req, req.kind)
        spec = QuerySpec(kind=req.kind, value=value, top_k=req.top_k, score_threshold=req.score_threshold,
                         filter=req.filter, include_metadata=req.include_metadata,
                         include_vectors=req.include_vectors, model=req.model)
        hits, index = self.service.find(spec, call.deadline)
        return jsonify({**self.service.model_fields(index.get("model")), "results": [_hit(h, spec) for h in hits],
                        "index": index})

    def thumbnail(self, item_id: str) -> Response:
        """The JPEG, revalidated by ETag. Asked for with ``?v=<the index version>`` (as the playground does)
        the URL names one immutable file, so it may be cached for a year; without, for a minute, since a new
        version may be deployed under the same path."""
        data, version = self.service.thumbnail(item_id)
        response = Response(data, mimetype="image/jpeg")
        response.set_etag(hashlib.sha256(data).hexdigest()[:32])
        pinned = request.args.get("v") == version
        response.headers["Cache-Control"] = ("private" if "Authorization" in request.headers else "public") + (
            ", max-age=31536000, immutable" if pinned else ", max-age=60")
        return response.make_conditional(request)

    def write(self) -> Response:
        self.service.writable_backend()  # 404 / 405 / 503 before reading or embedding anything
        call = self.receive(self.service.models.index_write, images="images")
        ids, errors = self.service.write_items(call.body.items, call.images, call.deadline, model=call.body.model)
        index = self.service.backend().info().public()
        return jsonify({**self.service.model_fields(index.get("model")), "upserted": len(ids), "ids": ids,
                        "errors": errors, "index": index})

    def delete(self) -> Response:
        self.service.writable_backend()
        req = self.receive(self.service.models.index_delete).body
        deleted, index = self.service.delete_items(ids=req.ids, filter=req.filter)
        return jsonify({"deleted": deleted, "index": index.public()})


def _hit(hit: Hit, spec: QuerySpec) -> dict[str, Any]:
    out: dict[str, Any] = {"id": hit.id, "score": hit.score, "clip_score": scoring.clip_score(np.float32(hit.score))}
    if spec.include_metadata:
        out["metadata"] = hit.metadata if hit.metadata is not None else {}
    if spec.include_vectors and hit.vector is not None:
        out["vector"] = hit.vector.astype(np.float32)
    return out
