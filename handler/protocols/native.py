"""clipserve's own protocol: ``/embed/text``, ``/embed/image``, ``/embed/mixed``, ``/score``, and the
service's front door (``/``, ``/health``, ``/openapi.json``; the pages a browser opens are in ``page.py``).

Answers keep failed images in place (``null`` with an ``errors`` entry), so a batch of a hundred
images with one bad URL still returns ninety-nine vectors.
"""

from __future__ import annotations

from typing import Any, Callable

from flask import Response, jsonify

from handler import observability, scoring
from handler.openapi import Multipart, RouteDoc, build_openapi, openapi_path
from handler.protocols.common import Protocol, Route
from handler.schemas import (HealthResponse, ImageEmbedResponse, InfoResponse, MixedEmbedResponse, ScoreResponse,
                             StatsResponse, TextEmbedResponse)
from handler.service import SERVICE, ClipService
from infra.tracing import service_version

COMMON_ERRORS = ("invalid_json", "invalid_request", "unknown_model", "payload_too_large", "unsupported_media_type",
                 "overloaded", "internal_error", "model_loading", "timeout")
IMAGE_ERRORS = COMMON_ERRORS + ("all_images_failed",)


class NativeApi(Protocol):
    name = "native"

    def __init__(self, service: ClipService, catalogue: Callable[[], list[RouteDoc]]) -> None:
        """``catalogue``: every route the app serves, for GET / and /openapi.json."""
        super().__init__(service)
        self.catalogue = catalogue
        self._openapi: dict[str, Any] | None = None

    def routes(self) -> list[Route]:
        models = self.service.models
        return [
            Route(RouteDoc("/", "GET", "Service information: model, limits, version.", InfoResponse), self.info),
            Route(RouteDoc("/health", "GET",
                           "200 once the model is loaded and the inference loop is working; 503 before.",
                           HealthResponse, errors=("model_loading",)), self.health),
            Route(RouteDoc("/embed/text", "POST", "Embed texts.", TextEmbedResponse, models.text,
                           errors=COMMON_ERRORS), self.embed_text),
            Route(RouteDoc("/embed/image", "POST", "Embed images (JSON, or multipart file parts named 'images').",
                           ImageEmbedResponse, models.image, multipart=Multipart(required=("images",)),
                           errors=IMAGE_ERRORS), self.embed_image),
            Route(RouteDoc("/embed/mixed", "POST", "Embed texts and images in one call.", MixedEmbedResponse,
                           models.mixed, multipart=Multipart(any_of=("texts", "images")), errors=IMAGE_ERRORS),
                  self.embed_mixed),
            Route(RouteDoc("/score", "POST", "Score every image against every text (or pairwise).", ScoreResponse,
                           models.score, multipart=Multipart(required=("texts", "images")), errors=IMAGE_ERRORS),
                  self.score),
            Route(RouteDoc("/stats", "GET", "Counters since start: requests and errors by route, cache hit ratios, "
                           "the shared cache's state, the index, batch sizes and the queue.", StatsResponse),
                  self.stats),
            Route(RouteDoc("/openapi.json", "GET", "This OpenAPI document.", None), self.openapi),
        ]

    def open_paths(self) -> set[str]:
        return {"/health"}

    # the front door ------------------------------------------------------------------------------

    def health(self) -> Response:
        status, reason = self.service.health_status()
        response = jsonify(HealthResponse(status=status, reason=reason).model_dump(exclude_none=True))
        response.status_code = 200 if status == "ok" else 503
        return response

    def info(self) -> Response:
        status, _ = self.service.health_status()
        search = self.service.search
        return jsonify(InfoResponse(
            service=SERVICE, version=service_version(), status=status, model=self.service.model_info(),
            models=self.service.served_models(), limits=self.service.limits(),
            search=search.describe() if search is not None else None,
            endpoints=[f"{doc.method} {openapi_path(doc.path)}" for doc in self.catalogue() if doc.listed],
            links={**({"playground": "/ui"} if self.service.settings.ui_enabled else {}), "docs": "/docs",
                   "openapi": "/openapi.json"},
        ).model_dump())

    def stats(self) -> Response:
        return jsonify({"service": SERVICE, "version": service_version(), "model": self.service.model_info(),
                        **observability.stats(), **self.service.stats()})

    def openapi(self) -> Response:
        if self._openapi is None:
            self._openapi = build_openapi(self.catalogue(), title=SERVICE, version=service_version(),
                                          description="CLIP embeddings and image-text scores over HTTP.")
        return jsonify(self._openapi)

    # embeddings and scores -----------------------------------------------------------------------

    def embed_text(self) -> Response:
        call = self.receive(self.service.models.text)
        req = call.body
        result = self.service.embed_texts(req.texts, normalize=req.normalize, deadline=call.deadline,
                                          truncate=req.truncate, model=req.model)
        return jsonify({**self.service.model_fields(req.model),
                        "embeddings": scoring.encode_vectors(result.embeddings, req.encoding_format),
                        "truncated": result.truncated})

    def embed_image(self) -> Response:
        call = self.receive(self.service.models.image, images="images")
        req = call.body
        batch = self.service.embed_images(call.images, normalize=req.normalize, deadline=call.deadline,
                                          model=req.model)
        return jsonify({**self.service.model_fields(req.model),
                        "embeddings": batch.placed(scoring.encode_vectors(batch.vectors, req.encoding_format)),
                        "errors": batch.errors})

    def embed_mixed(self) -> Response:
        call = self.receive(self.service.models.mixed, images="images")
        req = call.body
        image_embeddings: list = []
        errors: list[dict[str, Any]] = []
        if call.images is not None:
            batch = self.service.embed_images(call.images, normalize=req.normalize, deadline=call.deadline,
                                              all_fail_ok=req.texts is not None, model=req.model)
            image_embeddings = batch.placed(scoring.encode_vectors(batch.vectors, req.encoding_format))
            errors = batch.errors
        text_embeddings: list = []
        truncated: list[int] = []
        if req.texts is not None:
            result = self.service.embed_texts(req.texts, normalize=req.normalize, deadline=call.deadline,
                                              truncate=req.truncate, model=req.model)
            text_embeddings = scoring.encode_vectors(result.embeddings, req.encoding_format)
            truncated = result.truncated
        return jsonify({**self.service.model_fields(req.model), "text_embeddings": text_embeddings,
                        "image_embeddings": image_embeddings, "errors": errors, "truncated": truncated})

    def score(self) -> Response:
        call = self.receive(self.service.models.score, images="images")
        req = call.body
        scores = self.service.score(texts=req.texts, text_vectors=req.text_embeddings, images=call.images,
                                    image_vectors=req.image_embeddings, pairwise=req.pairwise,
                                    truncate=req.truncate, deadline=call.deadline, model=req.model,
                                    templates=req.templates)
        return jsonify({**self.service.model_fields(req.model), "pairwise": scores.pairwise,
                        "clip_score": scores.clip_score, "cosine": scores.cosine, "probs": scores.probs,
                        "probs_kind": scores.probs_kind, "errors": scores.errors, "truncated": scores.truncated})
