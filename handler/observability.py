"""Request ids, one structured log line per request, and Prometheus metrics.

Why one line per request: an operator reading a failure needs route, status, how many items,
which error codes, how long it took and where the time went (batch size, queue wait) in one
place, tied to the platform's trace. Contents (texts, image bytes, URLs) are never logged: they
may be private, and an image would flood the log store.

Views add facts to the line with ``record_items`` / ``record_image_errors`` / ``annotate``; the engine
reports batch sizes, queue waits and text cache hits through its request observer; the rest is
gathered here. ``/metrics`` exists only when ``METRICS_ENABLED`` is on.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import uuid
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any, Iterable

from flask import Flask, Response, current_app, g, has_request_context, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)

from engine import stages
from infra import tracing
from infra.logs import TraceContext, add_context_provider, parse_trace_headers

log = logging.getLogger("clipserve.request")

REQUEST_ID_HEADER = "X-Request-ID"
# A client's request id is echoed only if it is short and plain; anything else is replaced (log injection).
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:/=+@-]{1,128}$")
# Probe and scrape endpoints: their successful lines go out at DEBUG so they do not drown the log.
_QUIET_ROUTES = frozenset({"/health", "/metrics"})
_EXTENSION = "clipserve.observability"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_RESULT_BUCKETS = (0, 1, 5, 10, 20, 50, 100, 200, 500, 1000)
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class RequestRecord:
    """What the log line of one request will say; lives on ``flask.g`` for the request's duration."""

    request_id: str
    started: float
    trace: TraceContext | None
    fields: dict[str, Any] = field(default_factory=dict)
    image_errors: Tally = field(default_factory=Tally)
    cpu_started: float = 0.0   # the request thread's CPU clock at the start (stage "request")
    batch_size: int = 0        # largest model call that served items of this request
    queue_wait_s: float = 0.0  # longest time one of its items waited for the model


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app, so tests stay independent)."""

    def __init__(self, engine: Any = None, search: Any = None, build: dict[str, str] | None = None,
                 ingest: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes: the dashboards
        self.build_info = Gauge("clipserve_build_info", "1, labelled with what this process serves: compare "
                                "revisions (a canary and the stable one) side by side.", list(build or {}), registry=r)
        if build:
            self.build_info.labels(**build).set(1)
        self.requests = Counter("clipserve_requests_total", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("clipserve_request_duration_seconds", "Request latency by route and status.",
                                 ["route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("clipserve_requests_in_flight", "Requests being served now.", registry=r)
        self.items = Counter("clipserve_items_total", "Texts and images received, by kind.", ["kind"], registry=r)
        self.text_cache = Counter("clipserve_text_cache_lookups_total",
                                  "Distinct texts per request looked up in the embedding cache, by result (hit, miss).",
                                  ["result"], registry=r)
        self.image_errors = Counter("clipserve_image_errors_total",
                                    "Images that failed to load (fetch, decode, limits), by error code.",
                                    ["code"], registry=r)
        self.batch_size = Histogram("clipserve_batch_size", "Items per model call, by kind.", ["kind"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("clipserve_queue_wait_seconds",
                                    "Time the oldest item of a batch waited in the queue, by kind.", ["kind"],
                                    buckets=_WAIT_BUCKETS, registry=r)
        self.search_latency = Histogram("clipserve_search_duration_seconds",
                                        "Time the search backend took per query (embedding excluded), by query kind.",
                                        ["kind"], buckets=_WAIT_BUCKETS, registry=r)
        self.search_results = Histogram("clipserve_search_results", "Results returned per search.",
                                        buckets=_RESULT_BUCKETS, registry=r)
        self.queue_depth = Gauge("clipserve_queue_depth", "Items waiting for the model.", registry=r)
        self.expected_wait = Gauge("clipserve_queue_expected_wait_seconds", "What a request queued now would wait for "
                                "the model, by each kind's measured cost per item (admission compares it with "
                                "QUEUE_MAX_WAIT_S).", registry=r)
        self.gpu_memory = Gauge("clipserve_gpu_memory_bytes", "GPU memory torch holds (0 on the CPU).", registry=r)
        self.gpu_memory.set_function(_gpu_memory)
        self.loop_healthy = Gauge("clipserve_inference_loop_healthy",
                                  "1 while the inference thread runs and no model call is stalled.", registry=r)
        self.model_ready = Gauge("clipserve_model_ready", "1 once the model is loaded and serving (GET /health's "
                                 "model part).", registry=r)
        if search is not None:
            ready = Gauge("clipserve_search_ready", "1 while the search index or Qdrant collection is open; only "
                          "exported when one is configured.", registry=r)
            ready.set_function(lambda: 1.0 if search.state.value == "ready" else 0.0)
        if engine is not None:
            self.model_ready.set_function(lambda: 1.0 if _serving(engine) else 0.0)
            self.queue_depth.set_function(lambda: _loop_health_value(engine, "queue_depth"))
            self.expected_wait.set_function(lambda: _loop_health_value(engine, "expected_wait_s"))
            self.loop_healthy.set_function(lambda: _loop_health_value(engine, "healthy"))
            if hasattr(engine, "cache_stats"):
                r.register(_CacheCollector(engine))
            if hasattr(engine, "describe"):
                r.register(_ModelsCollector(engine))
        r.register(_StageCollector())
        if ingest is not None:
            r.register(_IngestCollector(ingest))

    def observe_batch(self, kind: str, batch_size: int, queue_wait_s: float) -> None:
        """Batch observer for the engine (runs on the inference thread)."""
        self.batch_size.labels(kind).observe(batch_size)
        self.queue_wait.labels(kind).observe(max(0.0, queue_wait_s))

    def render(self) -> Response:
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)


class _CacheCollector:
    """The engine's cache counts (the same numbers /stats shows) and the shared cache's breaker, read at scrape."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        lookups = CounterMetricFamily("clipserve_cache_requests", "Cache lookups by level (l1 in-process, l2 shared), "
                                      "kind (text, image, search) and result (hit, miss).",
                                      labels=["level", "kind", "result"])
        for (level, kind, result), count in sorted(self.engine.cache_stats.snapshot().items()):
            lookups.add_metric([level, kind, result], count)
        yield lookups
        breaker = GaugeMetricFamily("clipserve_cache_breaker_open", "1 while the shared cache (Redis) is skipped "
                                    "after a failure; 0 while it answers or when none is configured.")
        breaker.add_metric([], 1.0 if self.engine.vectors.shared.state == "open" else 0.0)
        yield breaker


