"""A SigLIP 2 variant served through the production app: what a client sees differs from CLIP where the model does.

/score's probabilities are sigmoid(logit_scale * cos + logit_bias) per pair (and say so), GET / names the license
and the score kind, long texts are cut to 64 tokens and listed, draft JPEG decoding keeps the exact path's vectors.
"""

from __future__ import annotations

import numpy as np
import pytest

from api_helpers import b64, image_bytes
from app_helpers import ready, tiny_settings
from handler.app import create_app
from models.loader import load_encoder
from test_api_app import smooth_jpeg

VARIANT = "siglip2-b16"


@pytest.fixture(scope="module")
def siglip_app(siglip_model_dir):
    made = {}

    def get(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in made:
            made[key] = ready(create_app(tiny_settings(siglip_model_dir, model_variant=VARIANT, **overrides)))
        return made[key]

    yield get
    for app in made.values():
        app.extensions["clipserve"].engine.shutdown()


@pytest.fixture(scope="module")
def encoder(siglip_model_dir):
    return load_encoder(VARIANT, siglip_model_dir, precision="fp32", runtime="torch")


def test_info_names_license_score_kind_and_context(siglip_app):
    model = siglip_app().test_client().get("/").json["model"]
    assert model["variant"] == VARIANT and model["license"] == "Apache-2.0"
    assert model["score_kind"] == "sigmoid" and isinstance(model["logit_bias"], float)
    assert (model["context_length"], model["image_size"]) == (64, 256)


def test_score_gives_sigmoid_probabilities_per_pair(siglip_app, encoder):
    labels = ["a photo of a cat", "a photo of a dog", "a red car"]
    picture = image_bytes("PNG", (300, 200))
    answer = siglip_app().test_client().post("/score", json={"texts": labels, "images": [b64(picture)]}).json
    assert answer["probs_kind"] == "sigmoid"
    from inputs import decode_image

    image = encoder.encode_images([encoder.prepare_image(decode_image(picture, max_pixels=10**8))])
    cosine = image.astype(np.float64) @ encoder.encode_text(labels).embeddings.T.astype(np.float64)
    info = encoder.info
    want = 1 / (1 + np.exp(-(info.logit_scale * cosine + info.logit_bias)))
    np.testing.assert_allclose(answer["probs"], want, atol=1e-6)
    assert abs(sum(answer["probs"][0]) - 1) > 1e-3  # not a softmax: they need not sum to 1
    np.testing.assert_allclose(answer["clip_score"], np.maximum(100 * cosine, 0), atol=1e-4)  # clip_score's formula

    pairwise = siglip_app().test_client().post("/score", json={
        "texts": labels[:1], "images": [b64(picture)], "pairwise": True}).json
    assert pairwise["probs_kind"] == "sigmoid"
    np.testing.assert_allclose(pairwise["probs"], want[:, 0], atol=1e-6)  # a sigmoid needs no other label


def test_clip_variants_still_say_softmax(apps):
    answer = apps("english").test_client().post("/score", json={
        "texts": ["a", "b"], "images": [b64(image_bytes())]}).json
    assert answer["probs_kind"] == "softmax" and abs(sum(answer["probs"][0]) - 1) < 1e-9
    assert apps("english").test_client().get("/").json["model"]["score_kind"] == "softmax"


def test_long_texts_are_cut_to_64_tokens_and_listed(siglip_app, encoder):
    long = "the house with a green tree " * 12  # 72 tokens here, under MAX_TEXT_CHARS
    answer = siglip_app().test_client().post("/embed/text", json={"texts": ["a cat", long]}).json
    assert answer["truncated"] == [1]
    np.testing.assert_allclose(answer["embeddings"], encoder.encode_text(["a cat", long]).embeddings, atol=1e-6)
    refused = siglip_app().test_client().post("/embed/text", json={"texts": [long], "truncate": False})
    assert refused.status_code == 400 and "64 tokens" in refused.json["error"]["message"]


def test_draft_decoding_keeps_the_squashed_exact_vectors(siglip_app, encoder):
    """A large JPEG decoded at 1/2 scale, then squashed to 256 px: cosine to full-size decoding >= 0.99999, as for
    the CLIP variants."""
    blob = smooth_jpeg(2400, 1200)  # 2:1, so the squash really changes the aspect ratio
    fast = np.asarray(siglip_app().test_client().post("/embed/image", json={"images": [b64(blob)]})
                      .json["embeddings"], np.float32)
    exact = np.asarray(siglip_app(exact_image_decode=True).test_client()
                       .post("/embed/image", json={"images": [b64(blob)]}).json["embeddings"], np.float32)
    assert not np.array_equal(fast, exact)  # the draft path did run
    assert float((fast * exact).sum()) >= 0.99999
