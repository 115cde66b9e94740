"""The SigLIP 2 variants against open_clip on the same (tiny, random) weights, and what is particular to them.

Reference: open_clip's own `create_model(<the bundle's config>, pretrained=<the bundle's weights>)`, its
`HFTokenizer` on the bundle's tokenizer files (context 64, clean='canonicalize'), and `image_transform` with the
preprocessing open_clip's pretrained cfg gives for the real (arch, 'webli') - not what our manifest says.
The tiny image tower is the real timm entrypoint at width 32 (models.tiny_timm); the tokenizer a small Gemma-style
byte-fallback BPE (models.tiny).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from models import bake, pins, registry
from models.bundle import BundleError, sha256_file
from models.loader import load_encoder
from models.tiny_timm import ensure_registered
from test_model_truncation import texts as long_texts

VARIANTS = ("siglip2-b32", "siglip2-b16", "siglip2-so400m")
TEXTS = ["a photo of a cat", "", "A RED car, parked on the street at night!!", "ünïcödé тексты 文字 🙂 猫",
         "the_house—with   a green-tree", " ".join(["the house with a green tree"] * 40)]


def sample_images(size: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    shapes = [(size, size), (480, 640), (333, 120), (90, 70)]  # exact, landscape, tall, upscaled
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    return images + [images[1].convert("L"), images[2].convert("RGBA")]


@pytest.fixture(scope="module")
def references(siglip_model_dir, tmp_path_factory):
    """variant -> (open_clip model, transform, HFTokenizer), built without our loader."""
    configs = tmp_path_factory.mktemp("oc_cfg")
    out = {}
    for variant in VARIANTS:
        bundle = siglip_model_dir / variant
        manifest = json.loads((bundle / "manifest.json").read_text())
        config = manifest["clip"]["config"]
        ensure_registered(config["vision_cfg"]["timm_model_name"])
        name = f"clipserve-test-{variant}"
        (configs / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(configs)
        model = open_clip.create_model(name, pretrained=str(bundle / "open_clip_model.safetensors")).eval()
        real = registry.get(variant).clip
        cfg = open_clip.get_pretrained_cfg(real.arch, real.pretrained_tag)
        size = config["vision_cfg"]["image_size"]
        transform = open_clip.image_transform(size, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                              resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"])
        tokenizer = open_clip.tokenizer.HFTokenizer(str(bundle), context_length=64, clean="canonicalize")
        out[variant] = model, transform, tokenizer
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("runtime, precision, atol", [("torch", "fp32", 1e-5), ("onnx", "fp32", 1e-5),
                                                      ("torch", "bf16", 2e-2)])
def test_texts_images_and_scores_equal_open_clip(siglip_model_dir, references, variant, runtime, precision, atol):
    model, transform, tokenizer = references[variant]
    encoder = load_encoder(variant, siglip_model_dir, runtime=runtime, precision=precision)
    assert (encoder.info.runtime, encoder.info.precision) == (runtime, precision)
    images = sample_images(encoder.info.image_size)
    with torch.no_grad():
        want_text = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
        want_image = model.encode_image(torch.stack([transform(im) for im in images]), normalize=True).numpy()
        want_probs = torch.sigmoid(model.logit_scale.exp() * torch.from_numpy(want_image @ want_text.T)
                                   + model.logit_bias).numpy()
    got = encoder.encode_text(TEXTS)
    assert got.truncated == [5]
    np.testing.assert_allclose(got.embeddings, want_text, atol=atol, rtol=0)
    got_image = encoder.encode_images([encoder.prepare_image(im) for im in images])
    np.testing.assert_allclose(got_image, want_image, atol=atol, rtol=0)
    info = encoder.info
    assert info.score_kind == "sigmoid" and info.license == "Apache-2.0"
    assert info.logit_bias == pytest.approx(float(model.logit_bias.detach())) and info.context_length == 64
    from handler.scoring import probabilities

    probs = probabilities(got_image.astype(np.float64) @ got.embeddings.T.astype(np.float64), info)
    np.testing.assert_allclose(probs, want_probs, atol=atol, rtol=0)


@pytest.mark.parametrize("variant", ["siglip2-b16"])
def test_the_model_input_is_open_clips_bit_for_bit(siglip_model_dir, references, variant):
    """Tokens padded to 64 with the pad id, the EOS kept; images squashed to the square (no crop), on torch and in
    the ONNX runtime's numpy preprocessing alike."""
    _, transform, tokenizer = references[variant]
    for runtime in ("torch", "onnx"):
        encoder = load_encoder(variant, siglip_model_dir, runtime=runtime)
        tower = encoder._text.tokenizer
        rows = tower.rows([encoder.prepare_text(t) for t in TEXTS])
        np.testing.assert_array_equal(rows, tokenizer(TEXTS).numpy())
        for image in sample_images(256):
            np.testing.assert_array_equal(np.asarray(encoder.prepare_image(image)), transform(image).numpy())