class _IngestCollector:
    """Bucket events by result and the lag from upload to searchable (ingest.Ingestor's counts), read at scrape."""

    def __init__(self, ingestor: Any) -> None:
        self.ingestor = ingestor

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        from ingest.ingestor import LAG_BUCKETS

        counts = self.ingestor.snapshot()
        events, received, buckets, lag_sum = sorted(counts.events.items()), counts.received, counts.lag_buckets, \
            counts.lag_sum
        family = CounterMetricFamily("clipserve_ingest_events", "Bucket events by result (upserted, deleted, skipped, "
                                     "failed, dead_lettered) and reason.", labels=["result", "reason"])
        for (result, reason), n in events:
            family.add_metric([result, reason or "none"], n)
        yield family
        yield CounterMetricFamily("clipserve_ingest_events_received", "Bucket events received.", value=received)
        cumulative, running = [], 0
        for bound, n in zip([*map(str, LAG_BUCKETS), "+Inf"], buckets):
            running += n
            cumulative.append((bound, running))
        yield HistogramMetricFamily("clipserve_ingest_lag_seconds", "From the object's creation to searchable.",
                                    buckets=cumulative, sum_value=lag_sum)


class _ModelsCollector:
    """Per served model (engine.models.ModelSet.describe), read at scrape: state, use, loads and memory."""

    def __init__(self, models: Any) -> None:
        self.models = models

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ready = GaugeMetricFamily("clipserve_model_loaded", "1 while the model is in memory (0: loading, unloaded "
                                  "or failed).", labels=["model"])
        requests = CounterMetricFamily("clipserve_model_requests", "Requests that asked for the model.",
                                       labels=["model"])
        items = CounterMetricFamily("clipserve_model_items", "Items the model encoded, by kind.",
                                    labels=["model", "kind"])
        calls = CounterMetricFamily("clipserve_model_calls", "Model calls (batches), by kind.", labels=["model", "kind"])
        queued = GaugeMetricFamily("clipserve_model_queue_depth", "The model's items waiting for it.", labels=["model"])
        loads = CounterMetricFamily("clipserve_model_loads", "Times the model was loaded.", labels=["model"])
        evictions = CounterMetricFamily("clipserve_model_evictions", "Times the model was unloaded to make room.",
                                        labels=["model"])
        load_s = GaugeMetricFamily("clipserve_model_load_seconds", "How long its last load took.", labels=["model"])
        resident = GaugeMetricFamily("clipserve_model_resident_bytes", "Memory its last load added to the process "
                                     "(0 when not loaded).", labels=["model"])
        budgeted = GaugeMetricFamily("clipserve_model_budgeted_bytes", "What it counts against the memory budget.",
                                     labels=["model"])
        for m in self.models.describe():
            name = m["name"]
            ready.add_metric([name], 1.0 if m["state"] == "ready" else 0.0)
            requests.add_metric([name], m["requests"])
            for kind, b in m["batches"].items():
                items.add_metric([name, kind], b["items"])
                calls.add_metric([name, kind], b["calls"])
            queued.add_metric([name], m["queued"])
            loads.add_metric([name], m["loads"])
            evictions.add_metric([name], m["evictions"])
            load_s.add_metric([name], m["load_seconds"] or 0.0)
            resident.add_metric([name], m["resident_bytes"] or 0)
            budgeted.add_metric([name], m["budgeted_bytes"])
        budget = GaugeMetricFamily("clipserve_model_memory_budget_bytes", "What the loaded models may take together "
                                   "(0: no budget).")
        budget.add_metric([], self.models.memory()["budget_bytes"] or 0)
        yield from (ready, requests, items, calls, queued, loads, evictions, load_s, resident, budgeted, budget)


