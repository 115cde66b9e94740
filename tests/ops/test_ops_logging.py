"""Structured logs: trace parsing, the JSON line of a request, request ids, no user content in logs."""

from __future__ import annotations

import re

import pytest

from infra.logs import SPAN_KEY, TRACE_KEY, gunicorn_logconfig, parse_trace_headers
from infra.settings import Settings
from ops_support import TRACE_ID, capture, minimal_app

SECRET_TEXT = "my private diary entry 8c1d"


@pytest.fixture(params=["local", "cloud_run"])
def logged(request):
    """(settings, log capture): the stdout JSON formatter, and google-cloud-logging's StructuredLogHandler."""
    settings = Settings(google_cloud_project="my-project", log_level="DEBUG",
                        k_service="clipserve" if request.param == "cloud_run" else None)
    yield from ((settings, cap) for cap in capture(settings))


# --- trace headers ---------------------------------------------------------------------------------------

def test_traceparent_gives_trace_span_and_sampled_flag():
    ctx = parse_trace_headers({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (TRACE_ID, "00f067aa0ba902b7", True)
    assert ctx.resource_name("proj-1") == f"projects/proj-1/traces/{TRACE_ID}"
    assert ctx.resource_name(None) is None


def test_x_cloud_trace_context_span_is_converted_to_16_hex_digits():
    ctx = parse_trace_headers({"X-Cloud-Trace-Context": f"{TRACE_ID.upper()}/255;o=1"})
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (TRACE_ID, "00000000000000ff", True)
    ctx = parse_trace_headers({"X-Cloud-Trace-Context": TRACE_ID})
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (TRACE_ID, None, False)


@pytest.mark.parametrize("headers", [
    {},
    {"traceparent": "garbage"},
    {"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"},          # all-zero trace id is invalid
    {"traceparent": f"ff-{TRACE_ID}-00f067aa0ba902b7-01"},          # version ff is invalid
    {"X-Cloud-Trace-Context": "not-hex/1;o=1"},
    {"X-Cloud-Trace-Context": "0" * 32},
])
def test_invalid_trace_headers_are_ignored(headers):
    assert parse_trace_headers(headers) is None


def test_invalid_traceparent_falls_back_to_x_cloud_trace_context():
    ctx = parse_trace_headers({"traceparent": "bad", "X-Cloud-Trace-Context": f"{TRACE_ID}/1"})
    assert ctx.trace_id == TRACE_ID


# --- the request line ------------------------------------------------------------------------------------

def test_request_line_has_fields_and_trace_name_cloud_logging_expects(logged):
    settings, cap = logged
    client = minimal_app(settings).test_client()
    r = client.post("/embed/text", json={"texts": [SECRET_TEXT, "b", "c"]},
                    headers={"X-Cloud-Trace-Context": f"{TRACE_ID}/1;o=1"})
    assert r.status_code == 200
    [line] = cap.request_lines()
    assert line["severity"] == "INFO"
    assert line[TRACE_KEY] == f"projects/my-project/traces/{TRACE_ID}"
    assert re.fullmatch(r"projects/[^/]+/traces/[0-9a-f]{32}", line[TRACE_KEY])
    assert line[SPAN_KEY] == "0000000000000001"
    assert line["logging.googleapis.com/trace_sampled"] is True
    assert line["route"] == "/embed/text" and line["method"] == "POST" and line["status"] == 200
    assert line["texts"] == 3
    assert line["batch_size"] == 3 and line["queue_wait_ms"] == pytest.approx(4.0)
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    assert line["request_id"] == r.headers["X-Request-ID"]
    assert line["httpRequest"]["status"] == 200 and line["httpRequest"]["requestMethod"] == "POST"
    assert line["message"].startswith("POST /embed/text 200")


def test_text_contents_never_reach_the_log(logged):
    settings, cap = logged
    minimal_app(settings).test_client().post("/embed/text", json={"texts": [SECRET_TEXT]})
    output = cap.buffer.getvalue()
    assert "/embed/text" in output  # the line was written...
    assert SECRET_TEXT not in output  # ...without the text


def test_lines_logged_inside_a_request_carry_its_request_id_and_trace(logged):
    settings, cap = logged
    minimal_app(settings).test_client().post("/embed/text", json={"texts": ["a"]},
                                             headers={"X-Request-ID": "abc-123", "traceparent":
                                                      f"00-{TRACE_ID}-00f067aa0ba902b7-00"})
    [inner] = [e for e in cap.lines() if e["message"] == "encoding inside the view"]
    assert inner["request_id"] == "abc-123"
    assert inner[TRACE_KEY] == f"projects/my-project/traces/{TRACE_ID}"


def test_error_line_carries_error_code_and_per_image_codes(logged):
    settings, cap = logged
    r = minimal_app(settings).test_client().post("/embed/image", json={"images": ["x", "y", "z"]})
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "all_images_failed"
    [line] = cap.request_lines()
    assert line["status"] == 422 and line["error_code"] == "all_images_failed"
    assert line["images"] == 3
    assert line["image_errors"] == {"fetch_timeout": 1, "invalid_image": 2}


def test_unknown_route_is_logged_as_unmatched_not_by_its_path(logged):
    settings, cap = logged
    r = minimal_app(settings).test_client().get("/no/such/thing/12345")
    assert r.status_code == 404
    [line] = cap.request_lines()
    assert line["route"] == "unmatched" and line["error_code"] == "not_found"


def test_successful_health_probes_log_at_debug_only(logged):
    settings, cap = logged
    minimal_app(settings).test_client().get("/health")
    [line] = cap.request_lines()
    assert line["severity"] == "DEBUG"


def test_without_a_project_the_trace_id_is_kept_as_a_plain_field():
    settings = Settings(google_cloud_project=None)
    for cap in capture(settings):
        minimal_app(settings).test_client().post("/embed/text", json={"texts": ["a"]},
                                                 headers={"X-Cloud-Trace-Context": f"{TRACE_ID}/1"})
        [line] = cap.request_lines()
        assert TRACE_KEY not in line and line["trace_id"] == TRACE_ID


@pytest.mark.parametrize("header", [{"X-Cloud-Trace-Context": f"{TRACE_ID}/1;o=1"},
                                    {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}])
def test_on_cloud_run_without_a_project_no_bare_trace_id_is_written_as_the_trace(header):
    # Cloud Run sets K_SERVICE but not GOOGLE_CLOUD_PROJECT. google-cloud-logging's handler would parse the
    # header itself and write the bare id into logging.googleapis.com/trace, which Cloud Logging cannot link.
    settings = Settings(google_cloud_project=None, k_service="clipserve", log_level="DEBUG")
    for cap in capture(settings):
        r = minimal_app(settings).test_client().post("/embed/text", json={"texts": ["a"]}, headers=header)
        assert r.status_code == 200
        [line] = cap.request_lines()
        [inner] = [e for e in cap.lines() if e.get("message") == "encoding inside the view"]
        for entry in (line, inner):
            assert entry.get(TRACE_KEY, "") == "", entry   # absent or empty: never a bare id
            assert entry.get(SPAN_KEY, "") == "", entry
            assert TRACE_ID not in str(entry.get(TRACE_KEY)), entry
        assert line["trace_id"] == TRACE_ID and inner["request_id"] == line["request_id"]


def test_on_cloud_run_a_malformed_trace_header_is_not_turned_into_a_trace_name():
    settings = Settings(google_cloud_project="my-project", k_service="clipserve", log_level="DEBUG")
    for cap in capture(settings):
        minimal_app(settings).test_client().post("/embed/text", json={"texts": ["a"]},
                                                 headers={"X-Cloud-Trace-Context": "garbage/1;o=1"})
        entries = [e for e in cap.lines() if e.get("message") == "encoding inside the view"] + cap.request_lines()
        assert len(entries) == 2
        for entry in entries:
            assert entry.get(TRACE_KEY, "") == "", entry
            assert "trace_id" not in entry


# --- request ids -----------------------------------------------------------------------------------------

def test_request_id_is_generated_when_absent_and_echoed():
    client = minimal_app(Settings()).test_client()
    a = client.get("/health").headers["X-Request-ID"]
    b = client.get("/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", a) and a != b


def test_a_plain_client_request_id_is_echoed():
    r = minimal_app(Settings()).test_client().get("/health", headers={"X-Request-ID": "req-42.retry:1"})
    assert r.headers["X-Request-ID"] == "req-42.retry:1"


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "quote\"inject", "{\"severity\":\"ERROR\"}"])
def test_unsafe_client_request_ids_are_replaced(bad):
    r = minimal_app(Settings()).test_client().get("/health", headers={"X-Request-ID": bad})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])


