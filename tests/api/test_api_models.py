"""Several models in one deployment (MODELS): chosen per request, one inference thread shared fairly, a memory
budget that loads, evicts and reloads, and prompt templates for zero-shot scores.

Apps are built by the production factory on the tiny english and multilingual bundles (both 32-d, so a vector
of one could be mistaken for the other's: every test checks which model's vectors came back)."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest

from api_helpers import b64, build_text_index, image_bytes
from app_helpers import Gate, ready, tiny_settings
from engine import Batcher
from engine.models import ModelSet, ModelTooLarge
from handler.app import create_app, load_bundle_encoder
from models.loader import memory_needed
from models.prompts import OPENAI_IMAGENET, label_vectors

BOTH = "english,multilingual"
WAIT = 10.0


@pytest.fixture(scope="module")
def two(tiny_model_dir):
    app = ready(create_app(tiny_settings(tiny_model_dir, models=BOTH, model_aliases="fast=english,accurate=multilingual",
                                         metrics_enabled=True)))
    yield app
    app.extensions["clipserve"].engine.shutdown()


def vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    return np.asarray(response.json["embeddings"], np.float32)


def test_each_route_embeds_with_the_model_it_names(two, english_encoder, multilingual_encoder):
    client = two.test_client()
    texts = ["a photo of a cat", "zwei Hunde"]
    for model, encoder in ((None, english_encoder), ("english", english_encoder), ("fast", english_encoder),
                           ("multilingual", multilingual_encoder), ("accurate", multilingual_encoder)):
        body = {"texts": texts, **({"model": model} if model else {})}
        response = client.post("/embed/text", json=body)
        np.testing.assert_allclose(vectors(response), encoder.encode_text(texts).embeddings, atol=1e-6)
        assert response.json["model"]["variant"] == encoder.info.variant  # the answer names the model
    picture = image_bytes("PNG", (90, 70))
    from inputs import decode_image

    want = multilingual_encoder.encode_images([multilingual_encoder.prepare_image(decode_image(picture, max_pixels=10**8))])
    json_answer = client.post("/embed/image", json={"images": [b64(picture)], "model": "multilingual"})
    form_answer = client.post("/embed/image", data={"model": "multilingual", "images": (io.BytesIO(picture), "a.png")},
                              content_type="multipart/form-data")
    query_answer = client.post("/embed/image?model=multilingual", data={"images": (io.BytesIO(picture), "a.png")},
                               content_type="multipart/form-data")
    for answer in (json_answer, form_answer, query_answer):
        np.testing.assert_allclose(vectors(answer), want, atol=1e-6)
    mixed = client.post("/embed/mixed", json={"texts": texts, "images": [b64(picture)], "model": "multilingual"}).json
    np.testing.assert_allclose(mixed["text_embeddings"], multilingual_encoder.encode_text(texts).embeddings, atol=1e-6)
    np.testing.assert_allclose(mixed["image_embeddings"], want, atol=1e-6)


def test_an_unknown_model_is_a_400_naming_the_served_ones(two):
    client = two.test_client()
    for path, body in (("/embed/text", {"texts": ["a"], "model": "klingon"}),
                       ("/score", {"texts": ["a"], "images": [b64(image_bytes())], "model": "klingon"}),
                       ("/embed/image", {"images": [b64(image_bytes())], "model": "siglip2-b16"})):
        response = client.post(path, json=body)
        assert response.status_code == 400, response.json
        error = response.json["error"]
        assert error["code"] == "unknown_model"
        assert "english" in error["message"] and "multilingual" in error["message"] and "fast=english" in error["message"]


def test_the_openai_protocol_routes_by_model_and_lists_every_model(two, multilingual_encoder):
    client = two.test_client()
    listed = client.get("/v1/models").json["data"]
    assert [m["id"] for m in listed] == ["english", "multilingual"] and all(m["dim"] == 32 for m in listed)
    body = client.post("/v1/embeddings", json={"input": ["a cat"], "model": "multilingual"}).json
    assert body["model"] == "multilingual"
    np.testing.assert_allclose(body["data"][0]["embedding"], multilingual_encoder.encode_text(["a cat"]).embeddings[0],
                               atol=1e-6)
    assert client.post("/v1/embeddings", json={"input": ["a"], "model": "accurate"}).json["model"] == "multilingual"
    missing = client.post("/v1/embeddings", json={"input": ["a"], "model": "gpt"})
    assert missing.status_code == 404 and "`multilingual`" in missing.json["error"]["message"]


def test_get_root_lists_every_model_with_its_facts(two):
    info = two.test_client().get("/").json
    models = {m["id"]: m for m in info["models"]}
    assert list(models) == ["english", "multilingual"] and models["english"]["default"]
    assert models["english"]["aliases"] == ["fast"] and models["multilingual"]["aliases"] == ["accurate"]
    for m in models.values():
        assert m["state"] == "ready" and m["dim"] == 32 and m["license"] == "MIT" and m["score_kind"] == "softmax"
    assert models["english"]["context_length"] == 77 and models["multilingual"]["image_size"] == 240
    assert info["model"]["variant"] == "english"  # the default model's full facts, as before


def test_stats_and_metrics_count_per_model(two):
    client = two.test_client()
    client.post("/embed/text", json={"texts": ["stats one", "stats two"], "model": "multilingual"})
    stats = client.get("/stats").json
    m = stats["models"]["multilingual"]
    assert m["requests"] >= 1 and m["batches"]["text"]["items"] >= 2 and m["loads"] == 1 and m["state"] == "ready"
    assert m["budgeted_bytes"] > 0 and stats["memory"]["budget_bytes"] > 0
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'clipserve_model_items_total{kind="text",model="multilingual"}' in metrics
    assert 'clipserve_model_loaded{model="english"} 1.0' in metrics


def test_the_request_log_names_the_model(two, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="clipserve.request"):
        two.test_client().post("/embed/text", json={"texts": ["log me"], "model": "accurate"})
    record = next(r for r in caplog.records if getattr(r, "json_fields", {}).get("route") == "/embed/text")
    assert record.json_fields["model"] == "multilingual"  # the alias, resolved


# --- zero-shot with templates -----------------------------------------------------------------------------------


def test_templates_make_each_label_the_normalized_mean_of_its_prompts(two, multilingual_encoder):
    labels, templates = ["cat", "dog", "car"], ["a photo of a {}.", "a drawing of the {}.", "{}"]
    picture = b64(image_bytes("PNG", (80, 60)))
    answer = two.test_client().post("/score", json={"texts": labels, "images": [picture], "templates": templates,
                                                    "model": "multilingual"}).json
    prompts = [t.replace("{}", label) for label in labels for t in templates]
    each = multilingual_encoder.encode_text(prompts).embeddings.astype(np.float64).reshape(3, 3, -1)
    mean = each.mean(axis=1)
    rows = mean / np.linalg.norm(mean, axis=1, keepdims=True)  # open_clip's zero_shot_classifier
    from inputs import decode_image
    import base64

    image = multilingual_encoder.encode_images([multilingual_encoder.prepare_image(
        decode_image(base64.b64decode(picture), max_pixels=10**8))])[0].astype(np.float64)
    np.testing.assert_allclose(answer["cosine"][0], rows @ image, atol=1e-5)
    logits = multilingual_encoder.info.logit_scale * (rows @ image)
    np.testing.assert_allclose(answer["probs"][0], np.exp(logits) / np.exp(logits).sum(), atol=1e-5)


def test_named_template_sets_and_bad_templates(two):
    client = two.test_client()
    picture = b64(image_bytes())
    named = client.post("/score", json={"texts": ["cat", "dog"], "images": [picture], "templates": "openai_imagenet"})
    assert named.status_code == 200 and len(named.json["probs"][0]) == 2
    for templates, expected in ((["a photo of a cat"], "has no {}"), ("imagenet_1000", "unknown template set"),
                                ([], "at least 1")):
        response = client.post("/score", json={"texts": ["cat"], "images": [picture], "templates": templates})
        assert response.status_code == 400 and expected in response.json["error"]["message"], response.json
    vectors_only = client.post("/score", json={"text_embeddings": [[1.0] * 32], "images": [picture],
                                               "templates": ["a {}"]})
    assert vectors_only.status_code == 400 and "texts" in vectors_only.json["error"]["message"]


def test_the_openai_template_set_is_open_clips():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    from models.prompts import SIMPLE_IMAGENET

    assert list(OPENAI_IMAGENET) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert list(SIMPLE_IMAGENET) == [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]


def test_label_vectors_report_labels_whose_prompts_were_cut():
    from types import SimpleNamespace

    def embed(prompts):
        rows = np.eye(len(prompts), 4, dtype=np.float32)
        return SimpleNamespace(embeddings=rows, truncated=[3])

    rows, cut = label_vectors(["a", "b"], ["x {}", "y {}"], embed)
    assert cut == [1] and np.allclose(np.linalg.norm(rows, axis=1), 1)


# --- memory budget: load, evict, reload ---------------------------------------------------------------------------


def sizes(model_dir):
    return {name: memory_needed(name, model_dir) for name in ("english", "multilingual")}


def one_at_a_time(tiny_model_dir, **overrides):
    """A budget that holds either model but not both."""
    budget = max(sizes(tiny_model_dir).values()) + 1024
    return tiny_settings(tiny_model_dir, models=BOTH, model_memory_budget=str(budget), **overrides)


def test_only_what_fits_loads_at_boot_and_the_rest_on_first_use(tiny_model_dir, english_encoder,
                                                                 multilingual_encoder):
    app = ready(create_app(one_at_a_time(tiny_model_dir)))
    client = app.test_client()
    models = app.extensions["clipserve"].engine
    try:
        time.sleep(0.5)  # the boot loader stops at the first model that does not fit
        assert [m["state"] for m in models.describe()] == ["ready", "unloaded"]
        texts = ["a red car", "zwei Hunde"]
        english = vectors(client.post("/embed/text", json={"texts": texts}))
        multilingual = vectors(client.post("/embed/text", json={"texts": texts, "model": "multilingual"}))
        np.testing.assert_allclose(multilingual, multilingual_encoder.encode_text(texts).embeddings, atol=1e-6)
        states = {m["name"]: m for m in models.describe()}
        assert states["english"]["state"] == "unloaded" and states["english"]["evictions"] == 1
        again = vectors(client.post("/embed/text", json={"texts": ["new text", *texts]}))  # english reloads
        assert np.array_equal(again[1:], english)  # the same vectors after a reload (cached ones bit for bit)
        np.testing.assert_allclose(again[:1], english_encoder.encode_text(["new text"]).embeddings, atol=1e-6)
        states = {m["name"]: m for m in models.describe()}
        assert (states["english"]["loads"], states["multilingual"]["evictions"]) == (2, 1)
        assert client.get("/health").status_code == 200  # the default was unloaded for a while: still healthy
    finally:
        models.shutdown()


def test_a_model_in_use_is_never_evicted_and_the_waiting_request_gets_503_then_succeeds(tiny_model_dir):
    settings = one_at_a_time(tiny_model_dir, model_load_wait_s=1.0)
    gates: dict[str, Gate] = {}

    def loader_for(name):
        def load():  # english's model calls wait at a gate; multilingual's run at once
            gates[name] = Gate(load_bundle_encoder(settings, name))
            if name == "multilingual":
                gates[name].release()
            return gates[name]
        return load

    models = ModelSet.from_settings(settings, loader_for, sizes(tiny_model_dir))
    app = ready(create_app(settings, models))
    client = app.test_client()
    try:
        held = {}
        thread = threading.Thread(target=lambda: held.setdefault("r", client.post("/embed/text", json={"texts": ["x"]})))
        thread.start()
        assert gates["english"].entered.wait(WAIT)  # english has an item in a model call
        refused = client.post("/embed/text", json={"texts": ["y"], "model": "multilingual"})
        assert refused.status_code == 503 and refused.json["error"]["code"] == "model_loading"
        assert int(refused.headers["Retry-After"]) >= 1 and "multilingual" in refused.json["error"]["message"]
        assert [m["state"] for m in models.describe()] == ["ready", "unloaded"]
        gates["english"].release()
        thread.join(WAIT)
        assert held["r"].status_code == 200
        answer = client.post("/embed/text", json={"texts": ["y"], "model": "multilingual"})  # english idle now
        assert answer.status_code == 200
        assert [m["state"] for m in models.describe()] == ["unloaded", "ready"]
    finally:
        for gate in gates.values():
            gate.release()
        models.shutdown()


def test_eviction_under_load_answers_every_request_with_the_right_models_vectors(tiny_model_dir, english_encoder,
                                                                                  multilingual_encoder):
    """Eight clients alternate between two models that cannot both be in memory: every answer is 200 (or 503 with
    Retry-After while a model loads) and every vector is its model's."""
    app = ready(create_app(one_at_a_time(tiny_model_dir, request_timeout_s=30.0)))
    models = app.extensions["clipserve"].engine
    want = {"english": english_encoder.encode_text(["t0", "t1", "t2"]).embeddings,
            "multilingual": multilingual_encoder.encode_text(["t0", "t1", "t2"]).embeddings}
    failures, statuses = [], []

    def client_loop(i):
        client = app.test_client()
        for round_ in range(6):
            model = ("english", "multilingual")[(i + round_) % 2]
            r = client.post("/embed/text", json={"texts": ["t0", "t1", "t2"], "model": model})
            statuses.append(r.status_code)
            if r.status_code == 200:
                if not np.allclose(r.json["embeddings"], want[model], atol=1e-6) or r.json["model"]["variant"] != model:
                    failures.append((model, r.json["model"]))
            elif r.status_code != 503 or "Retry-After" not in r.headers:
                failures.append(r.json)

    try:
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures and statuses.count(200) >= len(statuses) // 2, (failures, statuses)
        loads = {m["name"]: m["loads"] for m in models.describe()}
        assert loads["english"] + loads["multilingual"] >= 3  # it really evicted and reloaded
    finally:
        models.shutdown()