@pytest.mark.parametrize("kind", list(long_texts(random.Random(0))))
def test_long_texts_tokenize_a_bounded_prefix_with_the_whole_texts_ids(siglip_model_dir, references, kind):
    """Truncation never refuses: the ids equal HFTokenizer's on the whole text (cut to 64 with the EOS kept)."""
    _, _, tokenizer = references["siglip2-b16"]
    encoder = load_encoder("siglip2-b16", siglip_model_dir, runtime="onnx")
    ours = encoder._text.tokenizer
    text = long_texts(random.Random(0))[kind]
    for length in (10, 80, 300, 1000, len(text)):
        prepared = encoder.prepare_text(text[:length])
        want = tokenizer([text[:length]])[0].tolist()
        assert ours.rows([prepared])[0].tolist() == want, (kind, length)
        whole = len(ours.content_ids(text[:length])) + len(ours.tail)
        assert prepared.truncated == (whole > 64), (kind, length)


def test_a_long_text_costs_its_context_not_its_length(siglip_model_dir):
    """A 1,000,000-character text is tokenized as a bounded prefix: milliseconds, not a pass over all of it."""
    import time

    encoder = load_encoder("siglip2-b16", siglip_model_dir, runtime="onnx")
    text = "the cat sat on the mat " * 45_000
    started = time.perf_counter()
    prepared = encoder.prepare_text(text)
    assert prepared.truncated and len(prepared.ids) == 64
    assert time.perf_counter() - started < 0.5


def test_a_tokenizer_that_no_longer_gives_the_baked_ids_stops_the_load(siglip_model_dir, tmp_path):
    shutil.copytree(siglip_model_dir / "siglip2-b16", tmp_path / "siglip2-b16")
    manifest_path = tmp_path / "siglip2-b16/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["text"]["hf_tokenizer"]["golden"][0]["ids"][0] += 1  # what another tokenizer would have given
    manifest_path.write_text(json.dumps(manifest))
    for runtime in ("torch", "onnx"):
        with pytest.raises(BundleError, match="bake recorded"):
            load_encoder("siglip2-b16", tmp_path, runtime=runtime)


def test_the_manifest_says_license_bias_and_the_tokenizers_special_tokens(siglip_model_dir):
    manifest = json.loads((siglip_model_dir / "siglip2-so400m/manifest.json").read_text())
    assert manifest["license"] == "Apache-2.0" and manifest["logit_bias"]["key"] == "logit_bias"
    assert manifest["preprocess"] == {"image_size": 384, "mean": [0.5] * 3, "std": [0.5] * 3,
                                      "interpolation": "bicubic", "resize_mode": "squash"}
    tokenizer = manifest["text"]["hf_tokenizer"]
    assert (tokenizer["head"], tokenizer["tail"], tokenizer["pad_id"], tokenizer["clean"]) == ([], [1], 0,
                                                                                              "canonicalize")
    assert manifest["onnx"]["text"]["kind"] == "hf" and manifest["onnx"]["image"]["max_abs_diff"] <= 1e-5


# --- the lock: pins for files nobody publishes a pin for --------------------------------------------------------