# --- gunicorn --------------------------------------------------------------------------------------------

def test_gunicorn_logconfig_is_accepted_by_dictconfig_and_writes_json():
    import io
    import json
    import logging
    import logging.config

    config = gunicorn_logconfig(Settings(log_level="INFO"))
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logging.config.dictConfig(config)
        err = logging.getLogger("gunicorn.error")
        [handler] = err.handlers
        handler.setStream(buffer := io.StringIO())
        err.info("Booting worker with pid: %s", 123)
        logging.getLogger("gunicorn.access").info("should not appear")
        entry = json.loads(buffer.getvalue())
        assert entry["severity"] == "INFO" and entry["message"] == "Booting worker with pid: 123"
        assert "should not appear" not in buffer.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


# --- Lambda ----------------------------------------------------------------------------------------------

def test_on_lambda_the_request_line_is_json_with_the_lambda_request_id():
    from types import SimpleNamespace

    from apig_wsgi import make_lambda_handler

    settings = Settings()
    for cap in capture(settings):
        handler = make_lambda_handler(minimal_app(settings), binary_support=True)
        event = {"version": "2.0", "rawPath": "/embed/text", "rawQueryString": "",
                 "headers": {"content-type": "application/json", "x-request-id": "fn-url-1"},
                 "requestContext": {"http": {"method": "POST", "path": "/embed/text", "protocol": "HTTP/1.1",
                                             "sourceIp": "198.51.100.7"}},
                 "body": '{"texts": ["a", "b"]}', "isBase64Encoded": False}
        result = handler(event, SimpleNamespace(aws_request_id="8f5e-lambda-req"))
        assert result["statusCode"] == 200
        [line] = cap.request_lines()
        assert (line["aws_request_id"], line["request_id"], line["texts"]) == ("8f5e-lambda-req", "fn-url-1", 2)


def test_configure_logging_replaces_the_lambda_runtimes_text_handler():
    import logging

    from awslambdaric.bootstrap import LambdaLoggerHandler

    root = logging.getLogger()
    runtime_handler = LambdaLoggerHandler(log_sink=None)
    root.addHandler(runtime_handler)
    try:
        for cap in capture(Settings()):
            assert runtime_handler not in root.handlers
            logging.getLogger("x").warning("hello")
            assert cap.lines()[-1]["message"] == "hello"
    finally:
        if runtime_handler in root.handlers:
            root.removeHandler(runtime_handler)