def test_a_model_that_cannot_fit_alone_stops_the_boot_with_the_sizes(tiny_model_dir):
    need = sizes(tiny_model_dir)
    settings = tiny_settings(tiny_model_dir, models=BOTH, model_memory_budget=str(min(need.values()) - 1))
    with pytest.raises(ModelTooLarge, match="MiB"):
        create_app(settings)


# --- one inference thread shared fairly ------------------------------------------------------------------------


def test_a_busy_model_cannot_starve_a_quiet_one():
    """A hot lane with 20 batches queued and a cold lane with one item: the cold item runs in the next batch, not
    after the hot queue."""
    order: list[str] = []
    gate = threading.Event()

    def run(kind, options, payloads):
        gate.wait(WAIT)
        order.append(options[0])
        return payloads

    batcher = Batcher(run, max_batch_size=4, max_wait_s=0.0, queue_size=200)
    batcher.start()
    try:
        hot = [batcher.submit("text", ("hot", True), [i], lane="hot") for i in range(80)]
        time.sleep(0.05)
        cold = batcher.submit("text", ("cold", True), ["c"], lane="cold")
        gate.set()
        cold[0].result(WAIT)
        for futures in hot:
            futures[0].result(WAIT)
        assert order.index("cold") <= 2, order  # one hot batch may have started before it was queued
        assert all(len(b) for b in order)
    finally:
        batcher.shutdown(WAIT)


