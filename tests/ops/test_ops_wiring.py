"""The ops pieces as the service wires them (create_app on a tiny bundle): keys, metrics from the real engine, logs."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from handler.app import create_app
from infra.settings import Settings
from ops_support import b64, capture, image_bytes

KEY = "k-3a9f"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    settings = Settings(model_dir=tiny_model_dir, precision="fp32", runtime="torch", api_keys=KEY, metrics_enabled=True, batch_max_wait_ms=1)
    app = create_app(settings)
    engine = app.extensions["clipserve"].engine
    engine.start()
    assert engine.wait_ready(120), engine.load_error
    yield app
    engine.shutdown()


def test_service_requires_the_key_except_on_health(app):
    client = app.test_client()
    assert client.get("/health").status_code == 200
    for path in ("/", "/openapi.json", "/metrics"):
        assert client.get(path).status_code == 401, path
    r = client.post("/embed/text", json={"texts": ["a"]})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
    assert client.post("/embed/text", json={"texts": ["a"]}, headers=AUTH).status_code == 200


def test_metrics_count_real_batches_items_and_image_errors(app):
    client = app.test_client()
    good = b64(image_bytes(seed=11))
    r = client.post("/embed/image", json={"images": [good, "not-an-image!"]}, headers=AUTH)
    assert r.status_code == 200 and [e["code"] for e in r.get_json()["errors"]] == ["invalid_image"]
    text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("clipserve_image_errors_total", (("code", "invalid_image"),))] >= 1
    assert samples[("clipserve_items_total", (("kind", "image"),))] >= 2
    assert samples[("clipserve_batch_size_count", (("kind", "image"),))] >= 1
    assert samples[("clipserve_queue_depth", ())] == 0
    assert samples[("clipserve_inference_loop_healthy", ())] == 1


def test_request_line_carries_engine_batch_facts(app):
    settings = Settings()
    for cap in capture(settings):
        r = app.test_client().post("/embed/text", json={"texts": ["x", "y", "z"]}, headers=AUTH)
        assert r.status_code == 200
        [line] = cap.request_lines()
        assert line["texts"] == 3 and line["batch_size"] >= 3 and line["queue_wait_ms"] >= 0
        assert KEY not in cap.buffer.getvalue()


def _samples(client) -> dict:
    text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_text_cache_hits_are_logged_and_counted(app):
    client = app.test_client()
    before = _samples(client)
    hits = (("clipserve_text_cache_lookups_total", (("result", "hit"),)))
    misses = (("clipserve_text_cache_lookups_total", (("result", "miss"),)))
    for cap in capture(Settings()):
        assert client.post("/embed/text", json={"texts": ["cached label 1", "cached label 2"]},
                           headers=AUTH).status_code == 200
        assert client.post("/embed/text", json={"texts": ["cached label 2", "fresh label"]},
                           headers=AUTH).status_code == 200
        first, second = cap.request_lines()
        assert "text_cache_hits" not in first and second["text_cache_hits"] == 1 and second["texts"] == 2
    after = _samples(client)
    assert after[hits] - before.get(hits, 0) == 1 and after[misses] - before.get(misses, 0) == 3


def test_texts_are_counted_even_when_the_request_fails(app):
    client = app.test_client()
    before = _samples(client)
    key = ("clipserve_items_total", (("kind", "text"),))
    for cap in capture(Settings()):
        r = client.post("/embed/text", json={"texts": ["a " * 100] * 2, "truncate": False}, headers=AUTH)
        assert r.status_code == 400
        [line] = cap.request_lines()
        assert line["texts"] == 2 and line["error_code"] == "invalid_request"
    assert _samples(client)[key] - before.get(key, 0) == 2


def test_stage_cpu_is_counted_per_stage(app):
    """The benchmark splits the serving overhead with these counters: every stage a text request passes grows,
    and the parts never exceed the request thread's whole."""
    client = app.test_client()
    before = _samples(client)
    for i in range(20):
        assert client.post("/embed/text", json={"texts": [f"stage text {i} " * 20]}, headers=AUTH).status_code == 200
    after = _samples(client)

    def grew(stage: str) -> float:
        key = ("clipserve_stage_cpu_seconds_total", (("stage", stage),))
        return after[key] - before.get(key, 0.0)

    assert all(grew(stage) > 0 for stage in ("request", "parse", "tokenize", "serialize"))
    assert grew("parse") + grew("tokenize") + grew("serialize") <= grew("request") + 0.005
