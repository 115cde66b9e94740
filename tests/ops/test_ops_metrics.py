"""Prometheus /metrics: off by default; request counts and latency by route and status, batches, queue, image errors."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from engine.batcher import LoopHealth
from infra.settings import Settings
from ops_support import minimal_app


class FakeEngine:
    """Only what observability needs from the engine: a batch observer slot and loop health."""

    def __init__(self) -> None:
        self.observer = None
        self.depth = 7

    def set_batch_observer(self, observer) -> None:  # noqa: ANN001
        self.observer = observer

    def loop_health(self) -> LoopHealth:
        return LoopHealth(running=True, stalled=False, busy_for_s=0.0, queue_depth=self.depth,
                          batches_done=0, batches_failed=0, expected_wait_s=2.5)


def _samples(client, headers=None) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", headers=headers or {})
    assert r.status_code == 200 and r.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.get_data(as_text=True)) for s in family.samples}


def test_metrics_are_off_by_default():
    assert minimal_app(Settings()).test_client().get("/metrics").status_code == 404


def test_request_counts_and_latency_by_route_and_status():
    client = minimal_app(Settings(metrics_enabled=True)).test_client()
    for _ in range(3):
        assert client.post("/embed/text", json={"texts": ["a", "b"]}).status_code == 200
    assert client.post("/embed/image", json={"images": ["x", "y"]}).status_code == 422
    client.get("/nowhere")
    s = _samples(client)
    assert s[("clipserve_requests_total", (("method", "POST"), ("route", "/embed/text"), ("status", "200")))] == 3
    assert s[("clipserve_requests_total", (("method", "POST"), ("route", "/embed/image"), ("status", "422")))] == 1
    assert s[("clipserve_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert s[("clipserve_request_duration_seconds_count", (("route", "/embed/text"), ("status", "200")))] == 3
    assert s[("clipserve_request_duration_seconds_bucket",
              (("le", "+Inf"), ("route", "/embed/text"), ("status", "200")))] == 3
    assert s[("clipserve_items_total", (("kind", "text"),))] == 6
    assert s[("clipserve_items_total", (("kind", "image"),))] == 2
    assert s[("clipserve_image_errors_total", (("code", "fetch_timeout"),))] == 1
    assert s[("clipserve_image_errors_total", (("code", "invalid_image"),))] == 1
    assert s[("clipserve_requests_in_flight", ())] == 1  # the scrape itself; the others finished


def test_batch_sizes_queue_wait_and_depth_come_from_the_engine():
    engine = FakeEngine()
    client = minimal_app(Settings(metrics_enabled=True), engine).test_client()
    assert engine.observer is not None
    engine.observer("image", 5, 0.02)
    engine.observer("image", 12, 0.3)
    s = _samples(client)
    assert s[("clipserve_batch_size_count", (("kind", "image"),))] == 2
    assert s[("clipserve_batch_size_sum", (("kind", "image"),))] == 17
    assert s[("clipserve_batch_size_bucket", (("kind", "image"), ("le", "8.0")))] == 1
    assert s[("clipserve_queue_wait_seconds_sum", (("kind", "image"),))] == 0.32
    assert s[("clipserve_queue_depth", ())] == 7
    assert s[("clipserve_inference_loop_healthy", ())] == 1


def test_metrics_need_a_key_when_keys_are_configured():
    client = minimal_app(Settings(metrics_enabled=True, api_keys="k")).test_client()
    assert client.get("/metrics").status_code == 401
    assert _samples(client, {"Authorization": "Bearer k"})


def test_two_apps_in_one_process_keep_separate_counts():
    a = minimal_app(Settings(metrics_enabled=True)).test_client()
    b = minimal_app(Settings(metrics_enabled=True)).test_client()
    a.get("/health")
    key = ("clipserve_requests_total", (("method", "GET"), ("route", "/health"), ("status", "200")))
    assert _samples(a)[key] == 1
    assert key not in _samples(b)


def test_the_expected_wait_admission_compares_is_exported():
    engine = FakeEngine()
    client = minimal_app(Settings(metrics_enabled=True), engine).test_client()
    assert _samples(client)[("clipserve_queue_expected_wait_seconds", ())] == 2.5
