"""The shared cache on a real redis-server: two gunicorn instances share text, image and search entries, vectors
bit-identical to uncached ones; another model or index never hits; Redis killed, stalled or refusing writes, and
a corrupt value, all leave the service answering 200; rate limits hold across instances; /stats agrees."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import numpy as np
import pytest
import requests

from api_helpers import b64, build_text_index, image_bytes, serve_images
from app_helpers import READY_TIMEOUT_S, tiny_settings
from engine import EmbeddingEngine
from engine.cache import TEXT, text_digest
from handler.app import create_app, load_bundle_encoder
from infra.redis_cache import RedisCache
from servers import gunicorn

pytestmark = pytest.mark.usefixtures("redis")


def cached_app(model_dir, redis_url, **overrides):
    settings = tiny_settings(model_dir, redis_url=redis_url, redis_retry_s=0.5, allow_private_urls=True, **overrides)
    shared = RedisCache.from_settings(settings)
    engine = EmbeddingEngine.from_settings(settings, lambda: load_bundle_encoder(settings), shared)
    app = create_app(settings, engine)
    app.extensions["clipserve"].start()
    assert engine.wait_ready(READY_TIMEOUT_S), engine.load_error
    return app


@pytest.fixture
def make_app(tiny_model_dir, redis):
    made = []

    def make(**overrides):
        made.append(cached_app(tiny_model_dir, redis.url, **overrides))
        return made[-1]

    yield make
    for app in made:
        app.extensions["clipserve"].shutdown(1)


def stats(client, **kw) -> dict:
    r = client.get("/stats", **kw)
    assert r.status_code == 200
    return r.get_json() if hasattr(r, "get_json") else r.json()


def l2(body: dict, kind: str) -> tuple[int, int]:
    entry = body["cache"].get("l2", {}).get(kind, {"hits": 0, "misses": 0})
    return entry["hits"], entry["misses"]


# --- two instances of the real service ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_dir(tiny_model_dir, tmp_path_factory):
    return build_text_index(tiny_model_dir, tmp_path_factory.mktemp("cache_index"),
                            ["a red bicycle", "a blue car", "a green tree", "a cat", "a dog"])


def test_two_instances_share_texts_images_and_searches(tiny_model_dir, redis, index_dir, tmp_path):
    env = {"REDIS_URL": redis.url, "INDEX_DIR": str(index_dir), "ALLOW_PRIVATE_URLS": "true",
           "TEXT_CACHE_SIZE": "0"}
    png = image_bytes("PNG", color=(10, 99, 200))
    with serve_images() as images, gunicorn(tiny_model_dir, tmp_path / "a.log", **env) as a, \
            gunicorn(tiny_model_dir, tmp_path / "b.log", **env) as b:
        images.png = png
        texts = ["a photo of a cat", "a dog on a beach"]
        first = requests.post(f"{a.url}/embed/text", json={"texts": texts}, timeout=30).json()["embeddings"]
        by_url = requests.post(f"{a.url}/embed/image", json={"images": [f"{images.base}/img.png"]},
                               timeout=30).json()["embeddings"]
        query = {"text": "a red bicycle", "top_k": 3, "include_vectors": True}
        found = requests.post(f"{a.url}/search", json=query, timeout=30).json()
        assert l2(requests.get(f"{a.url}/stats", timeout=10).json(), TEXT)[0] == 0

        again = requests.post(f"{b.url}/embed/text", json={"texts": texts}, timeout=30).json()["embeddings"]
        by_b64 = requests.post(f"{b.url}/embed/image", json={"images": [b64(png)]}, timeout=30).json()["embeddings"]
        found_b = requests.post(f"{b.url}/search", json=query, timeout=30).json()
        counts = requests.get(f"{b.url}/stats", timeout=10).json()
        assert l2(counts, "text") == (2, 0) and l2(counts, "image") == (1, 0) and l2(counts, "search") == (1, 0)
        assert counts["redis"]["state"] == "ok"
        # bit for bit: float32 through the cache, and the JSON writer's shortest float32 form
        assert np.array_equal(np.array(again, np.float32), np.array(first, np.float32))
        assert np.array_equal(np.array(by_b64, np.float32), np.array(by_url, np.float32))
        assert found_b == found
        assert images.hits.count("/img.png") == 1  # b never fetched the URL: it was sent base64


def test_another_model_or_index_version_never_hits(make_app, tiny_model_dir, tmp_path, redis):
    from models.tiny import make_bundle

    other = tmp_path / "other"
    make_bundle("english", other, size="tiny", seed=7)  # same architecture, other weights
    one = make_app().test_client()
    two = cached_app(other, redis.url).test_client()
    v1 = one.post("/embed/text", json={"texts": ["a cat"]}).get_json()["embeddings"][0]
    v2 = two.post("/embed/text", json={"texts": ["a cat"]}).get_json()["embeddings"][0]
    assert l2(stats(two), "text") == (0, 1) and v1 != v2
    fp32 = make_app(precision="bf16").test_client()  # precision changes the last bits: its own keys
    fp32.post("/embed/text", json={"texts": ["a cat"]})
    assert l2(stats(fp32), "text") == (0, 1)
    two.application.extensions["clipserve"].shutdown(1)


def test_search_answers_are_per_index_version_and_writes_invalidate_them(make_app, tiny_model_dir, tmp_path):
    from models.bundle import model_identity
    from search import qdrant_index

    client = qdrant_index.connect(path=str(tmp_path / "q"))
    qdrant_index.create_collection(client, "items", model=model_identity(tiny_model_dir, "english"), modality="text",
                                   columns={}, local=True)
    client.close()
    app = make_app(qdrant_path=tmp_path / "q", qdrant_collection="items")
    app.extensions["clipserve"].search.wait(30)
    web = app.test_client()
    assert web.post("/index", json={"items": [{"id": "a", "text": "a cat"}]}).status_code == 200
    query = {"text": "a cat", "top_k": 5}
    assert [h["id"] for h in web.post("/search", json=query).get_json()["results"]] == ["a"]
    assert [h["id"] for h in web.post("/search", json=query).get_json()["results"]] == ["a"]
    assert l2(stats(web), "search") == (1, 1)
    assert web.post("/index", json={"items": [{"id": "b", "text": "a cat!"}]}).status_code == 200
    assert sorted(h["id"] for h in web.post("/search", json=query).get_json()["results"]) == ["a", "b"]
    assert l2(stats(web), "search") == (1, 2)  # the write moved the generation: a miss, not the stale answer
    app.extensions["clipserve"].search.close()


# --- faults: every request still answered by the model ----------------------------------------------------------


def hammer(client_factory, stop: threading.Event, statuses: list, latencies: list) -> None:
    client = client_factory()
    n = 0
    while not stop.is_set():
        started = time.perf_counter()
        r = client.post("/embed/text", json={"texts": [f"text {n % 20}"]})
        latencies.append(time.perf_counter() - started)
        statuses.append(r.status_code)
        n += 1


@pytest.mark.parametrize("fault", ["kill", "pause", "noeviction"])
def test_a_failing_redis_costs_speed_only_and_the_cache_comes_back(fault, make_app, redis, caplog):
    app = make_app(text_cache_size=0)
    web = app.test_client()
    web.post("/embed/text", json={"texts": [f"text {i}" for i in range(20)]})  # fill the shared cache
    statuses: list[int] = []
    latencies: list[float] = []
    stop = threading.Event()
    caplog.set_level(logging.WARNING, logger="infra.redis_cache")
    threads = [threading.Thread(target=hammer, args=(app.test_client, stop, statuses, latencies)) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    if fault == "kill":
        redis.kill()
    elif fault == "pause":
        redis.pause()
    else:
        redis.cli("FLUSHALL")
        redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis.cli("CONFIG", "SET", "maxmemory", "1")
    time.sleep(1.5)
    during = len(statuses)
    assert stats(web)["redis"]["state"] == "open" and web.get("/health").status_code == 200
    if fault == "kill":
        redis.start()
    elif fault == "pause":
        redis.resume()
    else:
        redis.cli("CONFIG", "SET", "maxmemory", "0")
    time.sleep(1.5)  # REDIS_RETRY_S is 0.5 here
    stop.set()
    for t in threads:
        t.join(30)
    assert set(statuses) == {200} and len(statuses) > during > 0
    assert stats(web)["redis"]["state"] == "ok"
    opened = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(opened) == 1, [r.getMessage() for r in caplog.records]  # once per state change, not per request
    before = l2(stats(web), "text")[0]
    web.post("/embed/text", json={"texts": ["text 3"]})
    web.post("/embed/text", json={"texts": ["text 3"]})
    assert l2(stats(web), "text")[0] > before  # hits again, no restart
    if fault == "pause":
        assert max(latencies) < 2.0  # a stalled Redis cost a request one REDIS_TIMEOUT_MS, never a hang


def test_a_corrupt_value_is_a_miss_and_is_overwritten(make_app, redis):
    app = make_app(text_cache_size=0)
    web = app.test_client()
    engine = app.extensions["clipserve"].engine
    want = web.post("/embed/text", json={"texts": ["a cat"]}).get_json()["embeddings"][0]
    key = engine.vectors.key(TEXT, True, text_digest("a cat"))
    assert redis.cli("EXISTS", key.decode()) == "1"
    redis.cli("SET", key.decode(), "garbage")
    got = web.post("/embed/text", json={"texts": ["a cat"]}).get_json()["embeddings"][0]
    assert got == want
    assert int(redis.cli("STRLEN", key.decode())) == 3 + 4 * engine.info.dim  # the good value is back


def test_the_metrics_name_the_cache_and_its_breaker(make_app, redis):
    from prometheus_client.parser import text_string_to_metric_families

    web = make_app(metrics_enabled=True).test_client()
    web.post("/embed/text", json={"texts": ["x", "y"]})
    web.post("/embed/text", json={"texts": ["x"]})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in
               text_string_to_metric_families(web.get("/metrics").get_data(as_text=True)) for s in f.samples}
    assert samples[("clipserve_cache_requests_total", (("kind", "text"), ("level", "l1"), ("result", "hit")))] == 1
    assert samples[("clipserve_cache_requests_total", (("kind", "text"), ("level", "l2"), ("result", "miss")))] == 2
    assert samples[("clipserve_cache_breaker_open", ())] == 0


# --- rate limits and /stats -------------------------------------------------------------------------------------


def test_a_rate_limit_holds_across_two_instances(make_app):
    one = make_app(rate_limit="5/minute").test_client()
    two = make_app(rate_limit="5/minute").test_client()
    answers = [c.post("/embed/text", json={"texts": ["a"]}) for c in (one, two, one, two, one)]
    assert [a.status_code for a in answers] == [200] * 5
    over = two.post("/embed/text", json={"texts": ["a"]})
    assert over.status_code == 429 and over.get_json()["error"]["code"] == "rate_limited"
    assert 0 < int(over.headers["Retry-After"]) <= 60
    openai = one.post("/v1/embeddings", json={"model": "english", "input": "a"})  # one budget for every route
    assert openai.status_code == 429 and openai.get_json()["error"]["type"] == "rate_limit_error"
    assert one.get("/health").status_code == 200  # probes are never limited


def test_rate_limits_count_per_api_key(make_app):
    web = make_app(rate_limit="2/minute", api_keys="k1,k2").test_client()
    k1, k2 = ({"Authorization": f"Bearer {k}"} for k in ("k1", "k2"))
    assert [web.post("/embed/text", json={"texts": ["a"]}, headers=k1).status_code for _ in range(3)] == [200, 200, 429]
    assert web.post("/embed/text", json={"texts": ["a"]}, headers=k2).status_code == 200


def test_rate_limits_without_redis_count_in_the_instance(tiny_model_dir, apps):
    web = apps("english", rate_limit="2/minute").test_client()
    assert [web.post("/embed/text", json={"texts": ["q"]}).status_code for _ in range(3)] == [200, 200, 429]


def test_stats_count_what_was_sent(make_app):
    app = make_app()
    web = app.test_client()
    for _ in range(3):
        web.post("/embed/text", json={"texts": ["a", "b"]})
    web.post("/embed/text", json={"texts": []})
    web.post("/embed/image", json={"images": [b64(image_bytes()), "!!"]})  # "!!": no bytes, so no lookup
    body = stats(web)
    assert body["routes"]["/embed/text"] == {"requests": 4, "errors": 1, "statuses": {"200": 3, "400": 1}}
    assert body["routes"]["/embed/image"]["requests"] == 1
    assert body["cache"]["l1"]["text"] == {"hits": 4, "misses": 2, "hit_ratio": round(4 / 6, 4)}
    assert l2(body, "text") == (0, 2) and l2(body, "image") == (0, 1)
    assert body["batches"]["text"]["items"] == 2 and body["batches"]["image"]["items"] == 1
    assert body["redis"]["state"] == "ok" and body["model"]["variant"] == "english" and body["uptime_s"] >= 0
    assert body["queue"]["depth"] == 0


def test_a_redis_that_is_down_at_boot_does_not_stop_the_boot(tiny_model_dir):
    settings = tiny_settings(tiny_model_dir, redis_url="redis://127.0.0.1:1/0", redis_retry_s=60)
    shared = RedisCache.from_settings(settings)
    app = create_app(settings, EmbeddingEngine.from_settings(settings, lambda: load_bundle_encoder(settings), shared))
    app.extensions["clipserve"].start()
    assert app.extensions["clipserve"].engine.wait_ready(READY_TIMEOUT_S)
    web = app.test_client()
    assert web.post("/embed/text", json={"texts": ["a"]}).status_code == 200
    assert web.get("/health").status_code == 200 and stats(web)["redis"]["state"] == "open"
    app.extensions["clipserve"].shutdown(1)


def test_settings_refuse_a_bad_redis_url_or_rate_limit():
    from infra.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env({"REDIS_URL": "http://cache:6379"})
    with pytest.raises(SettingsError, match="RATE_LIMIT"):
        Settings.from_env({"RATE_LIMIT": "lots"})
    assert dataclasses.replace(Settings(), redis_url="rediss://x:6380").redis_url.startswith("rediss")
    assert "secret" not in repr(Settings(redis_url="redis://:secret@x:6379", redis_password="pw"))


def test_two_models_in_one_app_never_get_each_others_vectors(tiny_model_dir, redis, english_encoder,
                                                             multilingual_encoder):
    """One Redis, one app serving english and multilingual (both 32-d): the same text embedded by each model is
    cached under each model's identity; a fresh app (empty in-process caches) reads each model's own vector back
    from Redis, bit for bit."""
    def app():
        settings = tiny_settings(tiny_model_dir, redis_url=redis.url, models="english,multilingual")
        made = create_app(settings)
        made.extensions["clipserve"].start()
        assert made.extensions["clipserve"].engine.wait_ready(READY_TIMEOUT_S)
        return made

    first, second = app(), app()
    try:
        want = {}
        for model in ("english", "multilingual"):
            body = first.test_client().post("/embed/text", json={"texts": ["a cat"], "model": model}).get_json()
            want[model] = np.array(body["embeddings"][0], np.float32)
        assert not np.array_equal(want["english"], want["multilingual"])
        client = second.test_client()
        for model, encoder in (("english", english_encoder), ("multilingual", multilingual_encoder)):
            body = client.post("/embed/text", json={"texts": ["a cat"], "model": model}).get_json()
            got = np.array(body["embeddings"][0], np.float32)
            assert np.array_equal(got, want[model]) and body["model"]["variant"] == model
            np.testing.assert_allclose(got, encoder.encode_text(["a cat"]).embeddings[0], atol=1e-6)
        assert l2(stats(client), "text") == (2, 0)  # both from Redis, each under its own model's key
    finally:
        for made in (first, second):
            made.extensions["clipserve"].shutdown(1)