class _StageCollector:
    """CPU seconds per serving stage (engine.stages), read at scrape."""

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("clipserve_stage_cpu_seconds", "CPU seconds of the threads doing each serving "
                                     "stage (request: a request thread's whole time; parse, tokenize, images, "
                                     "serialize: parts of it); the model's CPU is not a stage.", labels=["stage"])
        for stage, seconds in stages.clock.snapshot().items():
            family.add_metric([stage], seconds)
        yield family


def _gpu_memory() -> float:
    from models.device import gpu_memory_bytes  # reads torch only if something already imported it

    return gpu_memory_bytes()


def _serving(engine: Any) -> bool:
    """The service is up: its default model loaded once (a ModelSet may have unloaded it since) and none failed."""
    state = getattr(getattr(engine, "state", None), "value", "")
    return state != "failed" and bool(getattr(engine, "booted", state == "ready"))


def _loop_health_value(engine: Any, name: str) -> float:
    try:
        return float(getattr(engine.loop_health(), name))
    except Exception:  # noqa: BLE001 - a scrape must not fail because the engine is not up yet
        return 0.0


# --- what views call -------------------------------------------------------------------------------


def current_record() -> RequestRecord | None:
    """This request's record, or None outside a request (or before ``init_app``)."""
    return g.get("_clipserve_request") if has_request_context() else None


def request_id() -> str | None:
    record = current_record()
    return record.request_id if record else None


def annotate(**fields: Any) -> None:
    """Add fields (item counts, options) to this request's log line. Never pass user content here."""
    record = current_record()
    if record is not None:
        record.fields.update(fields)


def record_items(*, texts: int = 0, images: int = 0) -> None:
    """How many texts and images the request carried: logged and counted."""
    annotate(**({"texts": texts} if texts else {}), **({"images": images} if images else {}))
    metrics = _metrics()
    if metrics is not None:
        if texts:
            metrics.items.labels("text").inc(texts)
        if images:
            metrics.items.labels("image").inc(images)


def record_image_errors(codes: Iterable[str]) -> None:
    """Per-image failure codes of this request: logged as a count per code and counted in metrics."""
    codes = list(codes)
    record = current_record()
    if record is not None:
        record.image_errors.update(codes)
    metrics = _metrics()
    if metrics is not None:
        for code in codes:
            metrics.image_errors.labels(code).inc()


def record_search(kind: str, seconds: float, results: int, *, filtered: bool) -> None:
    """One search: query kind, backend time and result count (never the query itself)."""
    annotate(search_kind=kind, search_ms=round(seconds * 1000, 2), results=results, filtered=filtered)
    metrics = _metrics()
    if metrics is not None:
        metrics.search_latency.labels(kind).observe(seconds)
        metrics.search_results.observe(results)


def record_batch(batch_size: int, queue_wait_s: float) -> None:
    """A model call served items of this request: its size and how long our items waited for it (maxima are kept)."""
    record = current_record()
    if record is not None:
        record.batch_size = max(record.batch_size, batch_size)
        record.queue_wait_s = max(record.queue_wait_s, queue_wait_s)


