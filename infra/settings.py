"""Every environment variable the service reads, parsed once into a frozen, typed object.

A bad value fails at boot with a message naming the variable, instead of surfacing as a
confusing error on the first request (or, worse, being silently kept as a string).
To add a setting: add a field with ``_env(...)``; ``from_env`` parses it by its type.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from models import registry

MiB = 1024 * 1024
# Cloud Run rejects HTTP/1 request bodies over 32 MiB before they reach us.
CLOUD_RUN_BODY_LIMIT = 32 * MiB

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]i?b?|b?)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, **{f"{u}{suffix}": 1024 ** (i + 1) if "i" in suffix else 1000 ** (i + 1)
                             for i, u in enumerate("kmgt") for suffix in ("", "b", "i", "ib")}}


class SettingsError(ValueError):
    """A variable has a value the service cannot run with; the message names the variable."""


def _env(name: str, default: Any, doc: str, *, minimum: float | None = None,
         maximum: float | None = None, choices: tuple[str, ...] | None = None, secret: bool = False,
         shown: str | None = None) -> Any:
    """A dataclass field bound to an env var, with its bounds and a one-line description.

    ``secret`` keeps the value out of ``repr`` (so printing or logging the settings leaks no key).
    ``shown``: how docs/configuration.md shows the default, where the value itself would mislead (None = "auto").
    """
    meta = {"env": name, "doc": doc, "min": minimum, "max": maximum, "choices": choices, "shown": shown}
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Service configuration. Build it with ``Settings.from_env()``; tests may pass fields directly."""

    # model
    model_variant: str = _env("MODEL_VARIANT", "english", "Model variant to serve (a name in models/registry.py); "
                              "one model: MODELS lists several.", choices=tuple(registry.names()))
    models: str | None = _env("MODELS", None,
                              "Comma-separated variants this deployment serves, e.g. english,siglip2-b16; the first "
                              "is the default (a request without `model`). Unset = MODEL_VARIANT alone.")
    model_memory_budget: str | None = _env(
        "MODEL_MEMORY_BUDGET", None,
        "Memory the loaded models may take together: bytes, or with a unit (6GiB, 3500MiB, 2G). Models load at "
        "boot in MODELS order while they fit, the rest on first use; a load that would not fit unloads the least "
        "recently used idle model. Unset = the container's memory limit (cgroup) less 1.5 GiB, at least half of it.",
        shown="limit - 1.5 GiB")
    model_load_wait_s: float = _env("MODEL_LOAD_WAIT_S", 30.0,
                                    "How long a request for a model that is not loaded (loaded on first use, or "
                                    "evicted) waits for it, within its deadline, before 503 model_loading.",
                                    minimum=0, maximum=3600)
    model_dir: Path = _env("MODEL_DIR", Path("/models"), "Folder holding the baked bundles (<MODEL_DIR>/<variant>/).")
    torch_threads: int | None = _env("TORCH_THREADS", None,
                                     "torch intra-op threads; empty = the CPUs the container really has.",
                                     minimum=1, maximum=256, shown="auto")
    precision: str = _env("PRECISION", "auto",
                          "auto = bf16 weights where the CPU computes bf16 natively (AVX512-BF16, AMX, Arm BF16; "
                          "2-3x faster, cosine to fp32 >= 0.999), else fp32; fp32 = exact to the reference models; "
                          "int8 = the bundle's int8 ONNX graphs (opt-in; bake-time cosine to fp32 in GET /); "
                          "fp16 = GPU only (auto there).",
                          choices=("auto", "fp32", "bf16", "int8", "fp16"))
    device: str = _env("DEVICE", "auto",
                       "auto = a CUDA GPU when torch sees one (the CUDA image), else the CPU; cuda = a GPU or the "
                       "boot stops; cpu. On a GPU PRECISION=auto is fp16 and the towers run on torch.",
                       choices=("auto", "cpu", "cuda"))
    runtime: str = _env("RUNTIME", "auto",
                        "auto = torch for bf16, else ONNX Runtime where the bundle has its graphs (fp32 within 1e-5 "
                        "of torch, faster without native bf16, no torch import); torch; onnx.",
                        choices=("auto", "torch", "onnx"))
    # server
    host: str = _env("HOST", "0.0.0.0", "Address gunicorn binds (0.0.0.0 in a container; 127.0.0.1 for local only).")
    port: int = _env("PORT", 8080, "Port gunicorn binds (Cloud Run sets it).", minimum=1, maximum=65535)
    http_threads: int = _env("HTTP_THREADS", 16, "gunicorn request threads (one worker process). Under load a batch "
                             "fills to about half of them (one batch runs while the next forms): 8 capped it at 4 texts.",
                             minimum=1, maximum=256)
    client_timeout_s: float = _env("CLIENT_TIMEOUT_S", 30.0,
                                   "A client connection that sends (headers, body) or reads nothing for this long "
                                   "is dropped, so stalled clients cannot hold every request thread.",
                                   minimum=1, maximum=3600)
    request_timeout_s: float = _env("REQUEST_TIMEOUT_S", 60.0,
                                    "Longest time a request waits for its embeddings before 504.",
                                    minimum=0.1, maximum=3600)
    # request limits
    max_items: int = _env("MAX_ITEMS", 64, "Most texts, and most images, in one request.", minimum=1, maximum=4096)
    max_text_chars: int = _env("MAX_TEXT_CHARS", 1_000_000,
                               "Longest text accepted, in characters: only a guard against abuse, about 400x the "
                               "longest context (512 tokens, ~2,500 characters). Texts longer than the model's "
                               "context are cut to it (truncate=true) after tokenizing a bounded prefix.",
                               minimum=1, maximum=CLOUD_RUN_BODY_LIMIT)
    max_body_bytes: int = _env("MAX_BODY_BYTES", 30 * MiB, "Largest request body (Cloud Run's limit is 32 MiB).",
                               minimum=1024, maximum=CLOUD_RUN_BODY_LIMIT)
    max_image_bytes: int = _env("MAX_IMAGE_BYTES", 16 * MiB, "Largest encoded image (upload, base64 or download).",
                                minimum=1024, maximum=1024 * MiB)
    max_image_pixels: int = _env("MAX_IMAGE_PIXELS", 40_000_000,
                                 "Largest width x height, checked from the header before decoding.",
                                 minimum=1, maximum=1_000_000_000)
    # image URL fetching
    fetch_connect_timeout_s: float = _env("FETCH_CONNECT_TIMEOUT_S", 3.0, "Connect timeout per image URL.",
                                          minimum=0.05, maximum=60)
    fetch_timeout_s: float = _env("FETCH_TIMEOUT_S", 10.0,
                                  "Total time to download one image URL, redirects included.",
                                  minimum=0.05, maximum=600)
    fetch_max_redirects: int = _env("FETCH_MAX_REDIRECTS", 3, "Redirects followed per image URL.",
                                    minimum=0, maximum=20)
    decode_concurrency: int = _env("DECODE_CONCURRENCY", 2,
                                   "Images decoded and preprocessed at once in the whole process (a 40 MP image "
                                   "needs about 300 MB while it is); bounds memory under floods of large images.",
                                   minimum=1, maximum=256)
    fetch_concurrency: int = _env("FETCH_CONCURRENCY", 8, "Image URLs of one request fetched at once.",
                                  minimum=1, maximum=64)
    allow_private_urls: bool = _env("ALLOW_PRIVATE_URLS", False,
                                    "Allow image URLs on private/loopback/link-local addresses (in-VPC use, tests).")
    image_decode: str = _env("IMAGE_DECODE", "auto",
                             "Where JPEGs are decoded and preprocessed: cpu (Pillow, in the decode threads); gpu "
                             "(nvJPEG + tensor ops on the GPU, DEVICE=cuda; other formats stay on the CPU); auto = "
                             "gpu on a GPU whose torchvision decodes JPEGs, else cpu.",
                             choices=("auto", "cpu", "gpu"))
    exact_image_decode: bool = _env("EXACT_IMAGE_DECODE", False,
                                    "Decode JPEGs at full size. Default: decode large JPEGs at a reduced size no "
                                    "smaller than twice the model's input (3-4x cheaper on photos, embedding "
                                    "cosine to the exact path >= 0.99999).")
    # batching engine
    batching: bool = _env("BATCHING", True,
                          "Batch model calls across requests on one inference thread. false = each request runs "
                          "its own model call in its request thread (the naive design, for comparison).")
    batch_max_size: int = _env("BATCH_MAX_SIZE", 32, "Most items the model encodes in one call.",
                               minimum=1, maximum=1024)
    batch_max_wait_ms: float = _env("BATCH_MAX_WAIT_MS", 5.0,
                                    "How long a batch waits for more items before it runs.", minimum=0, maximum=1000)
    queue_size: int = _env("QUEUE_SIZE", 1024, "Most items waiting for the model, a bound on memory: beyond it "
                           "requests get 429. What refuses work under load is QUEUE_MAX_WAIT_S.",
                           minimum=1, maximum=100_000)
    queue_max_wait_s: float | None = _env(
        "QUEUE_MAX_WAIT_S", None,
        "Admission by expected wait: a request is refused (429, Retry-After from the estimate) when the work queued "
        "ahead of it plus its own would keep the model busy longer than this many seconds, by each kind's measured "
        "cost per item in each model. Must be below REQUEST_TIMEOUT_S. Unset = 10, or half REQUEST_TIMEOUT_S when "
        "that is shorter.", minimum=0.1, maximum=3600, shown="min(10, REQUEST_TIMEOUT_S / 2)")
    text_cache_size: int = _env("TEXT_CACHE_SIZE", 4096,
                                "Text embeddings kept in an in-process LRU cache (repeated labels and prompts "
                                "skip the model); 0 disables it.", minimum=0, maximum=10_000_000)
    stall_timeout_s: float = _env("STALL_TIMEOUT_S", 120.0,
                                  "A model call running longer than this makes /health report unhealthy.",
                                  minimum=1, maximum=3600)
    # other protocols: OpenAI's, Weaviate's
    openai_max_inputs: int = _env("OPENAI_MAX_INPUTS", 2048,
                                  "Most texts (or token arrays) in one POST /v1/embeddings: OpenAI's own limit, "
                                  "which LangChain and other clients size their batches by; images there stay at "
                                  "MAX_ITEMS.", minimum=1, maximum=100_000)
    model_aliases: str | None = _env("MODEL_ALIASES", None,
                                     "More names /v1/embeddings accepts as `model`, for clients that cannot change "
                                     "it: comma-separated alias=variant, e.g. text-embedding-3-small=english.")
    cors: str | None = _env("CORS_ORIGINS", None,
                            "Browser origins allowed to call the API from another site: comma-separated exact "
                            "origins (https://app.example.com) or * (then without credentials); empty = no CORS "
                            "headers, browsers on other origins are refused.")
    otel_enabled: bool = _env("OTEL_ENABLED", False,
                              "OpenTelemetry traces: a span per request (continuing traceparent or "
                              "X-Cloud-Trace-Context) with child spans where the time goes; docs/operations.md.")
    otel_exporter: str = _env("OTEL_TRACES_EXPORTER", "otlp",
                              "Where spans go when OTEL_ENABLED: otlp (OTLP over HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, "
                              "default http://localhost:4318), gcp_trace (Cloud Trace), console, none.",
                              choices=("otlp", "gcp_trace", "console", "none"))
    ui_enabled: bool = _env("UI_ENABLED", True,
                            "Serve the playground page at GET /ui (search, zero-shot, embed in a browser). Its "
                            "files need no key; every call it makes does, when API_KEYS is set.")
    weaviate_routes_open: bool = _env("WEAVIATE_ROUTES_OPEN", False,
                                      "Serve Weaviate's inference routes (POST /vectorize, GET /meta) without an API "
                                      "key when API_KEYS is set (Weaviate's CLIP module sends none): only where "
                                      "nothing but Weaviate can reach the service.")
    # shared cache (Redis / Memorystore) and rate limits
    redis_url: str | None = _env("REDIS_URL", None,
                                 "A Redis shared by every instance for text and image embeddings and search results "
                                 "(redis://HOST:6379/0 or rediss:// for TLS; password in the URL or REDIS_PASSWORD); "
                                 "unset = in-process caches only. Optional: a Redis that is down only costs speed.",
                                 secret=True)
    redis_password: str | None = _env("REDIS_PASSWORD", None, "Redis AUTH password (Memorystore's AUTH string).",
                                      secret=True)
    redis_ca_file: Path | None = _env("REDIS_CA_FILE", None,
                                      "PEM file of the CA that signed the Redis server's certificate, for rediss:// "
                                      "(Memorystore's server CA); unset = the system's CAs.")
    redis_timeout_ms: float = _env("REDIS_TIMEOUT_MS", 50.0,
                                   "Connect and reply timeout per Redis call; a call that takes longer is a miss.",
                                   minimum=1, maximum=10_000)
    redis_retry_s: float = _env("REDIS_RETRY_S", 5.0,
                                "After a Redis failure the cache is skipped (requests go to the model) for this "
                                "long, then tried again.", minimum=0.1, maximum=3600)
    cache_ttl_s: int = _env("CACHE_TTL_S", 7 * 24 * 3600,
                            "How long a text or image embedding stays in Redis (Redis' maxmemory policy evicts "
                            "earlier when full).", minimum=1, maximum=365 * 24 * 3600)
    search_cache_ttl_s: int = _env("SEARCH_CACHE_TTL_S", 60,
                                   "How long a /search answer stays in Redis (a write to a Qdrant collection "
                                   "invalidates its answers at once); 0 = search answers are not cached.",
                                   minimum=0, maximum=24 * 3600)
    rate_limit: str | None = _env("RATE_LIMIT", None,
                                  "Requests per client, e.g. 100/minute or 10/second;1000/hour (flask-limiter's "
                                  "syntax), per API key when keys are on, else per client IP; counted in Redis when "
                                  "REDIS_URL is set (shared by every instance), else per instance. Unset = none.")
    # search
    index_dir: Path | None = _env("INDEX_DIR", None,
                                  "Index version folder to serve POST /search from (built by `clipserve-batch "
                                  "index build`); unset = no search.")
    index_load: str = _env("INDEX_LOAD", "mmap",
                           "mmap = map the index file (opens at once; pages load as queries touch them); memory = "
                           "read it in at start (for bucket mounts, where random reads are slow).",
                           choices=("mmap", "memory"))
    index_verify: str = _env("INDEX_VERIFY", "size",
                             "What the start checks of the index files: size (and the manifest), or sha256 of "
                             "every file (about 1 s per GB; `clipserve-batch index verify DIR` does it offline).",
                             choices=("size", "sha256"))
    search_max_top_k: int = _env("SEARCH_MAX_TOP_K", 1000, "Largest top_k a search may ask for.",
                                 minimum=1, maximum=100_000)
    qdrant_url: str | None = _env("QDRANT_URL", None,
                                  "Qdrant server to search in and write to (e.g. https://xyz.cloud.qdrant.io:6333) "
                                  "instead of INDEX_DIR; unset = none.")
    qdrant_api_key: str | None = _env("QDRANT_API_KEY", None, "API key for QDRANT_URL (Qdrant Cloud).", secret=True)
    qdrant_collection: str = _env("QDRANT_COLLECTION", "clipserve", "The Qdrant collection to serve.")
    qdrant_timeout_s: float = _env("QDRANT_TIMEOUT_S", 5.0,
                                   "Longest wait for Qdrant per call before 504 (a refused connection is 503 "
                                   "at once).", minimum=0.1, maximum=300)
    qdrant_path: Path | None = _env("QDRANT_PATH", None,
                                    "A folder for qdrant-client's embedded local mode instead of a server: one "
                                    "process at a time, brute force; for tests, demos and a single instance.")
    # ingest from bucket events (docs/ingest.md)
    ingest_buckets: str | None = _env(
        "INGEST_BUCKETS", None,
        "Buckets whose object events this service indexes into its Qdrant collection: comma-separated gs://NAME "
        "(Pub/Sub push or Eventarc to POST /ingest/gcs) and s3://NAME (S3 -> SQS -> this Lambda function); events "
        "from any other bucket are acknowledged and skipped. Unset = no ingest.")
    ingest_path_keys: str | None = _env(
        "INGEST_PATH_KEYS", None,
        "Metadata keys for an object's leading folders, e.g. shop,category: shop-a/shoes/1.jpg gets shop=shop-a, "
        "category=shoes (beside the object's own metadata, uri, bucket, object and folder).")
    ingest_push_audience: str | None = _env(
        "INGEST_PUSH_AUDIENCE", None,
        "The audience the Pub/Sub push subscription's OIDC token must carry (its push endpoint URL unless set "
        "otherwise); required with a gs:// bucket.")
    ingest_push_service_account: str | None = _env(
        "INGEST_PUSH_SERVICE_ACCOUNT", None,
        "The service account email the push subscription signs its OIDC token as; required with a gs:// bucket.")
    ingest_oidc_certs_url: str = _env(
        "INGEST_OIDC_CERTS_URL", "https://www.googleapis.com/oauth2/v1/certs",
        "Where Google's token-signing certificates are read (cached for their max-age).")
    ingest_dead_letter: str | None = _env(
        "INGEST_DEAD_LETTER", None,
        "Where an event that can never succeed (a corrupt or oversized image, metadata the collection cannot hold) "
        "is forwarded once before it is acknowledged: projects/P/topics/T (Pub/Sub) or an SQS queue URL. Unset = "
        "it is answered as a failure and the subscription's or queue's dead-letter policy moves it after its "
        "maximum attempts.")
    # operations: logs, metrics, API keys
    log_level: str = _env("LOG_LEVEL", "INFO", "Lowest severity logged (on stdout, in LOG_FORMAT).",
                          choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _env("LOG_FORMAT", "auto",
                           "json = Cloud Logging's structured JSON lines (one object per request); text = one "
                           "short line per request (time, method, route, status, latency, error code) for a person "
                           "at a terminal; auto = json on Cloud Run, on Lambda or when stdout is not a terminal, "
                           "else text.", choices=("auto", "json", "text"))
    metrics_enabled: bool = _env("METRICS_ENABLED", False, "Serve Prometheus metrics at GET /metrics.")
    api_keys: str | None = _env("API_KEYS", None,
                                "Comma-separated API keys; when set (or API_KEYS_FILE), every route but /health "
                                "needs 'Authorization: Bearer <key>'.", secret=True)
    api_keys_file: Path | None = _env("API_KEYS_FILE", None,
                                      "File of API keys (one per line or comma-separated, # comments), "
                                      "e.g. a mounted secret.")
    google_cloud_project: str | None = _env("GOOGLE_CLOUD_PROJECT", None,
                                            "GCP project id: turns trace headers into Cloud Logging trace links.")
    k_service: str | None = _env("K_SERVICE", None,
                                 "Set by Cloud Run; selects google-cloud-logging's structured log handler.")
    lambda_function: str | None = _env("AWS_LAMBDA_FUNCTION_NAME", None,
                                       "Set by Lambda; LOG_FORMAT=auto writes JSON lines there.")

    def __post_init__(self) -> None:
        backends = [name for name, value in (("INDEX_DIR", self.index_dir), ("QDRANT_URL", self.qdrant_url),
                                             ("QDRANT_PATH", self.qdrant_path)) if value is not None]
        if len(backends) > 1:
            raise SettingsError(f"{' and '.join(backends)} are both set: choose one search backend "
                                "(INDEX_DIR: a built index folder; QDRANT_URL or QDRANT_PATH: a Qdrant collection)")
        if self.image_decode == "gpu" and self.device == "cpu":
            raise SettingsError("IMAGE_DECODE=gpu decodes on the GPU: it needs DEVICE=cuda or auto, not cpu")
        self.served_models  # noqa: B018 - a malformed MODELS stops the boot
        self.aliases()  # so does a malformed MODEL_ALIASES, or one naming a model not served
        self.memory_budget_bytes  # noqa: B018 - and a malformed MODEL_MEMORY_BUDGET
        _ = self.cors_origins  # so does a malformed CORS_ORIGINS
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://")):
            raise SettingsError("REDIS_URL: must start with redis:// or rediss:// (TLS)")
        if self.rate_limit is not None:
            from limits import parse_many

            try:
                parse_many(self.rate_limit)
            except ValueError:
                raise SettingsError(f"RATE_LIMIT={self.rate_limit!r}: expected e.g. 100/minute or "
                                    "10/second;1000/hour") from None
        if self.queue_max_wait_s is not None and self.queue_max_wait_s >= self.request_timeout_s:
            raise SettingsError(f"QUEUE_MAX_WAIT_S ({self.queue_max_wait_s:g}) must be below REQUEST_TIMEOUT_S "
                                f"({self.request_timeout_s:g}): admitted work must be answered before it times out")
        self.ingest_sources  # noqa: B018 - a malformed INGEST_BUCKETS, or ingest without what it needs
        if self.queue_size < self.max_items:
            raise SettingsError(f"QUEUE_SIZE ({self.queue_size}) must be at least MAX_ITEMS ({self.max_items}): "
                                "a full request must fit in the queue")

    @property
    def ingest_sources(self) -> frozenset[str]:
        """INGEST_BUCKETS as {"gs://name", "s3://name"}, checked against what ingest needs."""
        buckets = frozenset(filter(None, (b.strip().rstrip("/") for b in (self.ingest_buckets or "").split(","))))
        for bucket in buckets:
            scheme, sep, name = bucket.partition("://")
            if not sep or scheme not in ("gs", "s3") or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}", name):
                raise SettingsError(f"INGEST_BUCKETS: {bucket!r} is not gs://BUCKET or s3://BUCKET")
        if not buckets:
            return buckets
        if self.qdrant_url is None and self.qdrant_path is None:
            raise SettingsError("INGEST_BUCKETS: ingest writes to a Qdrant collection: set QDRANT_URL (or QDRANT_PATH)")
        if _has_gcs(buckets) and not (self.ingest_push_audience and self.ingest_push_service_account):
            raise SettingsError("INGEST_BUCKETS has a gs:// bucket: set INGEST_PUSH_AUDIENCE and "
                                "INGEST_PUSH_SERVICE_ACCOUNT (the push subscription's OIDC token is checked "
                                "against them)")
        dead = self.ingest_dead_letter
        if dead and not (re.fullmatch(r"projects/[^/]+/topics/[^/]+", dead) or dead.startswith(("https://",
                                                                                               "http://"))):
            raise SettingsError("INGEST_DEAD_LETTER: expected projects/P/topics/T or an SQS queue URL")
        return buckets

    @property
    def ingests_gcs(self) -> bool:
        """Whether a gs:// bucket is ingested: its events come by push, to POST /ingest/gcs."""
        return _has_gcs(self.ingest_sources)

    @property
    def queue_wait_budget_s(self) -> float:
        """QUEUE_MAX_WAIT_S in force (see its description)."""
        return self.queue_max_wait_s if self.queue_max_wait_s is not None else min(10.0, self.request_timeout_s / 2)

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """CORS_ORIGINS as a tuple of origins, ("*",), or () when unset."""
        origins = tuple(filter(None, (o.strip().rstrip("/") for o in (self.cors or "").split(","))))
        if "*" in origins and len(origins) > 1:
            raise SettingsError("CORS_ORIGINS: * allows every origin; do not list others beside it")
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise SettingsError(f"CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port], no path)")
        return origins

    @property
    def log_as_text(self) -> bool:
        """LOG_FORMAT resolved: text for a person at a terminal, JSON for the platforms and pipes."""
        if self.log_format != "auto":
            return self.log_format == "text"
        import sys

        return self.k_service is None and self.lambda_function is None and sys.stdout.isatty()

    @property
    def served_models(self) -> tuple[str, ...]:
        """The variants served, default first: MODELS, else MODEL_VARIANT alone."""
        if self.models is None:
            return (self.model_variant,)
        names = tuple(filter(None, (n.strip() for n in self.models.split(","))))
        unknown = [n for n in names if n not in registry.names()]
        if not names or unknown:
            raise SettingsError(f"MODELS={self.models!r}: every name must be a variant of "
                                f"{', '.join(registry.names())}" + (f" (not: {', '.join(unknown)})" if unknown else ""))
        if len(set(names)) != len(names):
            raise SettingsError(f"MODELS={self.models!r}: a variant is listed twice")
        return names

    @property
    def default_model(self) -> str:
        """The variant a request without `model` gets (the first of MODELS)."""
        return self.served_models[0]

    def aliases(self) -> dict[str, str]:
        """MODEL_ALIASES as {alias: variant}; every alias names a served variant."""
        out: dict[str, str] = {}
        served = self.served_models
        for pair in filter(None, (p.strip() for p in (self.model_aliases or "").split(","))):
            alias, sep, variant = (part.strip() for part in pair.partition("="))
            if not sep or not alias or variant not in served:
                raise SettingsError(f"MODEL_ALIASES: {pair!r} is not alias=variant with a variant this deployment "
                                    f"serves ({', '.join(served)})")
            if alias in served:
                raise SettingsError(f"MODEL_ALIASES: {alias!r} is a served variant's own name")
            out[alias] = variant
        return out

    @property
    def memory_budget_bytes(self) -> int | None:
        """MODEL_MEMORY_BUDGET in bytes; None = derived from the container's limit (engine.memory)."""
        if self.model_memory_budget is None:
            return None
        match = _SIZE.fullmatch(self.model_memory_budget.replace(" ", ""))
        if match is None:
            raise SettingsError(f"MODEL_MEMORY_BUDGET={self.model_memory_budget!r}: expected bytes or a size such "
                                "as 6GiB, 3500MiB, 2G")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
        if value < MiB:
            raise SettingsError(f"MODEL_MEMORY_BUDGET={self.model_memory_budget!r}: at least 1 MiB")
        return int(value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read every variable from ``environ`` (default ``os.environ``); raise SettingsError on a bad value."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            raw = environ.get(name)
            if raw is None:
                continue
            values[f.name] = _parse(name, raw.strip(), hints[f.name], f.metadata)
        return cls(**values)

    @classmethod
    def documented(cls) -> list[dict[str, Any]]:
        """(env var, default, description) for every setting: the source of docs/configuration.md's table."""
        return [{"env": f.metadata["env"], "default": f.default, "doc": f.metadata["doc"],
                 "shown": f.metadata["shown"] or _show(f.default)} for f in dataclasses.fields(cls)]

    @classmethod
    def markdown_table(cls) -> str:
        """docs/configuration.md's table (``python -m infra.settings`` prints it)."""
        rows = [f"| `{d['env']}` | `{d['shown']}` | {d['doc']} |" for d in cls.documented()]
        return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])


