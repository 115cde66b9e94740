"""Tracing wired into the app (OTEL_ENABLED): the request span, and the hooks that give the engine's and the
image loader's work spans without either importing OpenTelemetry.

The span tree of a request (docs/operations.md#traces):

    POST /search                        server span (continues traceparent / X-Cloud-Trace-Context): method,
                                        route's rule, status; never the path or query
      clipserve.parse                   read and validate the body
      clipserve.image.fetch             per URL: server.address (the host only)
      clipserve.image.decode            per image, on a decode thread
      clipserve.tokenize                texts to token ids (text cache look-ups included)
      clipserve.cache                   shared-cache look-ups (kind, hits, misses)
      clipserve.queue_wait              enqueue to the start of the model call; links to it
      clipserve.search                  backend, top_k, filtered, results
    (JSON out is not a span: it takes less time than a span costs.)

and the model call, a trace of its own (one call serves many requests, so it belongs to none of them):

    clipserve.model                     kind, batch_size, precision, runtime, device; a link per request
"""

from __future__ import annotations

import functools
import time
from typing import Any

from flask import Flask, Response, g, has_request_context, request

import inputs
from engine import stages
from infra import tracing


def init_app(app: Flask, settings: Any, engine: Any, exporter: Any = None) -> None:
    """Before observability.init_app: its log line reads the span this opens. A no-op unless OTEL_ENABLED."""
    if not tracing.configure(settings, exporter=exporter):
        return
    app.before_request(_start_request_span)
    app.after_request(_finish_request_span)
    app.teardown_request(_end_request_span)
    stages.set_span_factory(tracing.span)
    inputs.set_span_factory(tracing.span)
    if hasattr(engine, "set_batch_tracer"):
        engine.set_batch_tracer((_request_context, functools.partial(_report_batch, engine)))


# The request span. OpenTelemetry's Flask instrumentation was the first choice; measured on cached one-text
# requests it cost 0.17 ms per request even when the trace was not sampled (it collects the request's attributes
# before the sampler decides, then records the path, query, user agent and client address, which would have to
# be scrubbed). This span reads the same propagated context and records the route's rule, method and status.
_QUIET = frozenset({"/health", "/metrics"})


def _start_request_span() -> None:
    if request.path in _QUIET:
        return
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    span, token = tracing.start_server_span(f"{request.method} {rule}", request.headers,
                                            {"http.request.method": request.method, "http.route": rule,
                                             "url.scheme": request.scheme})
    g._clipserve_span = (span, token)
    g._clipserve_trace_context = tracing.current_context()


def _finish_request_span(response: Response) -> Response:
    held = g.get("_clipserve_span")
    if held is not None:
        tracing.server_status(held[0], response.status_code)
        ids = tracing.current_ids()
        if ids is not None:
            response.headers[tracing.TRACE_ID_HEADER] = ids[0]
    return response


def _end_request_span(exc: BaseException | None) -> None:
    held = g.pop("_clipserve_span", None)
    if held is not None:
        tracing.end_server_span(*held, exc)


def _request_context() -> Any:
    """The request span's context, wherever in the request the engine is called from (a queue wait is the
    request's child, not the tokenize span's)."""
    if has_request_context() and "_clipserve_trace_context" in g:
        return g._clipserve_trace_context
    return tracing.current_context()


def _report_batch(engine: Any, kind: str, batch_size: int, items: list[tuple[Any, float]], started: float,
                  ended: float, lane: Any = None) -> None:
    """On the inference thread after a model call: the model span, linked to every request it served, and each
    request's queue wait as a child of that request's span, linked to the model span."""
    to_ns = _monotonic_to_epoch_ns()
    waiting: dict[int, tuple[Any, float]] = {}
    for ctx, enqueued in items:
        link = tracing.link_to(ctx)
        if link is None:
            continue
        key = link.context.span_id
        if key not in waiting or enqueued < waiting[key][1]:
            waiting[key] = (ctx, enqueued)
    links = [tracing.link_to(ctx) for ctx, _ in waiting.values()]
    model = tracing.record_span("clipserve.model", to_ns(started), to_ns(ended), links=links,
                                **_model_attributes(engine, kind, batch_size, len(waiting), lane))
    for ctx, enqueued in waiting.values():
        tracing.record_span("clipserve.queue_wait", to_ns(enqueued), to_ns(started), parent=ctx,
                            links=[tracing.link(model)] if model is not None else None,
                            **{"clipserve.batch_size": batch_size})


def _model_attributes(engine: Any, kind: str, batch_size: int, requests: int, lane: Any = None) -> dict[str, Any]:
    """The model call's facts: the model of the batch (its lane in a ModelSet), else the engine's."""
    info = engine.engine(lane).known_info if lane and hasattr(engine, "engine") else getattr(engine, "info", None)
    facts = info.as_dict() if info is not None and hasattr(info, "as_dict") else {}
    return {"clipserve.kind": kind, "clipserve.batch_size": batch_size, "clipserve.requests": requests,
            "clipserve.precision": facts.get("precision"), "clipserve.runtime": facts.get("runtime"),
            "clipserve.device": facts.get("device"), "clipserve.variant": facts.get("variant")}


def _monotonic_to_epoch_ns() -> Any:
    offset = time.time_ns() - time.monotonic_ns()
    return lambda seconds: int(seconds * 1e9) + offset
