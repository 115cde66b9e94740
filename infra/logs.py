"""Process-wide logging: one JSON object per line, shaped the way Cloud Logging reads it (or, for a person at a
terminal, one short line: LOG_FORMAT).

Why JSON lines on stdout everywhere: Cloud Run and Lambda both ship stdout to their log stores,
and Cloud Logging turns a JSON line into a structured entry (``severity``, trace correlation,
``jsonPayload`` fields) with no API call from the request path. On Cloud Run (``K_SERVICE`` set)
google-cloud-logging's ``StructuredLogHandler`` writes the lines; elsewhere ``JsonFormatter``
writes the same keys, so a log query works the same on every platform.

Callers put structured fields in ``extra={"json_fields": {...}}`` and, for request lines,
``extra={"trace": "projects/P/traces/T", "span_id": ..., "trace_sampled": ...}``: the
names google-cloud-logging uses, so both handlers understand them.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from dataclasses import dataclass
from typing import IO, Any, Callable, Mapping

TRACE_KEY = "logging.googleapis.com/trace"
SPAN_KEY = "logging.googleapis.com/spanId"
SAMPLED_KEY = "logging.googleapis.com/trace_sampled"

# Loggers that print a line per request or per connection themselves; ours already does that.
_QUIET_LOGGERS = ("werkzeug", "urllib3", "PIL")

_TRACEPARENT = re.compile(r"^\s*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\s*$")
_XCLOUD = re.compile(r"^\s*([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=(\d))?")


@dataclass(frozen=True)
class TraceContext:
    """A trace id (32 hex digits), optionally a span id and the sampled flag, from request headers."""

    trace_id: str
    span_id: str | None = None
    sampled: bool = False

    def resource_name(self, project: str | None) -> str | None:
        """``projects/<project>/traces/<trace id>``: the form Cloud Logging links to Cloud Trace; None without a project."""
        return f"projects/{project}/traces/{self.trace_id}" if project else None


def parse_trace_headers(headers: Mapping[str, str]) -> TraceContext | None:
    """Trace context from W3C ``traceparent`` (preferred) or ``X-Cloud-Trace-Context``; None if neither is valid.

    Malformed or all-zero ids are ignored rather than trusted: a client controls these headers.
    """
    traceparent = headers.get("traceparent")
    if traceparent:
        m = _TRACEPARENT.match(traceparent)
        if m and m.group(1) != "ff" and set(m.group(2)) != {"0"} and set(m.group(3)) != {"0"}:
            return TraceContext(trace_id=m.group(2), span_id=m.group(3), sampled=bool(int(m.group(4), 16) & 1))
    cloud = headers.get("X-Cloud-Trace-Context")
    if cloud:
        m = _XCLOUD.match(cloud)
        if m and set(m.group(1)) != {"0"}:
            # Cloud Logging expects the span id as 16 hex digits; X-Cloud-Trace-Context carries it in decimal.
            span = f"{int(m.group(2)):016x}" if m.group(2) and int(m.group(2)) < 2**64 else None
            return TraceContext(trace_id=m.group(1).lower(), span_id=span, sampled=m.group(3) == "1")
    return None


# Callables returning extra record attributes (``json_fields``, ``trace``, ...) for the current context,
# e.g. the request id of the request being served; see ``add_context_provider``.
ContextProvider = Callable[[], "Mapping[str, Any] | None"]
_context_providers: list[ContextProvider] = []


def add_context_provider(provider: ContextProvider) -> None:
    """Register ``provider`` once; every record logged later gets what it returns (without overriding the record)."""
    if provider not in _context_providers:
        _context_providers.append(provider)


class ContextFilter(logging.Filter):
    """Adds the current context (request id, trace) to every record, so any line can be tied to its request."""

    def filter(self, record: logging.LogRecord) -> bool:
        for provider in _context_providers:
            try:
                context = provider()
            except Exception:  # noqa: BLE001 - logging must never fail because of context lookup
                continue
            for key, value in (context or {}).items():
                if key == "json_fields":
                    record.json_fields = {**value, **(getattr(record, "json_fields", None) or {})}
                elif not hasattr(record, key):
                    setattr(record, key, value)
        return True


class OwnTraceOnlyFilter(logging.Filter):
    """Keeps google-cloud-logging's ``CloudLoggingFilter`` from guessing a trace from the Flask request headers.

    It reads ``trace`` / ``span_id`` / ``trace_sampled`` from the record if they are there, and
    otherwise parses the headers itself: without a project it would write the bare trace id into
    ``logging.googleapis.com/trace`` (not the ``projects/P/traces/T`` Cloud Logging links), and
    with one it would trust a malformed header. Runs after ``ContextFilter`` and before
    ``CloudLoggingFilter``: a record that got no trace from our context gets an explicit None.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "trace", None):
            record.trace, record.span_id, record.trace_sampled = None, None, False  # type: ignore[attr-defined]
        return True


