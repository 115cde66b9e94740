"""The Flask app factory: the service object, the protocols' routes over it, and the cross-cutting hooks.

``create_app`` opens no threads: the model load and the inference thread start on the first
request or from gunicorn's worker hook (after fork), via ``ClipService.start()``. ``/health`` answers
503 "loading" until the model is ready, so the port can open at once.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from flask import Flask

from engine import EmbeddingEngine
from engine.models import ModelSet
from handler import auth, cors, observability, ratelimit, traces
from handler.errors import ErrorShapes, register_error_handlers
from handler.ingest import build_ingestor
from handler.jsonio import OrjsonProvider
from handler.oidc import PushTokenVerifier
from handler.openapi import RouteDoc
from handler.protocols.common import Protocol
from handler.protocols.ingest import IngestApi
from handler.protocols.native import NativeApi
from handler.protocols.openai import OpenAIApi
from handler.protocols.page import PageApi
from handler.protocols.search import SearchApi
from handler.protocols.weaviate import WeaviateApi
from handler.service import ClipService
from infra.redis_cache import RedisCache
from infra.settings import Settings
from search.configure import search_service
from search.service import SearchService

EXTENSION = "clipserve"
log = logging.getLogger("clipserve")


def load_bundle_encoder(settings: Settings, variant: str | None = None) -> Any:
    """The production loader: the baked bundle ``MODEL_DIR/<variant>`` (default: the default model); imported here
    so handler/ stays torch-free."""
    from models.loader import load_encoder

    return load_encoder(variant or settings.default_model, settings.model_dir, threads=settings.torch_threads,
                        precision=settings.precision, runtime=settings.runtime, device=settings.device,
                        image_decode=settings.image_decode)


def model_set(settings: Settings, shared: Any = None) -> ModelSet:
    """The served models on one inference thread, sized from their bundles for the memory budget."""
    from models.bundle import BundleError
    from models.loader import memory_needed

    sizes = {}
    for name in settings.served_models:
        try:
            sizes[name] = memory_needed(name, settings.model_dir, precision=settings.precision,
                                        runtime=settings.runtime, device=settings.device)
        except BundleError:
            sizes[name] = 0  # its load fails and /health says why (infra.preflight stops a container before this)
    return ModelSet.from_settings(settings, lambda name: functools.partial(load_bundle_encoder, settings, name),
                                  sizes, shared)


def say_where_to_go(settings: Settings) -> None:
    """The one line a person starting the service locally needs: where the playground, the docs and the API are."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"http://{host}:{settings.port}" if settings.log_as_text else ""
    pages = ([f"playground {base}/ui"] if settings.ui_enabled else []) + [f"API docs {base}/docs", f"API {base}/"]
    log.info("ready: %s", ", ".join(pages))


def create_app(settings: Settings | None = None, engine: ModelSet | EmbeddingEngine | None = None,
               search: SearchService | None = None) -> Flask:
    """Build the app. Tests pass ``settings`` and an engine around a tiny (or failing) encoder (it serves the default
    model alone), or a ModelSet, or a search service. Raises IndexUnusable when the configured index cannot be served
    with a served model, ModelTooLarge when a model cannot fit the memory budget even alone."""
    settings = settings or Settings.from_env()
    from models.device import require_requested_gpu

    require_requested_gpu(settings.device, settings.image_decode)  # asked for a GPU, none: stop the boot now
    if engine is None:
        shared = RedisCache.from_settings(settings) if settings.redis_url is not None else None
        engine = model_set(settings, shared)
    if search is None and any(v is not None for v in (settings.index_dir, settings.qdrant_url, settings.qdrant_path)):
        from models.bundle import served_identities  # the bundles' manifests only: no torch

        search = search_service(settings, served_identities(settings.model_dir, settings.served_models))
    service = ClipService(settings, engine, search)
    engine = service.engine
    engine.when_ready(functools.partial(say_where_to_go, settings))
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions[EXTENSION] = service
    docs: list[RouteDoc] = []
    protocols = protocols_for(service, catalogue=lambda: docs)
    shapes = ErrorShapes()
    register_error_handlers(app, shapes)
    traces.init_app(app, settings, engine)  # before the log line's hook: the line carries the request span's ids
    service.ingestor = build_ingestor(settings, service)
    # before any other hook: a request refused by auth still gets an id and a log line
    observability.init_app(app, settings, engine, search, service.ingestor)
    protocols += push_protocols(service, settings)
    open_paths = frozenset().union(*(p.open_paths() for p in protocols))
    cors.init_app(app, settings)
    auth.init_app(app, settings, exempt=open_paths)
    ratelimit.init_app(app, settings, keyed=bool(auth.load_api_keys(settings)), exempt=open_paths | {"/metrics"})
    app.before_request(service.start)
    for protocol in protocols:
        docs.extend(register(app, protocol, shapes))
    return app


def protocols_for(service: ClipService, catalogue: Any) -> list[Protocol]:
    """The protocols the service speaks, in the order their routes are listed (GET /, /openapi.json)."""
    return [NativeApi(service, catalogue), SearchApi(service), OpenAIApi(service), WeaviateApi(service),
            PageApi(service)]


def push_protocols(service: ClipService, settings: Settings) -> list[Protocol]:
    """The push route for Cloud Storage events (Pub/Sub, Eventarc), when INGEST_BUCKETS has a gs:// bucket;
    S3's events reach Lambda as SQS batches, outside HTTP (infra.lambda_handler)."""
    if service.ingestor is None or not settings.ingests_gcs:
        return []
    verifier = PushTokenVerifier(settings.ingest_push_audience or "", settings.ingest_push_service_account or "",
                                 settings.ingest_oidc_certs_url)
    return [IngestApi(service, service.ingestor, verifier)]


def register(app: Flask, protocol: Protocol, shapes: ErrorShapes) -> list[RouteDoc]:
    """Add a protocol's routes to ``app`` with its error shape; returns their docs."""
    routes = protocol.routes()
    for route in routes:
        endpoint = f"{protocol.name}.{route.view.__name__}"
        app.add_url_rule(route.doc.path, endpoint, route.view, methods=[route.doc.method])
        shapes.by_endpoint[endpoint] = protocol.error_shape
    if protocol.error_prefix is not None:
        shapes.by_prefix[protocol.error_prefix] = protocol.error_shape
    return [route.doc for route in routes]
