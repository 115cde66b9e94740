"""/health reports the inference loop's real state: a loop that is alive but no longer takes work is unhealthy."""

from __future__ import annotations

import threading
import time

import pytest

from handler.app import create_app
from infra.settings import Settings


@pytest.fixture
def app(tiny_model_dir):
    settings = Settings(model_dir=tiny_model_dir, precision="fp32", runtime="torch", stall_timeout_s=1, request_timeout_s=3, batch_max_wait_ms=1)
    app = create_app(settings)
    engine = app.extensions["clipserve"].engine
    engine.start()
    assert engine.wait_ready(120), engine.load_error
    yield app
    engine.shutdown(timeout=1)


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_loop_stuck_outside_a_model_call_turns_health_red_then_recovers(app):
    engine = app.extensions["clipserve"].engine
    client = app.test_client()
    assert client.get("/health").status_code == 200
    gate = threading.Event()
    # The loop finishes a batch, then hangs in its after-batch hook: alive, not in a model call, taking nothing.
    engine.set_batch_observer(lambda *args: gate.wait(30))
    try:
        first = client.post("/embed/text", json={"texts": ["served before the hang"]})
        assert first.status_code == 200
        results: list[int] = []
        waiting = threading.Thread(target=lambda: results.append(
            app.test_client().post("/embed/text", json={"texts": ["queued behind it"]}).status_code))
        waiting.start()
        assert _wait_for(lambda: client.get("/health").status_code == 503, timeout=6), "health stayed green"
        body = client.get("/health").get_json()
        assert body["status"] == "unhealthy" and "waited" in body["reason"]
        waiting.join(10)
        assert results == [504]  # the queued request timed out cleanly instead of hanging
    finally:
        gate.set()
        engine.set_batch_observer(None)
    assert _wait_for(lambda: client.get("/health").status_code == 200, timeout=5), "health did not recover"
    assert client.post("/embed/text", json={"texts": ["after recovery"]}).status_code == 200