def _on_engine_items(kind: str, items: list[tuple[int, float]], cache_hits: int = 0) -> None:
    """The engine's request observer (runs on the request thread): batch sizes, queue waits, text cache hits.

    ``items`` are the distinct inputs that went to the model; for texts, the others came from the cache.
    """
    for batch_size, queue_wait_s in items:
        record_batch(batch_size, queue_wait_s)
    if kind == "text":
        if cache_hits:
            annotate(text_cache_hits=cache_hits)
        metrics = _metrics()
        if metrics is not None:
            metrics.text_cache.labels("hit").inc(cache_hits)
            metrics.text_cache.labels("miss").inc(len(items))


def _metrics() -> Metrics | None:
    state = current_app.extensions.get(_EXTENSION) if has_request_context() else None
    return state.metrics if state else None


# --- wiring ------------------------------------------------------------------------------------------


@dataclass
class Totals:
    """Requests by route and status, and model calls by kind, since start: what GET /stats shows (kept whether or
    not /metrics is on)."""

    started: float = field(default_factory=time.time)
    requests: dict[str, Tally] = field(default_factory=dict)  # route -> Counter of statuses
    batches: dict[str, list[float]] = field(default_factory=dict)  # kind -> [calls, items, max size, wait s]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request(self, route: str, status: int) -> None:
        with self.lock:
            self.requests.setdefault(route, Tally())[str(status)] += 1

    def batch(self, kind: str, size: int, wait_s: float) -> None:
        with self.lock:
            entry = self.batches.setdefault(kind, [0, 0, 0, 0.0])
            entry[0] += 1
            entry[1] += size
            entry[2] = max(entry[2], size)
            entry[3] += max(0.0, wait_s)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        routes = {route: {"requests": sum(c.values()), "errors": sum(n for s, n in c.items() if int(s) >= 400),
                          "statuses": dict(c)} for route, c in sorted(self.requests.items())}
        batches = {kind: {"model_calls": int(n), "items": int(items), "mean_batch_size": round(items / n, 2),
                          "max_batch_size": int(top), "mean_queue_wait_ms": round(1000 * wait / n, 2)}
                   for kind, (n, items, top, wait) in sorted(self.batches.items()) if n}
        return {"uptime_s": round(time.time() - self.started, 1), "routes": routes, "batches": batches}


@dataclass
class _State:
    project: str | None
    metrics: Metrics | None
    totals: Totals = field(default_factory=Totals)


def stats() -> dict[str, Any]:
    """This app's request and batch tallies (for GET /stats)."""
    return current_app.extensions[_EXTENSION].totals.snapshot()


def init_app(app: Flask, settings: Any, engine: Any = None, search: Any = None, ingest: Any = None) -> None:
    """Attach request ids, the per-request log line and (if enabled) metrics to ``app``.

    Register this before any other ``before_request`` hook (auth included), so that a request
    refused early still gets an id and a log line.
    """
    build = {"version": tracing.service_version(), "revision": tracing.revision(),
             "variant": ",".join(settings.served_models),
             "precision": str(settings.precision), "runtime": str(settings.runtime)}
    metrics = Metrics(engine, search, build, ingest) if settings.metrics_enabled else None
    state = _State(project=settings.google_cloud_project, metrics=metrics)
    app.extensions[_EXTENSION] = state
    add_context_provider(_log_context)
    app.before_request(_begin)
    app.after_request(_finish)
    if engine is not None and hasattr(engine, "set_request_observer"):
        engine.set_request_observer(_on_engine_items)
    if engine is not None and hasattr(engine, "set_batch_observer"):
        engine.set_batch_observer(functools.partial(_observe_batch, state))
    if metrics is not None:
        app.add_url_rule("/metrics", "metrics", metrics.render, methods=["GET"])


def _observe_batch(state: _State, kind: str, batch_size: int, queue_wait_s: float) -> None:
    """The engine's batch observer (inference thread): the /stats tally, and the histograms when metrics are on."""
    state.totals.batch(kind, batch_size, queue_wait_s)
    if state.metrics is not None:
        state.metrics.observe_batch(kind, batch_size, queue_wait_s)


