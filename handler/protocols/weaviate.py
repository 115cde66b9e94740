"""Weaviate's CLIP inference protocol (the ``multi2vec-clip`` module), so a Weaviate with
``CLIP_INFERENCE_API`` pointing here vectorizes objects and ``nearText`` / ``nearImage`` queries with
clipserve's models: ``POST /vectorize``, ``GET /meta``, ``GET /.well-known/live`` and ``/.well-known/ready``.

The vectors are the native routes' (normalized, same engine and cache). The protocol has no partial
results, so one image that cannot be used fails the request, naming it; errors are ``{"error": ...}``,
which Weaviate shows as ``fail with status N: <error>``. Weaviate sends no key: the probes are always
open, and ``/vectorize`` and ``/meta`` only with ``WEAVIATE_ROUTES_OPEN`` (docs/clients.md says when).
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from handler.errors import ApiError
from handler.openapi import RouteDoc
from handler.protocols.common import Protocol, Route
from handler.schemas import WeaviateError, WeaviateMeta, WeaviateVectors
from handler.service import SERVICE
from infra.tracing import service_version

LIVE, READY = "/.well-known/live", "/.well-known/ready"
_ERRORS = ("invalid_json", "invalid_request", "image_failed", "payload_too_large", "unsupported_media_type",
           "overloaded", "internal_error", "model_loading", "timeout")


def weaviate_error(error: ApiError) -> dict[str, Any]:
    return {"error": error.message, "code": error.code}


class WeaviateApi(Protocol):
    name = "weaviate"
    error_shape = staticmethod(weaviate_error)

    def routes(self) -> list[Route]:
        return [
            Route(RouteDoc("/vectorize", "POST", "Weaviate multi2vec-clip: vectors of an object's texts and images.",
                           WeaviateVectors, self.service.models.weaviate_vectorize, errors=_ERRORS,
                           error_model=WeaviateError), self.vectorize),
            Route(RouteDoc("/meta", "GET", "Weaviate multi2vec-clip: the served model.", WeaviateMeta,
                           errors=("model_loading",), error_model=WeaviateError), self.meta),
            Route(RouteDoc(LIVE, "GET", "Weaviate's liveness probe: 204 while the process serves.", None,
                           ok_status=204), self.live),
            Route(RouteDoc(READY, "GET", "Weaviate's readiness probe: 204 once the model is loaded, 503 before.",
                           None, errors=("model_loading",), ok_status=204, error_model=WeaviateError), self.ready),
        ]

    def open_paths(self) -> set[str]:
        opened = {"/vectorize", "/meta"} if self.service.settings.weaviate_routes_open else set()
        return {LIVE, READY} | opened

    def live(self) -> Response:
        return _no_content()

    def ready(self) -> Response:
        status, reason = self.service.health_status()
        if status == "ok":
            return _no_content()
        response = jsonify({"error": reason or f"the model is {status}", "code": "model_loading"})
        response.status_code = 503
        return response

    def meta(self) -> Response:
        return jsonify({"service": SERVICE, "version": service_version(),
                        "model": self.service.engine.engine().info.as_dict()})

    def vectorize(self) -> Response:
        call = self.receive(self.service.models.weaviate_vectorize)
        req = call.body
        text_vectors: Any = []
        image_vectors: Any = []
        if req.images:
            image_vectors = self.service.embed_every_image(req.images, deadline=call.deadline,
                                                           label=lambda i: f"images[{i}]")
        if req.texts:
            text_vectors = self.service.embed_texts(req.texts, normalize=True, deadline=call.deadline).embeddings
        return jsonify({"textVectors": list(text_vectors), "imageVectors": list(image_vectors)})


def _no_content() -> Response:
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response
