"""Our encoders against the reference libraries on the same (tiny, random) weights.

References: open_clip's `create_model_and_transforms(arch, pretrained=<file>)` with its own
`preprocess`, tokenizer, `encode_text` (full 77-token pass) and `encode_image`; for M-CLIP,
`multilingual_clip.MultilingualCLIP.forward` built directly on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models.openclip_tower import encode_text_trimmed

ATOL = 1e-5
TEXTS = [
    "a photo of a cat",
    "",
    "A RED car, parked on the street at night!",
    "ünïcödé тексты 文字 🙂",
    " ".join(["the house with a green tree"] * 40),  # far past 77 tokens
]


def register_config(manifest: dict, name: str, tmp_dir: Path) -> str:
    """Make the bundle's architecture config known to open_clip under `name` (the reference needs a name)."""
    (tmp_dir / f"{name}.json").write_text(json.dumps(manifest["clip"]["config"]))
    open_clip.add_model_config(tmp_dir)
    return name


def sample_images(size: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    shapes = [(size, size), (480, 640), (333, 120), (90, 70)]  # exact, landscape, tall, upscaled
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    images.append(images[1].convert("L"))
    return images


@pytest.fixture(scope="module")
def english_reference(tiny_model_dir, tmp_path_factory):
    bundle = tiny_model_dir / "english"
    manifest = json.loads((bundle / "manifest.json").read_text())
    name = register_config(manifest, "clipserve-test-english", tmp_path_factory.mktemp("oc_cfg"))
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(bundle / manifest["clip"]["weights"]))
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@pytest.fixture(scope="module")
def multilingual_image_reference(tiny_model_dir, tmp_path_factory):
    """open_clip's ViT-B-16-plus-240 path; the bundle keeps only the image tower, so load that part."""
    bundle = tiny_model_dir / "multilingual"
    manifest = json.loads((bundle / "manifest.json").read_text())
    name = register_config(manifest, "clipserve-test-b16plus", tmp_path_factory.mktemp("oc_cfg"))
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    visual = {k.removeprefix("visual."): v for k, v in load_file(bundle / manifest["clip"]["weights"]).items()
              if k.startswith("visual.")}
    model.visual.load_state_dict(visual, strict=True)
    return model.eval(), preprocess


def test_english_tokens_equal_open_clip_tokenizer(english_encoder, english_reference):
    """prepare_text (run in request threads) gives open_clip's token rows, without the padding."""
    _, _, tokenizer = english_reference
    for text, row in zip(TEXTS, tokenizer(TEXTS).tolist(), strict=True):
        ids = list(english_encoder.prepare_text(text).ids)
        assert ids == row[:len(ids)] and not any(row[len(ids):])


def test_multilingual_tokens_equal_truncating_tokenizer(multilingual_encoder, mclip_reference):
    _, tokenizer = mclip_reference
    texts = TEXTS + [" ".join(["cat", "dog", "house"] * 300)]
    want = tokenizer(texts, truncation=True, max_length=512)["input_ids"]
    assert [list(multilingual_encoder.prepare_text(t).ids) for t in texts] == want


def test_english_text_equals_open_clip(english_encoder, english_reference):
    model, _, tokenizer = english_reference
    with torch.no_grad():
        want = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    got = english_encoder.encode_text(TEXTS).embeddings
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    with torch.no_grad():
        want_raw = model.encode_text(tokenizer(TEXTS)).numpy()
    np.testing.assert_allclose(english_encoder.encode_text(TEXTS, normalize=False).embeddings, want_raw,
                               atol=ATOL, rtol=0)


def test_trimmed_text_pass_equals_full_pass(english_reference):
    """Only positions up to the longest EOT are computed; outputs must match the 77-token pass."""
    model, _, tokenizer = english_reference
    for batch in (["cat"], TEXTS[:3], ["a photo of a cat", TEXTS[-1]]):
        tokens = tokenizer(batch)
        with torch.no_grad():
            full = model.encode_text(tokens)
            trimmed = encode_text_trimmed(model, tokens)
        assert (full - trimmed).abs().max().item() < ATOL


def test_english_images_equal_open_clip(english_encoder, english_reference):
    model, preprocess, _ = english_reference
    images = sample_images(224)
    ours = [english_encoder.prepare_image(im) for im in images]
    theirs = [preprocess(im) for im in images]
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    with torch.no_grad():
        want = model.encode_image(torch.stack(theirs), normalize=True).numpy()
    np.testing.assert_allclose(english_encoder.encode_images(ours), want, atol=ATOL, rtol=0)


def test_multilingual_images_equal_open_clip(multilingual_encoder, multilingual_image_reference):
    model, preprocess = multilingual_image_reference
    images = sample_images(240)
    ours = [multilingual_encoder.prepare_image(im) for im in images]
    for a, im in zip(ours, images):
        assert torch.equal(a, preprocess(im))
    with torch.no_grad():
        want = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
    np.testing.assert_allclose(multilingual_encoder.encode_images(ours), want, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def mclip_reference(tiny_model_dir, tmp_path_factory):
    """`MultilingualCLIP` constructed directly (its from_pretrained is broken on transformers 5), its
    base model loaded from a local directory holding the bundle's XLM-R weights."""
    from multilingual_clip.Config_MCLIP import MCLIPConfig
    from multilingual_clip.pt_multilingual_clip import MultilingualCLIP
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    bundle = tiny_model_dir / "multilingual"
    text = json.loads((bundle / "manifest.json").read_text())["text"]
    state = load_file(bundle / text["weights"])
    base = AutoModel.from_config(AutoConfig.for_model(**text["base_config"]))
    base.load_state_dict({k.removeprefix("transformer."): v for k, v in state.items()
                          if k.startswith("transformer.")}, strict=True)
    base_dir = tmp_path_factory.mktemp("xlmr")
    base.save_pretrained(base_dir)
    config = MCLIPConfig(**dict(text["config"], modelBase=str(base_dir)))
    model = MultilingualCLIP(config).eval()
    model.load_state_dict(state, strict=True)
    return model, AutoTokenizer.from_pretrained(str(bundle))


def test_multilingual_text_equals_multilingual_clip(multilingual_encoder, mclip_reference):
    model, tokenizer = mclip_reference
    texts = TEXTS[:4] + ["un chat sur la maison", "the cat"]  # M-CLIP's forward crashes past 512 tokens
    with torch.no_grad():
        want = model.forward(texts, tokenizer).numpy()
    np.testing.assert_allclose(multilingual_encoder.encode_text(texts, normalize=False).embeddings, want,
                               atol=ATOL, rtol=0)
    unit = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(multilingual_encoder.encode_text(texts).embeddings, unit, atol=ATOL, rtol=0)


def test_long_multilingual_text_equals_reference_on_its_first_512_tokens(multilingual_encoder, mclip_reference):
    """Truncation keeps the first 510 tokens and </s>: same as feeding the reference the cut text."""
    model, tokenizer = mclip_reference
    long_text = " ".join(["cat", "dog", "house"] * 300)
    cut = " ".join((["cat", "dog", "house"] * 170)[:510])
    with torch.no_grad():
        want = model.forward([cut], tokenizer).numpy()
    got = multilingual_encoder.encode_text([long_text], normalize=False)
    assert got.truncated == [0]
    np.testing.assert_allclose(got.embeddings, want, atol=ATOL, rtol=0)