def _begin() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    rid = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
    g._clipserve_request = RequestRecord(request_id=rid, started=time.perf_counter(), trace=_trace_of_request(),
                                         cpu_started=time.thread_time())
    state: _State = current_app.extensions[_EXTENSION]
    if state.metrics is not None:
        state.metrics.in_flight.inc()
        g._clipserve_in_flight = True


def _trace_of_request() -> TraceContext | None:
    """The request span's ids when tracing is on (so Cloud Logging and Cloud Trace link both ways), else the
    caller's trace headers."""
    ids = tracing.current_ids()
    if ids is not None:
        return TraceContext(*ids)
    return parse_trace_headers(request.headers)


def _finish(response: Response) -> Response:
    record = current_record()
    if record is None:  # _begin did not run (an earlier before_request hook failed)
        return response
    response.headers[REQUEST_ID_HEADER] = record.request_id
    stages.clock.add("request", time.thread_time() - record.cpu_started)
    try:
        _emit(record, response)
    except Exception:  # noqa: BLE001 - observability must never turn a response into an error
        logging.getLogger(__name__).exception("could not record the request")
    return response


def _emit(record: RequestRecord, response: Response) -> None:
    state: _State = current_app.extensions[_EXTENSION]
    latency = time.perf_counter() - record.started
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    status = response.status_code
    state.totals.request(route, status)
    if state.metrics is not None:
        if g.pop("_clipserve_in_flight", False):
            state.metrics.in_flight.dec()
        state.metrics.requests.labels(route, request.method, str(status)).inc()
        state.metrics.latency.labels(route, str(status)).observe(latency)
    fields: dict[str, Any] = {"request_id": record.request_id, "method": request.method, "route": route,
                              "status": status, "latency_ms": round(latency * 1000, 2)}
    fields.update(record.fields)
    if status >= 400:
        code = _error_code(response)
        if code:
            fields["error_code"] = code
    if record.image_errors:
        fields["image_errors"] = dict(record.image_errors)
    if record.trace is not None:
        fields["trace_id"] = record.trace.trace_id
    lambda_context = request.environ.get("apig_wsgi.context")  # set by the Lambda adapter
    if getattr(lambda_context, "aws_request_id", None):
        fields["aws_request_id"] = lambda_context.aws_request_id
    if record.batch_size:
        fields["batch_size"] = record.batch_size
        fields["queue_wait_ms"] = round(record.queue_wait_s * 1000, 2)
    # A rule with a variable (/items/<path:item_id>/thumbnail) is logged as the rule: ids stay out of logs.
    url = route if "<" in route else request.path
    http_request = {"requestMethod": request.method, "requestUrl": url, "status": status,
                    "latency": f"{latency:.6f}s", "protocol": request.environ.get("SERVER_PROTOCOL", ""),
                    "requestSize": str(request.content_length or 0),
                    "responseSize": str(response.calculate_content_length() or 0)}
    extra: dict[str, Any] = {"json_fields": fields, "http_request": http_request}
    extra.update(_trace_extra(record.trace, state.project))
    level = _level(route, status)
    log.log(level, "%s %s %d %.1f ms", request.method, route, status, latency * 1000, extra=extra)


def _level(route: str, status: int) -> int:
    """DEBUG for successful probes and scrapes, INFO for a probe told 503 (loading), WARNING for other 5xx."""
    if route in _QUIET_ROUTES:
        return logging.DEBUG if status < 400 else logging.INFO
    return logging.WARNING if status >= 500 else logging.INFO


def _trace_extra(trace: TraceContext | None, project: str | None) -> dict[str, Any]:
    """Record attributes both log handlers read: ``trace`` (full resource name), ``span_id``, ``trace_sampled``."""
    if trace is None:
        return {}
    name = trace.resource_name(project)
    if name is None:  # no project known: Cloud Logging could not link it; the plain trace_id field still helps
        return {}
    return {"trace": name, "span_id": trace.span_id, "trace_sampled": trace.sampled}


def _error_code(response: Response) -> str | None:
    """The ``error.code`` of a JSON error response (our one error shape), if it is one."""
    if not response.is_json or response.direct_passthrough:
        return None
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _log_context() -> dict[str, Any] | None:
    """Context for every other line logged while serving a request: its id and trace."""
    record = current_record()
    if record is None:
        return None
    context: dict[str, Any] = {"json_fields": {"request_id": record.request_id}}
    state = current_app.extensions.get(_EXTENSION)
    if state is not None:
        context.update(_trace_extra(record.trace, state.project))
    return context
