"""The Encoder contract (ARCHITECTURE.md) on tiny bundles of both variants, through load_encoder."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

VARIANTS = ("english", "multilingual")
EXPECTED = {  # tiny bundles: real image sizes and contexts, 32-d
    "english": {"dim": 32, "image_size": 224, "context_length": 77, "architecture": "ViT-B-32-quickgelu"},
    "multilingual": {"dim": 32, "image_size": 240, "context_length": 512,
                     "architecture": "XLM-Roberta-Large-Vit-B-16Plus + ViT-B-16-plus-240"},
}


@pytest.fixture(params=VARIANTS)
def encoder(request):
    return request.getfixturevalue(f"{request.param}_encoder")


def random_image(width: int = 320, height: int = 200, seed: int = 0, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def test_info_describes_the_bundle(encoder):
    info = encoder.info
    want = EXPECTED[info.variant]
    assert {k: getattr(info, k) for k in want} == want
    # random init of open_clip's logit_scale is log(1/0.07): the multiplier is exp of that
    assert info.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)
    d = info.as_dict()
    assert d["variant"] == info.variant and set(d) >= {"text_tower", "image_tower", "dim", "logit_scale"}


def test_text_embeddings_are_normalized_float32(encoder):
    result = encoder.encode_text(["a photo of a cat", "a dog on the street", "🙂 ünïcode"])
    assert result.embeddings.shape == (3, encoder.info.dim)
    assert result.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    assert result.truncated == []


def test_unnormalized_text_is_the_same_direction(encoder):
    texts = ["a photo of a cat", "red car"]
    raw = encoder.encode_text(texts, normalize=False).embeddings
    unit = encoder.encode_text(texts).embeddings
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


def test_text_in_a_batch_equals_text_alone(encoder):
    """Padding/trimming to the batch's longest text must not change a shorter text's vector."""
    texts = ["cat", "a photo of a red car on the street at night with a man and a woman"]
    batch = encoder.encode_text(texts).embeddings
    for i, text in enumerate(texts):
        np.testing.assert_allclose(encoder.encode_text([text]).embeddings[0], batch[i], atol=1e-5)


def test_image_embeddings_are_normalized_float32(encoder):
    size = encoder.info.image_size
    prepared = [encoder.prepare_image(random_image(seed=i)) for i in range(3)]
    assert all(x.shape == (3, size, size) and x.dtype == torch.float32 for x in prepared)
    vectors = encoder.encode_images(prepared)
    assert vectors.shape == (3, encoder.info.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_prepare_image_accepts_any_mode(english_encoder, mode):
    x = english_encoder.prepare_image(random_image(mode=mode))
    assert x.shape == (3, 224, 224)


def test_empty_lists_give_empty_arrays(encoder):
    text = encoder.encode_text([])
    assert text.embeddings.shape == (0, encoder.info.dim) and text.embeddings.dtype == np.float32
    assert text.truncated == []
    images = encoder.encode_images([])
    assert images.shape == (0, encoder.info.dim) and images.dtype == np.float32


def test_long_texts_are_truncated_and_reported(encoder):
    two_thousand_words = " ".join(["photo", "cat", "house", "street"] * 500)
    result = encoder.encode_text(["a cat", two_thousand_words, "a dog", two_thousand_words + " tree"])
    assert result.truncated == [1, 3]
    assert result.embeddings.shape == (4, encoder.info.dim)
    assert np.isfinite(result.embeddings).all()


def test_text_at_exactly_the_context_is_not_reported(english_encoder):
    # "cat" is one BPE token: SOT + 75 + EOT = 77 fits, 76 does not
    fits, cut = " ".join(["cat"] * 75), " ".join(["cat"] * 76)
    assert english_encoder.encode_text([fits, cut]).truncated == [1]


def test_six_hundred_xlmr_tokens_are_truncated(multilingual_encoder):
    tokenizer = multilingual_encoder._text.tokenizer
    text = " ".join(["cat"] * 598)  # one token each, plus <s> and </s>
    assert len(tokenizer(text)["input_ids"]) == 600
    fits = " ".join(["cat"] * 510)
    result = multilingual_encoder.encode_text([fits, text])
    assert result.truncated == [1]
    assert np.isfinite(result.embeddings).all()


def test_wrong_inputs_raise(encoder):
    with pytest.raises(TypeError):
        encoder.encode_text(["ok", 3])
    with pytest.raises(ValueError, match="prepare_image"):
        encoder.encode_images([torch.zeros(3, 10, 10)])


def test_prepare_image_from_many_threads_while_another_encodes(english_encoder):
    """Request threads prepare images while the inference thread runs the model: same tensors as alone."""
    images = [random_image(seed=i, width=200 + 10 * i) for i in range(8)]
    expected = [english_encoder.prepare_image(im) for im in images]
    stop = threading.Event()
    encoded = []

    def inference_loop():
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            encoded.append(english_encoder.encode_images(expected[:4]))

    worker = threading.Thread(target=inference_loop)
    worker.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(english_encoder.prepare_image, images * 4))
    finally:
        stop.set()
        worker.join(timeout=30)
    assert all(torch.equal(r, expected[i % 8]) for i, r in enumerate(results))
    assert encoded and all(np.allclose(e, encoded[0], atol=1e-6) for e in encoded)
