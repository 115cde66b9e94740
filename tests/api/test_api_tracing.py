"""OpenTelemetry traces (OTEL_ENABLED) with an in-memory exporter: the span tree of a search by image, an image
embedded from a URL and batched texts; a caller's traceparent continued; one model call serving 16 requests
linked to each of them; the log line and X-Trace-Id carry the request span's ids; and no attribute of any span
holds a request's text, URL path or query, vector or key."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app_helpers import Gate, ready, tiny_settings
from engine import EmbeddingEngine
from handler.app import create_app, load_bundle_encoder
from infra import tracing
from search.build import IndexOptions, write_index
from search.items_db import ColumnTypes

SECRET = "SECRET-7f3a"
KEY = f"key-{SECRET}"


@pytest.fixture(scope="module")
def exporter():
    memory = InMemorySpanExporter()
    tracing.shutdown(1.0)
    assert tracing.configure(dataclasses.replace(tiny_settings(Path(".")), otel_enabled=True), exporter=memory)
    yield memory
    tracing.shutdown(1.0)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model_dir) -> Path:
    from models.bundle import model_identity

    model = model_identity(tiny_model_dir, "english")
    vectors = np.random.default_rng(0).standard_normal((20, model["dim"])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    types = ColumnTypes(["color"], from_csv=False)
    rows = [{"color": ["red", "blue"][i % 2]} for i in range(20)]
    for row in rows:
        types.add(row)
    return write_index(tmp_path_factory.mktemp("traced") / "idx" / "v1", vectors,
                       zip([f"item-{i}" for i in range(20)], rows), columns=types.result(), from_csv=False,
                       model=model, modality="image", name="idx")


@pytest.fixture(scope="module")
def traced(exporter, tiny_model_dir, index_dir):
    app = create_app(tiny_settings(tiny_model_dir, otel_enabled=True, allow_private_urls=True, index_dir=index_dir,
                                   api_keys=KEY, max_items=32, google_cloud_project="proj"))
    ready(app)
    search = app.extensions["clipserve"].search
    search.start()
    assert search.wait(60) and search.state.value == "ready", search.reason
    yield app
    app.extensions["clipserve"].shutdown(1)


def spans(exporter):
    tracing.flush(5.0)
    return exporter.get_finished_spans()


def auth(**headers):
    return {"Authorization": f"Bearer {KEY}", **headers}


def tree(exporter, trace_id: int):
    """{name: [spans]} of one trace."""
    out: dict[str, list] = {}
    for s in spans(exporter):
        if s.context.trace_id == trace_id:
            out.setdefault(s.name, []).append(s)
    return out


def server_span(exporter, route: str):
    [found] = [s for s in spans(exporter) if s.kind.name == "SERVER" and s.attributes.get("http.route") == route][-1:]
    assert found.name == f"POST {route}" and found.attributes["http.response.status_code"] == 200
    return found


def test_a_search_by_image_url_gives_the_span_tree(exporter, traced, image_server):
    exporter.clear()
    url = f"{image_server.base}/img.png?token={SECRET}"
    response = traced.test_client().post("/search", json={"image": url, "top_k": 5}, headers=auth())
    assert response.status_code == 200
    root = server_span(exporter, "/search")
    assert response.headers["X-Trace-Id"] == format(root.context.trace_id, "032x")
    names = tree(exporter, root.context.trace_id)
    for name in ("clipserve.parse", "clipserve.image.fetch", "clipserve.image.decode", "clipserve.queue_wait",
                 "clipserve.search"):
        assert name in names, (name, sorted(names))
    fetch = names["clipserve.image.fetch"][0]
    assert fetch.attributes["server.address"] == "127.0.0.1"
    search = names["clipserve.search"][0]
    assert search.parent.span_id == root.context.span_id
    assert dict(search.attributes) == {"clipserve.search.backend": "faiss", "clipserve.search.kind": "image",
                                       "clipserve.search.top_k": 5, "clipserve.search.filtered": False,
                                       "clipserve.search.results": 5}
    wait = names["clipserve.queue_wait"][0]
    assert wait.parent.span_id == root.context.span_id
    [model_link] = wait.links
    model = next(s for s in spans(exporter) if s.context.span_id == model_link.context.span_id)
    assert model.name == "clipserve.model" and model.parent is None  # a trace of its own, linked
    assert model.attributes["clipserve.kind"] == "image" and model.attributes["clipserve.precision"] == "fp32"
    assert model.attributes["clipserve.device"] == "cpu" and model.attributes["clipserve.runtime"] == "torch"
    assert [link.context.span_id for link in model.links] == [root.context.span_id]


def test_an_image_url_embedded_and_batched_texts_have_their_spans(exporter, traced, image_server):
    exporter.clear()
    client = traced.test_client()
    assert client.post("/embed/image", json={"images": [f"{image_server.base}/img.jpg"]},
                       headers=auth()).status_code == 200
    image_root = server_span(exporter, "/embed/image")
    names = tree(exporter, image_root.context.trace_id)
    assert {"clipserve.parse", "clipserve.image.fetch", "clipserve.image.decode", "clipserve.queue_wait"} <= set(names)
    assert client.post("/embed/text", json={"texts": [f"a {i} {SECRET}" for i in range(12)]},
                       headers=auth()).status_code == 200
    text_root = server_span(exporter, "/embed/text")
    names = tree(exporter, text_root.context.trace_id)
    assert {"clipserve.parse", "clipserve.tokenize", "clipserve.queue_wait"} <= set(names)
    assert all(w.parent.span_id == text_root.context.span_id for w in names["clipserve.queue_wait"])


def test_a_callers_traceparent_is_continued(exporter, traced):
    exporter.clear()
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = traced.test_client().post("/embed/text", json={"texts": ["a cat"]},
                                         headers=auth(traceparent=f"00-{trace_id}-{parent}-01"))
    root = server_span(exporter, "/embed/text")
    assert format(root.context.trace_id, "032x") == trace_id == response.headers["X-Trace-Id"]
    assert format(root.parent.span_id, "016x") == parent


def test_cloud_runs_trace_header_is_continued(exporter, traced):
    exporter.clear()
    trace_id = "105445aa7843bc8bf206b12000100000"
    traced.test_client().post("/embed/text", json={"texts": ["a dog"]},
                              headers=auth(**{"X-Cloud-Trace-Context": f"{trace_id}/1;o=1"}))
    assert format(server_span(exporter, "/embed/text").context.trace_id, "032x") == trace_id


def test_sixteen_requests_in_one_model_call_each_link_to_it(exporter, tiny_model_dir):
    settings = tiny_settings(tiny_model_dir, otel_enabled=True, batch_max_size=32)
    gate: list[Gate] = []

    def gated():
        gate.append(Gate(load_bundle_encoder(settings)))
        return gate[0]

    app = ready(create_app(settings, EmbeddingEngine.from_settings(settings, gated)))
    try:
        exporter.clear()
        blocker = threading.Thread(target=lambda: app.test_client().post("/embed/text", json={"texts": ["first"]}))
        blocker.start()
        assert gate[0].entered.wait(30)  # the model is busy with "first": the next 16 queue up together
        threads = [threading.Thread(target=lambda i=i: app.test_client().post("/embed/text",
                                                                              json={"texts": [f"t{i}"]}))
                   for i in range(16)]
        for t in threads:
            t.start()
        engine = app.extensions["clipserve"].engine
        for _ in range(300):
            if engine.loop_health().queue_depth == 16:
                break
            threading.Event().wait(0.01)
        gate[0].release()
        for t in [blocker, *threads]:
            t.join(30)
        models = [s for s in spans(exporter) if s.name == "clipserve.model"]
        [shared] = [m for m in models if m.attributes["clipserve.batch_size"] == 16]
        requests = [s for s in spans(exporter) if s.kind.name == "SERVER"]
        queued = {s.context.span_id for s in requests} - {models[0].links[0].context.span_id}
        assert len(shared.links) == 16 and {link.context.span_id for link in shared.links} == queued
        assert shared.attributes["clipserve.requests"] == 16
    finally:
        app.extensions["clipserve"].shutdown(1)


def test_the_log_line_carries_the_request_spans_ids(exporter, traced, caplog):
    exporter.clear()
    caplog.set_level(logging.INFO, logger="clipserve.request")
    traced.test_client().post("/embed/text", json={"texts": ["a bird"]}, headers=auth())
    root = server_span(exporter, "/embed/text")
    [line] = [r for r in caplog.records if r.name == "clipserve.request" and "/embed/text" in r.getMessage()][-1:]
    trace_id = format(root.context.trace_id, "032x")
    assert line.json_fields["trace_id"] == trace_id
    assert line.trace == f"projects/proj/traces/{trace_id}"  # logging.googleapis.com/trace: Cloud Trace links
    assert line.span_id == format(root.context.span_id, "016x") and line.trace_sampled is True


def test_no_span_attribute_holds_a_text_url_path_query_vector_or_key(exporter, traced, image_server):
    exporter.clear()
    client = traced.test_client()
    vector = [0.123456789] * traced.extensions["clipserve"].engine.info.dim
    client.post("/embed/text", json={"texts": [f"my {SECRET} diary"]}, headers=auth())
    client.post("/search", json={"text": f"find {SECRET}", "filter": {"must": [{"key": "color", "match":
                                                                                {"value": SECRET}}]}}, headers=auth())
    client.post("/search", json={"vector": vector}, headers=auth())
    client.post("/embed/image", json={"images": [f"{image_server.base}/redirect?to=/img.png&{SECRET}=1"]},
                headers=auth())
    client.get(f"/items/{SECRET}/thumbnail?v={SECRET}", headers=auth())
    client.post("/embed/text", json={"texts": ["x"]}, headers={"Authorization": f"Bearer wrong-{SECRET}"})
    recorded = spans(exporter)
    assert len(recorded) > 20
    for s in recorded:
        for key, value in {**dict(s.attributes), **dict(s.resource.attributes)}.items():
            text = json.dumps(value) if not isinstance(value, str) else value
            assert SECRET not in text and "0.123456" not in text and "/img.png" not in text, (s.name, key, value)
        assert SECRET not in s.name


def test_a_trace_the_caller_did_not_sample_records_nothing_but_keeps_its_id(exporter, traced):
    exporter.clear()
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    response = traced.test_client().post("/embed/text", json={"texts": ["a fish"]},
                                         headers=auth(traceparent=f"00-{trace_id}-b7ad6b7169203331-00"))
    assert response.status_code == 200 and response.headers["X-Trace-Id"] == trace_id
    assert [s for s in spans(exporter) if format(s.context.trace_id, "032x") == trace_id] == []