def _has_gcs(buckets: frozenset[str]) -> bool:
    return any(b.startswith("gs://") for b in buckets)


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"{value} ({value // MiB} MiB)"
    return str(value)


def _parse(name: str, raw: str, hint: Any, meta: Mapping[str, Any]) -> Any:
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    if optional:
        if raw == "" or raw.lower() == "auto":
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        value = _convert(raw, hint)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected {_describe(hint)}") from None
    if meta["choices"] and value not in meta["choices"]:
        raise SettingsError(f"{name}={raw!r}: must be one of {', '.join(meta['choices'])}")
    if meta["min"] is not None and value < meta["min"]:
        raise SettingsError(f"{name}={raw!r}: must be at least {meta['min']}")
    if meta["max"] is not None and value > meta["max"]:
        raise SettingsError(f"{name}={raw!r}: must be at most {meta['max']}")
    return value


def _convert(raw: str, hint: Any) -> Any:
    if hint is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(raw)
    if hint is int:
        return int(raw.replace("_", ""))
    if hint is float:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
        return value
    if hint is Path:
        if not raw:
            raise ValueError(raw)
        return Path(raw)
    if hint is str:
        if not raw:
            raise ValueError(raw)
        return raw
    raise TypeError(f"no parser for {hint!r}")


def _describe(hint: Any) -> str:
    return {bool: "a boolean (true/false, 1/0, yes/no, on/off)", int: "an integer", float: "a finite number",
            Path: "a non-empty path", str: "a non-empty string"}.get(hint, str(hint))


if __name__ == "__main__":
    print(Settings.markdown_table())