@pytest.fixture
def siglip_mirror(siglip_model_dir, tmp_path):
    """A local mirror laid out like the hub repo of siglip2-b16 (open_clip weights + tokenizer files)."""
    root = tmp_path / "mirror"
    repo = root / "timm/ViT-B-16-SigLIP2-256"
    repo.mkdir(parents=True)
    bundle = siglip_model_dir / "siglip2-b16"
    shutil.copyfile(bundle / "open_clip_model.safetensors", repo / "open_clip_model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(bundle / name, repo / name)
    (repo / "special_tokens_map.json").write_text("{}")
    # the real entry, with the tiny architecture's config (the mirror holds tiny weights)
    config = json.loads((bundle / "manifest.json").read_text())["clip"]["config"]
    ensure_registered(config["vision_cfg"]["timm_model_name"])
    configs = tmp_path / "oc_cfg"
    configs.mkdir()
    (configs / "clipserve-test-lock.json").write_text(json.dumps(config))
    open_clip.add_model_config(configs)
    real = registry.get("siglip2-b16")
    # open_clip knows no 'webli' tag for the test's architecture name: the real tag's preprocessing, stated
    clip = dataclasses.replace(real.clip, arch="clipserve-test-lock", mean=(0.5,) * 3, std=(0.5,) * 3,
                               interpolation="bicubic", resize_mode="squash")
    variant = dataclasses.replace(real, clip=clip)
    return root, variant


def test_a_file_neither_pinned_nor_locked_is_refused_naming_the_lock(siglip_mirror, tmp_path):
    root, variant = siglip_mirror
    lock_file = tmp_path / "pins.lock.json"
    with pytest.raises(bake.UnpinnedSource, match="--lock"):
        bake.bake_variant(variant, tmp_path / "out", bake.LocalDirSource(root), onnx=False, lock_file=lock_file)
    assert not (tmp_path / "out/siglip2-b16").exists() and not lock_file.exists()


def test_lock_records_what_the_first_bake_got_and_later_bakes_verify_it(siglip_mirror, siglip_model_dir, tmp_path):
    root, variant = siglip_mirror
    lock_file = tmp_path / "pins.lock.json"
    first = bake.bake_variant(variant, tmp_path / "a", bake.LocalDirSource(root), onnx=False, lock=True,
                              lock_file=lock_file)
    locked = pins.load(lock_file)
    weights = "timm/ViT-B-16-SigLIP2-256/open_clip_model.safetensors"
    assert set(locked) == {weights, *(f"timm/ViT-B-16-SigLIP2-256/{f}" for f in registry.SIGLIP2_TOKENIZER)}
    assert locked[weights]["sha256"] == sha256_file(root / weights)
    sources = json.loads((first / "manifest.json").read_text())["sources"]
    assert all(s["locked"] and s["sha256"] == s["sha256_seen"] for s in sources) and len(sources) == 4
    assert bake.bake_variant(variant, tmp_path / "a", bake.LocalDirSource(root), onnx=False,
                             lock_file=lock_file) is None  # baked as locked: up to date

    # a later bake (the image build, serve.sh) with the lock and no flag: verified, same bundle
    second = bake.bake_variant(variant, tmp_path / "b", bake.LocalDirSource(root), onnx=False, lock_file=lock_file)
    assert json.loads((second / "manifest.json").read_text())["sources"] == sources
    a, b = load_encoder("siglip2-b16", tmp_path / "a"), load_encoder("siglip2-b16", tmp_path / "b")
    np.testing.assert_array_equal(a.encode_text(TEXTS).embeddings, b.encode_text(TEXTS).embeddings)
    # a tokenizer loads through the lock as the serving one does
    np.testing.assert_allclose(a.encode_text(TEXTS).embeddings,
                               load_encoder("siglip2-b16", siglip_model_dir).encode_text(TEXTS).embeddings, atol=1e-6)

    # the published file changes: the locked sha256 stops the bake, nothing published
    (root / "timm/ViT-B-16-SigLIP2-256/tokenizer.json").write_text("{}")
    with pytest.raises(bake.ChecksumMismatch, match="pins.lock.json"):
        bake.bake_variant(variant, tmp_path / "c", bake.LocalDirSource(root), onnx=False, lock_file=lock_file)
    assert not (tmp_path / "c/siglip2-b16").exists()


def test_the_committed_lock_is_well_formed():
    """Every entry has a sha256 (and a full commit where it has a revision); a bad hand edit fails here."""
    locked = pins.load()
    known = {pins.key(s) for name in registry.names() for s in bake.all_sources(registry.get(name))}
    assert set(locked) <= known