class StalledClientFilter(logging.Filter):
    """Turns gunicorn's ERROR + traceback for a client that stalled past CLIENT_TIMEOUT_S into one WARNING line.

    The timeout surfaces as EAGAIN from a blocking read or write (see ``when_ready`` in gunicorn.conf.py):
    a client's doing, not a server fault, so it must not page anyone as an error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and isinstance(exc, (BlockingIOError, TimeoutError)):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "client stalled past CLIENT_TIMEOUT_S; connection closed", ()
            record.exc_info, record.exc_text = None, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record with the keys Cloud Logging's structured format defines.

    ``severity``, ``message``, ``time``, ``logger``, the trace keys when the record carries them,
    and every ``json_fields`` entry at the top level (as StructuredLogHandler does).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "logger": record.name,
        }
        http_request = getattr(record, "http_request", None)
        if http_request:
            entry["httpRequest"] = http_request
        trace = getattr(record, "trace", None)
        if trace:
            entry[TRACE_KEY] = trace
            if getattr(record, "span_id", None):
                entry[SPAN_KEY] = record.span_id  # type: ignore[attr-defined]
            entry[SAMPLED_KEY] = bool(getattr(record, "trace_sampled", False))
        fields = getattr(record, "json_fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """One short line per record, for a terminal: `12:04:05 POST /embed/text 200 14 ms` for a request (with its
    error code and model when it has them), `12:04:05 warning message` otherwise. What JSON lines carry for
    machines (ids, traces, sizes) stays out; tracebacks stay in."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = getattr(record, "json_fields", None)
        if isinstance(fields, Mapping) and "route" in fields and "status" in fields:
            line = f"{when} {fields.get('method', '')} {fields['route']} {fields['status']} " \
                   f"{float(fields.get('latency_ms', 0)):.0f} ms"
            line += f" {fields['error_code']}" if fields.get("error_code") else ""
            line += f" model={fields['model']}" if fields.get("model") else ""
        else:
            level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()} "
            line = f"{when} {level}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record is emitted (Lambda's runtime and test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def make_handler(*, cloud_run: bool, project: str | None, stream: IO[str] | None = None,
                 text: bool = False) -> logging.Handler:
    """StructuredLogHandler on Cloud Run, else a stream handler with JsonFormatter; both write JSON lines. ``text``:
    short lines for a terminal instead (TextFormatter)."""
    if cloud_run and not text:
        from google.cloud.logging_v2.handlers import StructuredLogHandler  # imported only where it is used

        handler: logging.Handler = StructuredLogHandler(stream=stream or sys.stdout, project_id=project)
        # Ours first: the handler's own CloudLoggingFilter (added in its __init__) reads what they set.
        handler.filters[0:0] = [ContextFilter(), OwnTraceOnlyFilter()]
    else:
        handler = logging.StreamHandler(stream) if stream is not None else _StdoutHandler()
        handler.setFormatter(TextFormatter() if text else JsonFormatter())
        handler.addFilter(ContextFilter())
    return handler


def configure_logging(settings: Any, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record of the process, as JSON lines, to stdout (or ``stream``). Idempotent.

    Replaces the root logger's handlers; gunicorn's own loggers are routed here too
    (see ``gunicorn_logconfig``) so the whole output of a container is machine-readable.
    """
    handler = make_handler(cloud_run=bool(settings.k_service), project=settings.google_cloud_project, stream=stream,
                           text=settings.log_as_text)
    handler._clipserve = True  # type: ignore[attr-defined] - lets a second call find and replace it
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_clipserve", False) or _is_default_handler(h)
                or _is_lambda_runtime_handler(h)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # Libraries' Python warnings (deprecations and the like) become log records: JSON lines where machines read
    # them; at a terminal only with LOG_LEVEL=DEBUG, since none asks the person running it to act.
    logging.captureWarnings(True)
    quiet = settings.log_as_text and root.level > logging.DEBUG
    logging.getLogger("py.warnings").setLevel(logging.ERROR if quiet else logging.NOTSET)
    return handler


def gunicorn_logconfig(settings: Any) -> dict[str, Any]:
    """A ``logconfig_dict`` for gunicorn.conf.py: gunicorn's own lines (boot, signals, worker exits) as JSON on stdout.

    The access log is off because the app logs one richer line per request itself. The root
    logger is left to ``configure_logging``, which the app runs in the worker. At a terminal (LOG_FORMAT text)
    gunicorn's boot chatter is left out (warnings and errors stay): the service says itself when it is ready.
    """
    text = settings.log_as_text
    level = "WARNING" if text and settings.log_level in ("DEBUG", "INFO") else settings.log_level
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "infra.logs.TextFormatter" if text else "infra.logs.JsonFormatter"}},
        "filters": {"context": {"()": "infra.logs.ContextFilter"},
                    "stalled_client": {"()": "infra.logs.StalledClientFilter"}},
        "handlers": {"json_stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                                     "formatter": "json", "filters": ["context", "stalled_client"]}},
        "root": {"level": settings.log_level, "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json_stdout"], "propagate": False},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }


def _is_lambda_runtime_handler(handler: logging.Handler) -> bool:
    # awslambdaric's root handler prints "[LEVEL] time request-id message" text: ours replaces it (JSON on stdout).
    return type(handler).__module__.startswith("awslambdaric")


def _is_default_handler(handler: logging.Handler) -> bool:
    # logging.basicConfig's stderr handler (e.g. from a library that called it): replaced, not doubled.
    return type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout) \
        and not isinstance(handler.formatter, JsonFormatter) and handler.formatter is not None \
        and handler.formatter._fmt == logging.BASIC_FORMAT
