"""Every endpoint, option and error code through Flask's test client, on the tiny bundles.

Vectors are compared with the encoder's own output for the same inputs, exactly (float32 -> JSON -> float32
is lossless). Every JSON response is also validated against the response model that /openapi.json documents.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from api_helpers import b64, data_uri, image_bytes, png_header_claiming
from app_helpers import Gate, tiny_settings
from handler.schemas import (ErrorResponse, HealthResponse, ImageEmbedResponse, InfoResponse, MixedEmbedResponse,
                             ScoreResponse, TextEmbedResponse)

VARIANTS = ["english", "multilingual"]
PNG = image_bytes("PNG")
JPG = image_bytes("JPEG", size=(80, 60), color=(10, 120, 230))
TEXTS = ["a photo of a cat", "ein Hund im Schnee", ""]


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture
def client(apps, variant):
    return apps(variant).test_client()


@pytest.fixture(scope="session")
def encoders(english_encoder, multilingual_encoder):
    return {"english": english_encoder, "multilingual": multilingual_encoder}


def ok(response, model):
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    model.model_validate(response.json)
    return response.json


def error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    ErrorResponse.model_validate(response.json)
    assert response.json["error"]["code"] == code, response.json
    return response.json["error"]


def expected_images(encoder, blobs, normalize=True):
    tensors = [encoder.prepare_image(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
    return encoder.encode_images(tensors, normalize=normalize)


def as_array(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def from_base64(rows) -> np.ndarray:
    return np.stack([np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows])


# --- embeddings, exact against the encoder --------------------------------------------------------

@pytest.mark.parametrize("normalize", [True, False])
def test_embed_text_matches_encoder_exactly(client, encoders, variant, normalize):
    body = ok(client.post("/embed/text", json={"texts": TEXTS, "normalize": normalize}), TextEmbedResponse)
    expected = encoders[variant].encode_text(TEXTS, normalize=normalize)
    assert np.array_equal(as_array(body["embeddings"]), expected.embeddings)
    assert body["truncated"] == expected.truncated == []
    info = encoders[variant].info
    assert body["model"] == {"variant": variant, "architecture": info.architecture} and body["dim"] == info.dim
    norms = np.linalg.norm(as_array(body["embeddings"]), axis=1)
    assert np.allclose(norms, 1, atol=1e-5) if normalize else not np.allclose(norms, 1, atol=1e-3)


def test_embed_text_base64_is_little_endian_float32(client, encoders, variant):
    body = ok(client.post("/embed/text", json={"texts": TEXTS, "encoding_format": "base64"}), TextEmbedResponse)
    assert all(isinstance(r, str) for r in body["embeddings"])
    assert np.array_equal(from_base64(body["embeddings"]), encoders[variant].encode_text(TEXTS).embeddings)


def test_long_text_is_truncated_and_reported(client, encoders, variant):
    texts = ["short", " ".join(["word"] * 390)[:400]]
    body = ok(client.post("/embed/text", json={"texts": texts}), TextEmbedResponse)
    expected = encoders[variant].encode_text(texts)
    assert body["truncated"] == expected.truncated
    assert (body["truncated"] == [1]) == (variant == "english")   # 77 tokens for CLIP, 512 for M-CLIP
    assert np.array_equal(as_array(body["embeddings"]), expected.embeddings)


@pytest.mark.parametrize("normalize", [True, False])
def test_embed_image_json_matches_encoder_exactly(client, encoders, variant, normalize):
    images = [b64(PNG), data_uri(JPG, "jpeg")]
    body = ok(client.post("/embed/image", json={"images": images, "normalize": normalize}), ImageEmbedResponse)
    assert body["errors"] == []
    assert np.array_equal(as_array(body["embeddings"]), expected_images(encoders[variant], [PNG, JPG], normalize))


def test_embed_image_accepts_legacy_urls_key(client, encoders, variant):
    body = ok(client.post("/embed/image", json={"urls": [b64(PNG)]}), ImageEmbedResponse)
    assert np.array_equal(as_array(body["embeddings"]), expected_images(encoders[variant], [PNG]))


def test_embed_image_multipart_upload(client, encoders, variant):
    data = {"images": [(io.BytesIO(PNG), "cat.png"), (io.BytesIO(JPG), "dog.jpg")], "normalize": "false",
            "encoding_format": "base64"}
    body = ok(client.post("/embed/image", data=data, content_type="multipart/form-data"), ImageEmbedResponse)
    assert np.array_equal(from_base64(body["embeddings"]), expected_images(encoders[variant], [PNG, JPG], False))


def test_embed_image_from_url(apps, encoders, image_server):
    client = apps("english", allow_private_urls=True).test_client()
    urls = [f"{image_server.base}/img.png", f"{image_server.base}/redirect?to=/img.jpg"]
    body = ok(client.post("/embed/image", json={"images": urls}), ImageEmbedResponse)
    expected = expected_images(encoders["english"], [image_server.png, image_server.jpg])
    assert np.array_equal(as_array(body["embeddings"]), expected)


def test_private_urls_refused_by_default(client, image_server):
    body = ok(client.post("/embed/image", json={"images": [b64(PNG), f"{image_server.base}/img.png"]}),
              ImageEmbedResponse)
    assert body["errors"] == [{"index": 1, "code": "forbidden_url", "message": body["errors"][0]["message"]}]
    assert image_server.hits == []


def test_per_image_errors_keep_arrays_aligned(apps, encoders, image_server):
    client = apps("english", allow_private_urls=True, max_image_bytes=50_000).test_client()
    images = [
        b64(PNG),                                   # 0 ok
        "definitely not base64!",                   # 1 invalid_image
        "file:///etc/passwd",                       # 2 forbidden_url
        f"{image_server.base}/status?code=404",     # 3 fetch_failed
        f"{image_server.base}/never",               # 4 fetch_timeout
        b64(png_header_claiming(50_000, 50_000)),   # 5 too_large (pixels)
        b64(b"\0" * 60_000),                        # 6 too_large (bytes)
        data_uri(JPG, "jpeg"),                      # 7 ok
    ]
    body = ok(client.post("/embed/image", json={"images": images}), ImageEmbedResponse)
    assert [(e["index"], e["code"]) for e in body["errors"]] == [
        (1, "invalid_image"), (2, "forbidden_url"), (3, "fetch_failed"), (4, "fetch_timeout"), (5, "too_large"),
        (6, "too_large")]
    assert [e is None for e in body["embeddings"]] == [False, True, True, True, True, True, True, False]
    expected = expected_images(encoders["english"], [PNG, JPG])
    assert np.array_equal(as_array([body["embeddings"][0], body["embeddings"][7]]), expected)


def test_all_images_failed_is_422_with_details(client):
    err = error(client.post("/embed/image", json={"images": ["nope!", "file:///x"]}), 422, "all_images_failed")
    assert [(d["index"], d["code"]) for d in err["details"]] == [(0, "invalid_image"), (1, "forbidden_url")]


def test_embed_mixed(client, encoders, variant):
    body = ok(client.post("/embed/mixed", json={"texts": TEXTS[:2], "images": [b64(PNG), "bad!"]}),
              MixedEmbedResponse)
    encoder = encoders[variant]
    assert np.array_equal(as_array(body["text_embeddings"]), encoder.encode_text(TEXTS[:2]).embeddings)
    assert np.array_equal(as_array(body["image_embeddings"][:1]), expected_images(encoder, [PNG]))
    assert body["image_embeddings"][1] is None and body["errors"][0]["index"] == 1 and body["truncated"] == []


def test_embed_mixed_options_raw_vectors_and_base64(client, encoders, variant):
    body = ok(client.post("/embed/mixed", json={"texts": TEXTS[:2], "images": [b64(PNG)], "normalize": False,
                                                "encoding_format": "base64"}), MixedEmbedResponse)
    encoder = encoders[variant]
    assert np.array_equal(from_base64(body["text_embeddings"]),
                          encoder.encode_text(TEXTS[:2], normalize=False).embeddings)
    assert np.array_equal(from_base64(body["image_embeddings"]), expected_images(encoder, [PNG], normalize=False))


def test_embed_mixed_one_side_only(client):
    texts_only = ok(client.post("/embed/mixed", json={"texts": ["a"]}), MixedEmbedResponse)
    assert len(texts_only["text_embeddings"]) == 1 and texts_only["image_embeddings"] == []
    images_only = ok(client.post("/embed/mixed", json={"images": [b64(PNG)]}), MixedEmbedResponse)
    assert images_only["text_embeddings"] == [] and len(images_only["image_embeddings"]) == 1
    error(client.post("/embed/mixed", json={}), 400, "invalid_request")


def test_embed_mixed_with_texts_survives_all_images_failing(client):
    body = ok(client.post("/embed/mixed", json={"texts": ["a"], "images": ["bad!"]}), MixedEmbedResponse)
    assert body["image_embeddings"] == [None] and body["errors"][0]["code"] == "invalid_image"
    error(client.post("/embed/mixed", json={"images": ["bad!"]}), 422, "all_images_failed")


def test_embed_mixed_multipart(client, encoders, variant):
    data = {"images": [(io.BytesIO(PNG), "a.png")], "texts": ["one", "two"]}
    body = ok(client.post("/embed/mixed", data=data, content_type="multipart/form-data"), MixedEmbedResponse)
    assert np.array_equal(as_array(body["text_embeddings"]), encoders[variant].encode_text(["one", "two"]).embeddings)
    assert np.array_equal(as_array(body["image_embeddings"]), expected_images(encoders[variant], [PNG]))


# --- score ----------------------------------------------------------------------------------------

def reference_scores(encoder, blobs, texts):
    images = expected_images(encoder, blobs).astype(np.float64)
    text = encoder.encode_text(texts).embeddings.astype(np.float64)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    cosine = images @ text.T
    logits = encoder.info.logit_scale * cosine
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return cosine, probs / probs.sum(axis=1, keepdims=True)


def test_score_matrix(client, encoders, variant):
    texts = ["a cat", "a dog", "a car"]
    body = ok(client.post("/score", json={"texts": texts, "images": [b64(PNG), "bad!", b64(JPG)]}), ScoreResponse)
    cosine, probs = reference_scores(encoders[variant], [PNG, JPG], texts)
    assert body["cosine"][1] is None and body["clip_score"][1] is None and body["probs"][1] is None
    got = np.array([body["cosine"][0], body["cosine"][2]])
    assert got.shape == (2, 3) and np.allclose(got, cosine, atol=1e-6)
    assert np.allclose([body["probs"][0], body["probs"][2]], probs, atol=1e-6)
    assert np.allclose(np.array(body["probs"][0]).sum(), 1.0)
    assert np.allclose([body["clip_score"][0], body["clip_score"][2]], np.maximum(100 * got, 0))
    assert body["errors"][0]["index"] == 1 and body["pairwise"] is False


def test_score_pairwise(client, encoders, variant):
    texts = ["a cat", "a dog"]
    body = ok(client.post("/score", json={"texts": texts, "images": [b64(PNG), b64(JPG)], "pairwise": True}),
              ScoreResponse)
    cosine, _ = reference_scores(encoders[variant], [PNG, JPG], texts)
    assert np.allclose(body["cosine"], np.diag(cosine), atol=1e-6)
    assert np.allclose(body["clip_score"], np.maximum(100 * np.diag(cosine), 0), atol=1e-4)
    assert body["probs"] is None and body["pairwise"] is True
    error(client.post("/score", json={"texts": texts, "images": [b64(PNG)], "pairwise": True}), 400, "invalid_request")


def test_score_with_cached_embeddings(client, encoders, variant):
    encoder = encoders[variant]
    text_vectors = encoder.encode_text(["a cat", "a dog"], normalize=False).embeddings
    image_vectors = expected_images(encoder, [PNG], normalize=False)
    cosine, probs = reference_scores(encoder, [PNG], ["a cat", "a dog"])
    for body in ({"text_embeddings": text_vectors.tolist(), "images": [b64(PNG)]},
                 {"texts": ["a cat", "a dog"], "image_embeddings": image_vectors.tolist()},
                 {"text_embeddings": text_vectors.tolist(), "image_embeddings": (3 * image_vectors).tolist()}):
        got = ok(client.post("/score", json=body), ScoreResponse)
        assert np.allclose(got["cosine"], cosine, atol=1e-5) and np.allclose(got["probs"], probs, atol=1e-4)


def test_score_rejects_bad_vectors(client, encoders, variant):
    dim = encoders[variant].info.dim
    err = error(client.post("/score", json={"texts": ["a"], "image_embeddings": [[1.0] * (dim + 1)]}), 400,
                "invalid_request")
    assert "image_embeddings[0]" in err["message"] and str(dim) in err["message"]
    error(client.post("/score", json={"texts": ["a"], "image_embeddings": [[0.0] * dim]}), 400, "invalid_request")
    error(client.post("/score", json={"texts": ["a"], "images": [b64(PNG)], "text_embeddings": [[1.0] * dim]}),
          400, "invalid_request")
    error(client.post("/score", json={"images": [b64(PNG)]}), 400, "invalid_request")


def test_score_multipart(client):
    data = {"images": [(io.BytesIO(PNG), "a.png")], "texts": ["a", "b"]}
    body = ok(client.post("/score", data=data, content_type="multipart/form-data"), ScoreResponse)
    assert np.array(body["cosine"]).shape == (1, 2)


# --- meta endpoints -------------------------------------------------------------------------------

def test_health_and_info(client, encoders, variant):
    assert ok(client.get("/health"), HealthResponse) == {"status": "ok"}
    info = ok(client.get("/"), InfoResponse)
    assert info["status"] == "ok" and info["model"] == encoders[variant].info.as_dict()
    assert info["limits"]["max_items"] == 8 and "POST /score" in info["endpoints"]


def test_openapi_is_generated_from_the_request_models(client):
    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) >= {"/", "/health", "/embed/text", "/embed/image", "/embed/mixed", "/score",
                                 "/openapi.json", "/docs"}
    schemas = doc["components"]["schemas"]
    texts = schemas["TextEmbedRequest"]["properties"]["texts"]
    assert texts["maxItems"] == 8 and texts["items"]["maxLength"] == 400        # the configured limits
    image_body = doc["paths"]["/embed/image"]["post"]["requestBody"]["content"]
    assert image_body["multipart/form-data"]["schema"]["properties"]["images"]["items"]["format"] == "binary"
    assert "422" in doc["paths"]["/embed/image"]["post"]["responses"]
    assert doc["paths"]["/embed/text"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TextEmbedResponse"}


def test_docs_page(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "openapi.json" in response.get_data(as_text=True)


# --- request errors -------------------------------------------------------------------------------

@pytest.fixture
def en(apps):
    return apps("english").test_client()


def test_not_found_and_method_not_allowed_are_json(en):
    error(en.get("/nope"), 404, "not_found")
    err = en.get("/embed/text")
    error(err, 405, "method_not_allowed")
    assert "POST" in err.headers["Allow"]


def test_body_over_limit_is_413(apps):
    client = apps("english", max_body_bytes=2048).test_client()
    error(client.post("/embed/text", json={"texts": ["x" * 3000]}), 413, "payload_too_large")
    data = {"images": [(io.BytesIO(b"\0" * 4096), "big.png")]}
    error(client.post("/embed/image", data=data, content_type="multipart/form-data"), 413, "payload_too_large")


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "application/xml", ""])
def test_unsupported_content_type_is_415(en, ctype):
    error(en.post("/embed/text", data=json.dumps({"texts": ["a"]}), content_type=ctype), 415,
          "unsupported_media_type")


@pytest.mark.parametrize("body", [b"", b"{", b"{'texts': ['a']}", b"\xff\xfe\xfa\x00garbage", b"[" * 100_000,
                                  b'{"texts": ["a"]} trailing'])
def test_malformed_json_is_400(en, body):
    error(en.post("/embed/text", data=body, content_type="application/json"), 400, "invalid_json")


@pytest.mark.parametrize("body,where", [
    ([1, 2], "object"),
    ({"texts": []}, "texts"),
    ({"texts": "a cat"}, "texts"),
    ({"texts": ["a", 5]}, "texts[1]"),
    ({"texts": ["ok", "x" * 401]}, "texts[1]"),
    ({"texts": ["a"] * 9}, "texts"),
    ({"text": ["a"]}, "text"),
    ({"texts": ["a"], "normalize": "maybe"}, "normalize"),
    ({"texts": ["a"], "encoding_format": "hex"}, "encoding_format"),
    ({"texts": [{"nested": [[[[]]]]}]}, "texts[0]"),
])
def test_invalid_fields_are_400_naming_the_field(en, body, where):
    err = error(en.post("/embed/text", json=body), 400, "invalid_request")
    assert where in err["message"]
    assert "Traceback" not in err["message"]


def test_score_with_every_image_failing_is_422(en):
    err = error(en.post("/score", json={"texts": ["a"], "images": ["bad!", "file:///x"]}), 422, "all_images_failed")
    assert [d["code"] for d in err["details"]] == ["invalid_image", "forbidden_url"]


def test_failed_image_is_null_in_base64_format_too(en, encoders):
    body = ok(en.post("/embed/image", json={"images": ["bad!", b64(PNG)], "encoding_format": "base64"}),
              ImageEmbedResponse)
    assert body["embeddings"][0] is None
    assert np.array_equal(from_base64(body["embeddings"][1:]), expected_images(encoders["english"], [PNG]))


@pytest.mark.parametrize("path,body", [("/embed/image", {"images": None, "urls": [b64(PNG)]}),
                                       ("/embed/mixed", {"texts": None, "images": [b64(PNG)]}),
                                       ("/score", {"texts": ["a"], "images": [b64(PNG)], "text_embeddings": None})])
def test_explicit_null_is_refused_as_the_schema_says(en, path, body):
    error(en.post(path, json=body), 400, "invalid_request")


def test_invalid_image_requests(en):
    error(en.post("/embed/image", json={"images": [b64(PNG)], "urls": [b64(PNG)]}), 400, "invalid_request")
    error(en.post("/embed/image", json={}), 400, "invalid_request")
    error(en.post("/embed/image", json={"images": [b64(PNG)] * 9}), 400, "invalid_request")
    error(en.post("/embed/image", data={"image": [(io.BytesIO(PNG), "a.png")]}, content_type="multipart/form-data"),
          400, "invalid_request")
    error(en.post("/embed/image", data={}, content_type="multipart/form-data"), 400, "invalid_request")


# --- engine states and failures through HTTP ------------------------------------------------------

def test_loading_then_ready(tiny_model_dir):
    from engine import EmbeddingEngine
    from handler.app import create_app, load_bundle_encoder

    release = threading.Event()
    settings = tiny_settings(tiny_model_dir)

    def slow_load():
        assert release.wait(30)
        return load_bundle_encoder(settings)

    app = create_app(settings, EmbeddingEngine.from_settings(settings, slow_load))
    client = app.test_client()
    try:
        assert client.get("/health").status_code == 503 and client.get("/health").json == {"status": "loading"}
        response = client.post("/embed/text", json={"texts": ["a"]})
        error(response, 503, "model_loading")
        assert response.headers["Retry-After"]
        assert ok(client.get("/"), InfoResponse)["model"] is None
        release.set()
        assert app.extensions["clipserve"].engine.wait_ready(60)
        assert client.get("/health").json == {"status": "ok"}
        ok(client.post("/embed/text", json={"texts": ["a"]}), TextEmbedResponse)
    finally:
        release.set()
        app.extensions["clipserve"].engine.shutdown()


def test_missing_bundle_reports_failed(tmp_path):
    from handler.app import create_app

    app = create_app(tiny_settings(tmp_path / "empty"))
    client = app.test_client()
    client.get("/health")   # first request starts the load
    assert not app.extensions["clipserve"].engine.wait_ready(60)
    response = client.get("/health")
    assert response.status_code == 503 and response.json["status"] == "failed"
    error(client.post("/embed/text", json={"texts": ["a"]}), 503, "model_unavailable")


def test_model_exception_is_500_without_internals_and_service_recovers(app_with_encoder):
    state = {"fail": True}

    class Flaky:
        def __init__(self, encoder):
            self._encoder, self.info = encoder, encoder.info

        def prepare_image(self, image):
            return self._encoder.prepare_image(image)

        def encode_images(self, images, normalize=True):
            return self._encoder.encode_images(images, normalize=normalize)

        def prepare_text(self, text):
            return self._encoder.prepare_text(text)

        def encode_prepared_texts(self, items, normalize=True):
            if state["fail"]:
                raise RuntimeError("secret internal detail /opt/model.bin")
            return self._encoder.encode_prepared_texts(items, normalize=normalize)

    client = app_with_encoder(Flaky).test_client()
    err = error(client.post("/embed/text", json={"texts": ["a"]}), 500, "internal_error")
    assert "secret" not in json.dumps(err) and "RuntimeError" not in json.dumps(err)
    assert client.get("/health").status_code == 200
    state["fail"] = False
    ok(client.post("/embed/text", json={"texts": ["a"]}), TextEmbedResponse)


def test_full_queue_is_429_with_retry_after(app_with_encoder):
    gates = []

    def gated(encoder):
        gates.append(Gate(encoder))
        return gates[0]

    app = app_with_encoder(gated, queue_size=8, max_items=8, request_timeout_s=10)
    client = app.test_client()
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", client.post("/embed/text",
                                                                                    json={"texts": ["a"]})))
    first.start()
    assert gates[0].entered.wait(10)                                 # the loop is busy with "first"
    eight = [f"b {i}" for i in range(8)]  # distinct: repeated texts are encoded once
    second = threading.Thread(target=lambda: results.setdefault("second", client.post("/embed/text",
                                                                                      json={"texts": eight})))
    second.start()
    deadline = time.monotonic() + 10
    while app.extensions["clipserve"].engine.loop_health().queue_depth < 8:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    response = client.post("/embed/text", json={"texts": ["c"]})
    error(response, 429, "overloaded")
    assert int(response.headers["Retry-After"]) >= 1
    gates[0].release()
    first.join(10)
    second.join(10)
    assert results["first"].status_code == 200 and results["second"].status_code == 200
    assert len(results["second"].json["embeddings"]) == 8


class SlowEncoder:
    """The tiny encoder, made to take ``per_text`` seconds per text: a model whose cost admission can measure."""

    def __init__(self, encoder, per_text: float) -> None:
        self._encoder, self.info, self.per_text = encoder, encoder.info, per_text

    def prepare_text(self, text):
        return self._encoder.prepare_text(text)

    def encode_prepared_texts(self, items, normalize=True):
        time.sleep(self.per_text * len(items))
        return self._encoder.encode_prepared_texts(items, normalize=normalize)


def test_admission_by_expected_wait_over_http(app_with_encoder):
    """QUEUE_MAX_WAIT_S=1 and 0.3 s per text: a burst of three one-text requests (at most 0.9 s of work) is answered
    in full; three texts behind three running is 1.8 s: 429 at once, Retry-After from the estimate, /stats says
    the expected wait; retried after it, the same request is answered."""
    app = app_with_encoder(lambda encoder: SlowEncoder(encoder, 0.3), queue_max_wait_s=1.0, request_timeout_s=10)
    client = app.test_client()
    assert client.post("/embed/text", json={"texts": ["prime the cost"]}).status_code == 200
    burst: list = []
    threads = [threading.Thread(target=lambda i=i: burst.append(client.post("/embed/text", json={"texts": [f"b{i}"]})))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.status_code for r in burst) == [200, 200, 200]

    running = threading.Thread(target=lambda: burst.append(client.post("/embed/text", json={"texts": ["r1", "r2", "r3"]})))
    running.start()
    deadline = time.monotonic() + 5
    while app.extensions["clipserve"].engine.loop_health().busy_for_s == 0:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    asked = time.monotonic()
    response = client.post("/embed/text", json={"texts": ["x1", "x2", "x3"]})
    assert time.monotonic() - asked < 0.5
    error(response, 429, "overloaded")
    assert response.headers["Retry-After"] == "1"  # 0.9 s running - elapsed + 0.9 s own - 1 s budget: under 1 s
    stats = client.get("/stats").get_json()
    assert 0 < stats["queue"]["expected_wait_s"] <= 0.95
    time.sleep(int(response.headers["Retry-After"]))
    assert client.post("/embed/text", json={"texts": ["x1", "x2", "x3"]}).status_code == 200
    running.join(10)
    assert burst[-1].status_code == 200


def test_wedged_model_times_out_and_health_turns_unhealthy(app_with_encoder):
    gates = []

    def gated(encoder):
        gates.append(Gate(encoder))
        return gates[0]

    app = app_with_encoder(gated, request_timeout_s=0.5, stall_timeout_s=1.0)
    client = app.test_client()
    error(client.post("/embed/text", json={"texts": ["a"]}), 504, "timeout")
    assert client.get("/health").status_code == 200            # busy for 0.5 s only: not yet stalled
    time.sleep(0.7)
    health = client.get("/health")
    assert health.status_code == 503 and health.json["status"] == "unhealthy"
    HealthResponse.model_validate(health.json)
    gates[0].release()
    deadline = time.monotonic() + 10
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ok(client.post("/embed/text", json={"texts": ["after"]}), TextEmbedResponse)


def smooth_jpeg(width: int, height: int) -> bytes:
    """A photo-like JPEG (smooth colour fields), large enough for draft decoding to apply."""
    rng = np.random.default_rng(7)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((width, height), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_large_jpegs_are_decoded_at_twice_the_model_size_unless_exact_decoding_is_asked(apps, english_encoder):
    from inputs import decode_image

    blob = smooth_jpeg(2000, 1500)
    size = english_encoder.info.image_size
    draft = decode_image(blob, max_pixels=10**8, draft_size=2 * size)
    assert draft.size == (1000, 750) and min(draft.size) >= 2 * size   # JPEG's 1/2 scale, not below 448
    fast = np.asarray(apps("english").test_client().post("/embed/image", json={"images": [b64(blob)]})
                      .json["embeddings"], np.float32)
    exact = np.asarray(apps("english", exact_image_decode=True).test_client()
                       .post("/embed/image", json={"images": [b64(blob)]}).json["embeddings"], np.float32)
    assert np.array_equal(fast, english_encoder.encode_images([english_encoder.prepare_image(draft)]))
    full = decode_image(blob, max_pixels=10**8)
    assert full.size == (2000, 1500)
    assert np.array_equal(exact, english_encoder.encode_images([english_encoder.prepare_image(full)]))
    assert float((fast * exact).sum()) >= 0.99999


def test_small_and_non_jpeg_images_are_decoded_exactly_either_way(apps):
    from inputs import decode_image

    png = image_bytes("PNG", size=(2000, 1500))
    assert decode_image(png, max_pixels=10**8, draft_size=448).size == (2000, 1500)
    small = smooth_jpeg(640, 480)  # 640 // 448 = 1: no reduction possible
    assert decode_image(small, max_pixels=10**8, draft_size=448).size == (640, 480)


def test_info_reports_the_precision_in_force(apps):
    assert apps("english").test_client().get("/").json["model"]["precision"] == "fp32"
    assert apps("english", precision="bf16").test_client().get("/").json["model"]["precision"] == "bf16"


def test_cors_through_the_service_with_keys_on(apps):
    """The factory wires CORS before auth: a browser on the allowed origin can preflight every API route without
    a key, its calls carry the headers, and the other origins get none."""
    client = apps(cors="https://app.example.com", api_keys="page-key").test_client()
    for path in ("/embed/text", "/embed/image", "/score", "/v1/embeddings", "/vectorize"):
        r = client.options(path, headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization,content-type"})
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example.com", path
    ok = client.post("/embed/text", json={"texts": ["a cat"]},
                     headers={"Origin": "https://app.example.com", "Authorization": "Bearer page-key"})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    other = client.post("/embed/text", json={"texts": ["a cat"]},
                        headers={"Origin": "https://other.example", "Authorization": "Bearer page-key"})
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