def test_items_of_two_models_never_share_a_batch(two):
    models = two.extensions["clipserve"].engine
    client = two.test_client()
    seen_before = {m["name"]: dict(m["batches"].get("text", {})) for m in models.describe()}
    threads = [threading.Thread(target=client.post, args=("/embed/text",),
                                kwargs={"json": {"texts": [f"mix {i}"], "model": ("english", "multilingual")[i % 2]}})
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    after = {m["name"]: m["batches"]["text"] for m in models.describe()}
    for name in ("english", "multilingual"):  # each model encoded exactly its own 8 texts
        assert after[name]["items"] - seen_before[name].get("items", 0) == 8


# --- search uses the index's model; Weaviate the default ------------------------------------------------------------


@pytest.fixture(scope="module")
def multilingual_index(tiny_model_dir, tmp_path_factory):
    return build_text_index(tiny_model_dir, tmp_path_factory.mktemp("models_index"),
                            ["a red bicycle", "ein blaues Auto", "a green tree", "un chat"], model="multilingual")


def test_search_embeds_with_the_model_its_index_was_built_with(tiny_model_dir, multilingual_index,
                                                               multilingual_encoder):
    app = ready(create_app(tiny_settings(tiny_model_dir, models=BOTH, index_dir=multilingual_index)))
    client = app.test_client()
    deadline = time.monotonic() + WAIT
    while client.get("/health").status_code != 200:  # the index opens beside the model
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        answer = client.post("/search", json={"text": "ein blaues Auto", "top_k": 4}).json
        assert answer["model"]["variant"] == "multilingual" and answer["index"]["model"] == "multilingual"
        query = multilingual_encoder.encode_text(["ein blaues Auto"]).embeddings[0]
        items = multilingual_encoder.encode_text(["a red bicycle", "ein blaues Auto", "a green tree", "un chat"])
        want = [f"sku-{i}" for i in np.argsort(-(items.embeddings @ query), kind="stable")]
        assert [r["id"] for r in answer["results"]] == want  # brute force with the index's model
        assert client.post("/search", json={"text": "x", "model": "multilingual"}).status_code == 200
        refused = client.post("/search", json={"text": "x", "model": "english"})
        assert refused.status_code == 400 and "'multilingual'" in refused.json["error"]["message"]
        assert client.get("/").json["search"]["index"]["model"] == "multilingual"
    finally:
        app.extensions["clipserve"].engine.shutdown()


def test_an_index_built_with_a_model_not_served_stops_the_boot(tiny_model_dir, multilingual_index):
    from search.errors import IndexUnusable

    with pytest.raises(IndexUnusable, match="multilingual"):
        create_app(tiny_settings(tiny_model_dir, model_variant="english", index_dir=multilingual_index))


def test_weaviate_uses_the_default_model(two, english_encoder):
    client = two.test_client()
    body = client.post("/vectorize", json={"texts": ["a cat"]}).json
    np.testing.assert_allclose(body["textVectors"][0], english_encoder.encode_text(["a cat"]).embeddings[0], atol=1e-6)
    assert client.get("/meta").json["model"]["variant"] == "english"
