"""OpenTelemetry traces (OTEL_ENABLED): the SDK, its exporter, and the spans the service opens.

Off by default: until ``configure`` runs, ``span`` hands out OpenTelemetry's no-op spans, which cost a
function call. On, the app factory calls ``configure`` (through handler/traces.py) in the gunicorn worker (the
app is imported after fork, ``preload_app = False``), so each worker owns its span processor and export
thread; ``shutdown`` flushes it on SIGTERM within the worker's shutdown budget. This module knows nothing of
Flask: the request span and the engine's hooks are wired in handler/traces.py.

Bounded: the BatchSpanProcessor keeps at most OTEL_BSP_MAX_QUEUE_SIZE spans (2,048) and drops the rest, and
a request thread only appends to that queue: a collector that is down or never answers costs the export
thread its timeout, never a request its latency or the process its memory (measured in bench_tracing.py).

Nothing private goes into a span: attribute values are counts, sizes, codes, hosts and model facts; callers
pass no text, URL path or query, vector or key (tests scan every attribute of every span).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

TRACE_ID_HEADER = "X-Trace-Id"
_SCOPE = "clipserve"

_provider: Any = None  # the SDK's TracerProvider once configured
_tracer: trace.Tracer = trace.NoOpTracer()


def configure(settings: Any, *, exporter: Any = None) -> bool:
    """Set up tracing for this process when ``settings.otel_enabled``; ``exporter`` replaces the configured one
    (tests pass an in-memory exporter). Returns whether tracing is on."""
    global _provider, _tracer
    if not settings.otel_enabled:
        return False
    if _provider is not None:
        return True
    from opentelemetry.propagate import set_global_textmap
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagators = [TraceContextTextMapPropagator()]
    try:  # Cloud Run's X-Cloud-Trace-Context, when only that header comes in
        from opentelemetry.propagators.cloud_trace_propagator import CloudTraceFormatPropagator

        propagators.append(CloudTraceFormatPropagator())
    except ImportError:
        pass
    set_global_textmap(CompositePropagator(propagators))
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "clipserve"),
                                "service.version": service_version(), "clipserve.revision": revision(),
                                "process.pid": os.getpid(),
                                "clipserve.variant": ",".join(settings.served_models)})
    provider = TracerProvider(resource=resource)
    chosen = exporter if exporter is not None else _exporter(settings.otel_exporter)
    if chosen is not None:  # on Lambda, infra/lambda_handler.py flushes after every invocation
        provider.add_span_processor(BatchSpanProcessor(chosen))
    _provider, _tracer = provider, provider.get_tracer(_SCOPE)
    log.info("tracing on: exporter %s", "custom" if exporter is not None else settings.otel_exporter)
    return True


def _exporter(name: str) -> Any:
    if name == "otlp":  # endpoint, headers, timeout from the standard OTEL_EXPORTER_OTLP_* variables
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "gcp_trace":  # Cloud Trace, with the service account's credentials (Cloud Run's metadata server)
        from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

        return CloudTraceSpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    return None


def enabled() -> bool:
    return _provider is not None


def service_version() -> str:
    try:
        return importlib.metadata.version("clipserve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def revision() -> str:
    """Which deployment this process belongs to: the Cloud Run revision, the Lambda version, or "local"."""
    return os.environ.get("K_REVISION") or os.environ.get("AWS_LAMBDA_FUNCTION_VERSION") or "local"


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A child of the current span; nothing at all when tracing is off or the request's trace is not sampled
    (its children would not be recorded either: skipping them is most of what sampling saves).
    Attribute values must be safe to export."""
    current = trace.get_current_span()
    if _provider is None or not current.is_recording():
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(name, attributes=_clean(attributes), record_exception=False) as child:
        try:
            yield child
        except Exception as exc:
            child.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def record_span(name: str, start_ns: int, end_ns: int, *, parent: context.Context | None = None,
                links: list[Link | None] | None = None, **attributes: Any) -> trace.SpanContext | None:
    """A span for a stretch of time already over (queue wait, a model call seen from the inference thread);
    ``parent`` None makes it the root of a trace of its own. Returns its context (to link to it)."""
    if _provider is None:
        return None
    done = _tracer.start_span(name, context=parent if parent is not None else context.Context(),
                              links=[x for x in links or () if x is not None], start_time=start_ns,
                              attributes=_clean(attributes))
    done.end(end_time=end_ns)
    return done.get_span_context()


def link(span_context: trace.SpanContext) -> Link:
    return Link(span_context)


def start_server_span(name: str, headers: Any, attributes: dict[str, Any]) -> tuple[Span, object]:
    """A request's span, continuing the caller's context (traceparent, X-Cloud-Trace-Context), made current;
    ``end_server_span`` ends it and restores the context."""
    parent = propagate.extract(headers)
    started = _tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    token = context.attach(trace.set_span_in_context(started, parent))
    return started, token


def server_status(span: Span, status: int) -> None:
    if span.is_recording():
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))


def end_server_span(span: Span, token: object, exc: BaseException | None = None) -> None:
    if exc is not None and span.is_recording():
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.end()
    context.detach(token)


def current_context() -> context.Context | None:
    """The active context (to parent or link work done on another thread), None when tracing is off."""
    return context.get_current() if _provider is not None else None


def link_to(ctx: context.Context | None) -> Link | None:
    sc = trace.get_current_span(ctx).get_span_context() if ctx is not None else None
    return Link(sc) if sc is not None and sc.is_valid else None


def current_ids() -> tuple[str, str, bool] | None:
    """(trace id, span id, sampled) of the active span, as hex: what the log line and X-Trace-Id carry."""
    if _provider is None:
        return None
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x"), bool(sc.trace_flags.sampled)


def flush(timeout_s: float) -> None:
    """Export what is queued, waiting at most ``timeout_s`` (Lambda: after each invocation)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def shutdown(timeout_s: float) -> None:
    """Flush, then stop the export thread, within ``timeout_s`` whatever the collector does (SIGTERM: inside the
    shutdown budget). An export stuck on a collector that never answers is left behind on a daemon thread."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, trace.NoOpTracer()
    if provider is None:
        return
    deadline = time.monotonic() + timeout_s

    def stop() -> None:
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()

    worker = threading.Thread(target=stop, name="clipserve-trace-shutdown", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        log.warning("tracing: spans not exported within %.1f s of shutdown (collector slow or down); dropped",
                    timeout_s)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
