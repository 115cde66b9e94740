"""Traces through the production server: gunicorn with OTEL_ENABLED exporting OTLP/HTTP to a receiver in the
test (a small HTTP server decoding the protobuf, as a collector would). Spans come from the worker and are
flushed on SIGTERM; a collector that black-holes or is down never fails a request, slows it, grows memory or
holds up the shutdown."""

from __future__ import annotations

import http.server
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from servers import GunicornServer, free_port

pytestmark = pytest.mark.timeout(300)


class Receiver(http.server.ThreadingHTTPServer):
    """POST /v1/traces: decodes each ExportTraceServiceRequest and keeps (resource attributes, span) pairs."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[dict, object]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.server.spans.extend((resource, span) for span in scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def _value(v) -> object:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def traced_server(tiny_model_dir, tmp_path, endpoint: str, **env: str) -> GunicornServer:
    server = GunicornServer(tiny_model_dir, tmp_path / "gunicorn.log", OTEL_ENABLED="true",
                            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="2", **env)
    server.wait_healthy()
    return server


def stop_timed(server: GunicornServer) -> float:
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(30)
    return time.monotonic() - started


def test_spans_come_from_the_worker_and_are_flushed_on_sigterm(tiny_model_dir, tmp_path):
    receiver = Receiver()
    # A schedule delay longer than the test: whatever arrives was sent by the SIGTERM flush.
    server = traced_server(tiny_model_dir, tmp_path, receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="600000")
    try:
        worker = server.worker_pid()
        for i in range(3):
            response = requests.post(f"{server.url}/embed/text", json={"texts": [f"text {i}"]}, timeout=30)
            assert response.status_code == 200 and len(response.headers["X-Trace-Id"]) == 32
        time.sleep(0.5)
        assert receiver.spans == []
        assert stop_timed(server) < 10  # Cloud Run's SIGTERM-to-SIGKILL budget
        names = [span.name for _, span in receiver.spans]
        assert names.count("POST /embed/text") == 3, names
        assert {"clipserve.parse", "clipserve.tokenize", "clipserve.queue_wait", "clipserve.model"} <= set(names)
        assert {r["process.pid"] for r, _ in receiver.spans} == {worker}
        assert {r["service.name"] for r, _ in receiver.spans} == {"clipserve"}
        assert {r["clipserve.revision"] for r, _ in receiver.spans} == {"local"}
    finally:
        server.stop()
        receiver.shutdown()


@pytest.mark.parametrize("collector", ["black_hole", "down"])
def test_a_collector_that_is_down_or_silent_costs_no_request_and_no_memory(tiny_model_dir, tmp_path, collector):
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    if collector == "black_hole":
        hole.listen(64)  # accepts connections (the kernel does) and never answers
        port = hole.getsockname()[1]
    else:
        port = free_port()  # nothing listens: refused
    server = traced_server(tiny_model_dir, tmp_path, f"http://127.0.0.1:{port}", OTEL_BSP_MAX_QUEUE_SIZE="512",
                           OTEL_BSP_SCHEDULE_DELAY="100")
    try:
        worker = psutil.Process(server.worker_pid())

        def call(i: int) -> tuple[int, float]:
            started = time.perf_counter()
            r = requests.post(f"{server.url}/embed/text", json={"texts": [f"t{i % 50}"]}, timeout=30)
            return r.status_code, time.perf_counter() - started

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, range(200)))  # warm: caches, allocator, the queue filled once
            rss_before = worker.memory_info().rss
            results = list(pool.map(call, range(200, 1200)))
        rss_after = worker.memory_info().rss
        assert {status for status, _ in results} == {200}
        latencies = sorted(seconds for _, seconds in results)
        assert latencies[int(0.99 * len(latencies))] < 1.0  # never the exporter's 2 s timeout
        # ~8 spans a request: measured 0.8-1.4 MB here with the 512-span bound, 10.5 MB with an unbounded queue
        assert rss_after - rss_before < 5 * 2**20, (rss_before, rss_after)
        assert stop_timed(server) < 10
    finally:
        server.stop()
        hole.close()
