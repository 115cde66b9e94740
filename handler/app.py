"""Flask app factory and the API's views.

``create_app`` opens no threads: the model load and the inference thread start on the first
request or from gunicorn's worker hook (after fork), via ``engine.start()``. ``/health`` answers
503 "loading" until the model is ready, so the port can open at once.
"""

from __future__ import annotations

import functools
import importlib.metadata
import time
from typing import Any, Callable

import numpy as np
from flask import Flask, Response, jsonify

from engine import EmbeddingEngine, ModelState, TextResult, TextsTooLong
from handler import auth, observability, openai_compat, scoring, search_views
from handler.client import disconnect_check
from handler.errors import AllImagesFailed, InvalidRequest, Timeout, register_error_handlers
from handler.jsonio import OrjsonProvider
from handler.openapi import DOCS_HTML, Multipart, RouteDoc, build_openapi
from handler.parsing import read_json, read_with_images
from handler.schemas import (HealthResponse, ImageEmbedResponse, InfoResponse, MixedEmbedResponse, ScoreResponse,
                             TextEmbedResponse, build_request_models)
from infra.settings import Settings
from inputs import ImageError, ImageLimits, draft_size_for, load_images
from search.configure import search_service
from search.service import SearchService, State

SERVICE = "clipserve"
EXTENSION = "clipserve"
_COMMON_ERRORS = ("invalid_json", "invalid_request", "payload_too_large", "unsupported_media_type", "overloaded",
                  "internal_error", "model_loading", "timeout")


def service_version() -> str:
    try:
        return importlib.metadata.version(SERVICE)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def load_bundle_encoder(settings: Settings) -> Any:
    """The production loader: the baked bundle ``MODEL_DIR/MODEL_VARIANT`` (imported here so handler/ stays torch-free)."""
    from models.loader import load_encoder

    return load_encoder(settings.model_variant, settings.model_dir, threads=settings.torch_threads,
                        precision=settings.precision, runtime=settings.runtime, device=settings.device,
                        image_decode=settings.image_decode)


def create_app(settings: Settings | None = None, engine: EmbeddingEngine | None = None,
               search: SearchService | None = None) -> Flask:
    """Build the app. Tests pass ``settings`` and an engine around a tiny (or failing) encoder, or a search
    service. Raises IndexUnusable when the configured index cannot be served with this model."""
    settings = settings or Settings.from_env()
    from models.device import require_requested_gpu

    require_requested_gpu(settings.device, settings.image_decode)  # asked for a GPU, none: stop the boot now
    if engine is None:
        engine = EmbeddingEngine.from_settings(settings, functools.partial(load_bundle_encoder, settings))
    if search is None and any(v is not None for v in (settings.index_dir, settings.qdrant_url, settings.qdrant_path)):
        from models.bundle import model_identity  # the bundle's manifest only: no torch

        search = search_service(settings, model_identity(settings.model_dir, settings.model_variant))
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    api = ClipApi(settings, engine, search)
    app.extensions[EXTENSION] = api
    register_error_handlers(app)
    observability.init_app(app, settings, engine)  # first: a request refused by auth still gets an id and a log line
    auth.init_app(app, settings)
    app.before_request(api.start)
    for doc, view in api.routes():
        app.add_url_rule(doc.path, view.__name__, view, methods=[doc.method])
    return app


class ClipApi:
    """The views, with the settings and engine they share."""

    def __init__(self, settings: Settings, engine: EmbeddingEngine, search: SearchService | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.search = search
        self.models = build_request_models(settings.max_items, settings.max_text_chars, settings.search_max_top_k)
        self.image_limits = ImageLimits.from_settings(settings)
        self.openai = openai_compat.OpenAIViews(self)
        self.search_views = search_views.SearchViews(self, search)
        self.index_writes = search_views.IndexWriteViews(self.search_views)
        self._openapi: dict[str, Any] | None = None

    def start(self) -> None:
        """Begin loading the model and opening the search index (once per process, in the background)."""
        self.engine.start()
        if self.search is not None:
            self.search.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        self.engine.shutdown(timeout)

    def routes(self) -> list[tuple[RouteDoc, Callable[[], Any]]]:
        image_errors = _COMMON_ERRORS + ("all_images_failed",)
        return [
            (RouteDoc("/", "GET", "Service information: model, limits, version.", InfoResponse), self.info),
            (RouteDoc("/health", "GET", "200 once the model is loaded and the inference loop is working; 503 before.",
                      HealthResponse, errors=("model_loading",)), self.health),
            (RouteDoc("/embed/text", "POST", "Embed texts.", TextEmbedResponse, self.models.text,
                      errors=_COMMON_ERRORS), self.embed_text),
            (RouteDoc("/embed/image", "POST", "Embed images (JSON, or multipart file parts named 'images').",
                      ImageEmbedResponse, self.models.image, multipart=Multipart(required=("images",)),
                      errors=image_errors),
             self.embed_image),
            (RouteDoc("/embed/mixed", "POST", "Embed texts and images in one call.", MixedEmbedResponse,
                      self.models.mixed, multipart=Multipart(any_of=("texts", "images")), errors=image_errors),
             self.embed_mixed),
            (RouteDoc("/score", "POST", "Score every image against every text (or pairwise).", ScoreResponse,
                      self.models.score, multipart=Multipart(required=("texts", "images")), errors=image_errors),
             self.score),
            (RouteDoc("/openapi.json", "GET", "This OpenAPI document.", None), self.openapi),
            (RouteDoc("/docs", "GET", "Interactive API documentation (HTML).", None), self.docs),
            *self.search_views.routes(),
            *self.index_writes.routes(),
            *self.openai.routes(),
        ]

    # meta --------------------------------------------------------------------------------------

    def health(self) -> Response:
        status, reason = self.health_status()
        body = HealthResponse(status=status, reason=reason).model_dump(exclude_none=True)
        response = jsonify(body)
        response.status_code = 200 if status == "ok" else 503
        return response

    def health_status(self) -> tuple[str, str | None]:
        """("ok" | "loading" | "failed" | "unhealthy", reason). A wedged or dead inference loop is unhealthy;
        an embedded search index is part of health (it loads beside the model), a search server is not."""
        search = self.search
        if search is not None and search.part_of_health and search.state is not State.READY:
            if search.state is State.FAILED:
                return "failed", f"the search index failed to open: {search.reason}"
            if self.engine.state is not ModelState.FAILED:
                return "loading", None
        state = self.engine.state
        if state is ModelState.LOADING:
            return "loading", None
        if state is ModelState.FAILED:
            return "failed", "the model failed to load; see the service logs"
        if getattr(self.engine, "device_error", None):
            return "unhealthy", f"the GPU failed: {self.engine.device_error}"
        loop = self.engine.loop_health()
        if not loop.running:
            return "unhealthy", "the inference loop is not running"
        if loop.stalled:
            if loop.busy_for_s >= loop.oldest_wait_s:
                return "unhealthy", f"a model call has been running for {loop.busy_for_s:.0f} s"
            return "unhealthy", f"queued work has waited {loop.oldest_wait_s:.0f} s without being picked up"
        return "ok", None

    def info(self) -> Response:
        status, _ = self.health_status()
        model = self.engine.info.as_dict() if self.engine.state is ModelState.READY else None
        s = self.settings
        return jsonify(InfoResponse(
            service=SERVICE, version=service_version(), status=status, model=model,
            limits={"max_items": s.max_items, "max_text_chars": s.max_text_chars, "max_body_bytes": s.max_body_bytes,
                    "max_image_bytes": s.max_image_bytes, "max_image_pixels": s.max_image_pixels,
                    "fetch_timeout_s": s.fetch_timeout_s, "fetch_max_redirects": s.fetch_max_redirects,
                    "request_timeout_s": s.request_timeout_s, "search_max_top_k": s.search_max_top_k},
            search=self.search.describe() if self.search is not None else None,
            endpoints=[f"{doc.method} {doc.path}" for doc, _ in self.routes()],
        ).model_dump())

    def openapi(self) -> Response:
        if self._openapi is None:
            docs = [doc for doc, _ in self.routes()]
            self._openapi = build_openapi(docs, title=SERVICE, version=service_version(),
                                          description="CLIP embeddings and image-text scores over HTTP.")
        return jsonify(self._openapi)

    def docs(self) -> Response:
        return Response(DOCS_HTML, mimetype="text/html")

    # embeddings --------------------------------------------------------------------------------

    def embed_text(self) -> Response:
        req = read_json(self.models.text)
        deadline = self.deadline()
        result = self.embed_texts(req.texts, normalize=req.normalize, deadline=deadline, truncate=req.truncate)
        return jsonify({**self.model_fields(),
                        "embeddings": scoring.encode_vectors(result.embeddings, req.encoding_format),
                        "truncated": result.truncated})

    def embed_image(self) -> Response:
        req, images = read_with_images(self.models.image, self.settings.max_image_bytes)
        deadline = self.deadline()
        vectors, ok, errors = self.embed_images(images, normalize=req.normalize, deadline=deadline)
        return jsonify({**self.model_fields(),
                        "embeddings": scoring.place(scoring.encode_vectors(vectors, req.encoding_format), ok,
                                                    len(images)),
                        "errors": errors})

    def embed_mixed(self) -> Response:
        req, images = read_with_images(self.models.mixed, self.settings.max_image_bytes)
        deadline = self.deadline()
        image_embeddings: list = []
        errors: list[dict[str, Any]] = []
        if images is not None:
            vectors, ok, errors = self.embed_images(images, normalize=req.normalize, deadline=deadline,
                                                    all_fail_ok=req.texts is not None)
            image_embeddings = scoring.place(scoring.encode_vectors(vectors, req.encoding_format), ok, len(images))
        text_embeddings: list = []
        truncated: list[int] = []
        if req.texts is not None:
            result = self.embed_texts(req.texts, normalize=req.normalize, deadline=deadline, truncate=req.truncate)
            text_embeddings = scoring.encode_vectors(result.embeddings, req.encoding_format)
            truncated = result.truncated
        return jsonify({**self.model_fields(), "text_embeddings": text_embeddings,
                        "image_embeddings": image_embeddings, "errors": errors, "truncated": truncated})

    def score(self) -> Response:
        req, images = read_with_images(self.models.score, self.settings.max_image_bytes)
        deadline = self.deadline()
        dim = self.engine.info.dim
        errors: list[dict[str, Any]] = []
        if images is not None:
            image_vectors, ok, errors = self.embed_images(images, normalize=True, deadline=deadline)
            n_images = len(images)
        else:
            image_vectors = _given_vectors(req.image_embeddings, dim, "image_embeddings")
            ok, n_images = list(range(len(image_vectors))), len(image_vectors)
        truncated: list[int] = []
        if req.texts is not None:
            result = self.embed_texts(req.texts, normalize=True, deadline=deadline, truncate=req.truncate)
            text_vectors, truncated = result.embeddings, result.truncated
        else:
            text_vectors = _given_vectors(req.text_embeddings, dim, "text_embeddings")
        if req.pairwise:
            cosine = scoring.cosine_pairwise(image_vectors, text_vectors[ok])
            clip, probs = scoring.clip_score(cosine), None
        else:
            cosine = scoring.cosine_matrix(image_vectors, text_vectors)
            clip = scoring.clip_score(cosine)
            probs = scoring.place(scoring.zero_shot_probs(cosine, self.engine.info.logit_scale).tolist(), ok, n_images)
        return jsonify({**self.model_fields(), "pairwise": req.pairwise,
                        "clip_score": scoring.place(clip.tolist(), ok, n_images),
                        "cosine": scoring.place(cosine.tolist(), ok, n_images),
                        "probs": probs, "errors": errors, "truncated": truncated})

    # shared by the native and the OpenAI-compatible views -----------------------------------------

    def embed_texts(self, texts: list[str], *, normalize: bool, deadline: float, truncate: bool = True,
                    field: str = "texts") -> TextResult:
        """Embed texts through the engine; over-long texts with ``truncate=False`` are a 400 naming them."""
        observability.record_items(texts=len(texts))
        try:
            return self.engine.embed_texts(texts, normalize=normalize, timeout=_left(deadline), truncate=truncate,
                                           cancelled=disconnect_check())
        except TextsTooLong as exc:
            names = ", ".join(f"{field}[{i}]" for i in exc.indices[:10]) + (", ..." if len(exc.indices) > 10 else "")
            raise InvalidRequest(f"{names}: longer than the model's context of {exc.context_length} tokens "
                                 "(send truncate=true to cut them)", param=f"{field}[{exc.indices[0]}]") from None

    def embed_images(self, images: list, *, normalize: bool, deadline: float,
                     all_fail_ok: bool = False) -> tuple[np.ndarray, list[int], list[dict[str, Any]]]:
        """Load, preprocess and embed; returns (vectors of the good images, their indices, per-image errors)."""
        prepared, ok, errors = self.load_images(images, deadline)
        if not ok:
            if all_fail_ok:
                return np.zeros((0, self.engine.info.dim), np.float32), ok, errors
            raise AllImagesFailed(f"none of the {len(images)} images could be used", details=errors)
        return self.encode_images(prepared, normalize=normalize, deadline=deadline), ok, errors

    def load_images(self, images: list, deadline: float) -> tuple[list[Any], list[int], list[dict[str, Any]]]:
        """Fetch, decode and preprocess in request threads: (model inputs of the good images, their indices, errors)."""
        info = self.engine.info  # fail with 503 before fetching anything while the model loads
        with self.engine.preparing():
            loaded = load_images(images, self.image_limits, then=self.engine.prepare_image, timeout_s=_left(deadline),
                                 draft_size=draft_size_for(info.image_size, self.settings.exact_image_decode),
                                 encoded=self.engine.prepare_encoded_image if info.image_decode == "gpu" else None)
        ok = [i for i, item in enumerate(loaded) if not isinstance(item, ImageError)]
        errors = [{"index": i, "code": item.code, "message": item.message}
                  for i, item in enumerate(loaded) if isinstance(item, ImageError)]
        observability.record_items(images=len(images))
        observability.record_image_errors(e["code"] for e in errors)
        return [loaded[i] for i in ok], ok, errors

    def encode_images(self, prepared: list[Any], *, normalize: bool, deadline: float) -> np.ndarray:
        return self.engine.embed_images(prepared, normalize=normalize, timeout=_left(deadline),
                                        cancelled=disconnect_check())

    def model_fields(self) -> dict[str, Any]:
        info = self.engine.info
        return {"model": {"variant": info.variant, "architecture": info.architecture}, "dim": info.dim}

    def deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s


def _left(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Timeout("the request did not finish in time")
    return remaining


def _given_vectors(rows: list[list[float]], dim: int, field: str) -> np.ndarray:
    """Client-supplied embeddings, checked for the model's dimension and usable (finite, non-zero) values."""
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise InvalidRequest(f"{field}[{i}]: has {len(row)} values, the model's dimension is {dim}")
    vectors = np.asarray(rows, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1))
    if bad.size:
        raise InvalidRequest(f"{field}[{bad[0]}]: must be finite and not all zero")
    return vectors
