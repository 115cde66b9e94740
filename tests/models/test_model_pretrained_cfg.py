"""Registry entries get what open_clip's pretrained cfg says for their (arch, tag): `quick_gelu` in the
model config, mean/std/interpolation/resize_mode in the preprocessing, in tiny and baked bundles alike.

open_clip checks nothing when `pretrained` is a file path, so a registry entry `ViT-L-14` + `openai`
would otherwise build GELU for weights trained with QuickGELU and serve wrong vectors silently.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image
from safetensors.torch import load_file

from models import bake, manifest, registry
from models.bundle import sha256_file
from models.loader import load_encoder
from models.manifest import PretrainedConflict
from models.registry import OpenClipModel, Source, Variant
from models.tiny import make_bundle, random_clip, shrink_clip_config

TEXTS = ["a photo of a cat", "a red car at night"]


def entry(name: str, arch: str, tag: str, **preprocess) -> Variant:
    return Variant(name, "test only", clip=registry.openclip_from_hub(arch, tag, repo=f"test/{name}", **preprocess))


@pytest.fixture
def register(monkeypatch):
    """Register test variants for one test; the registry is restored afterwards."""
    def add(variant: Variant) -> Variant:
        monkeypatch.setitem(registry._VARIANTS, variant.name, variant)
        return variant
    return add


def open_clip_preprocess(arch: str, tag: str) -> dict:
    """What `create_model_and_transforms(arch, pretrained=tag)` uses: PreprocessCfg defaults + the tag's cfg."""
    return merge_preprocess_dict(asdict(PreprocessCfg()), open_clip.get_pretrained_cfg(arch, tag))


def reference_outputs(config: dict, weights: Path, preprocess: dict, image: Image.Image):
    """open_clip's own classes and transform: the model built from `config`, the file loaded strictly."""
    model = random_clip(config)
    model.load_state_dict(load_file(weights), strict=True)
    transform = image_transform_v2(PreprocessCfg(**preprocess), is_train=False)
    tokens = open_clip.tokenize(TEXTS)
    with torch.no_grad():
        return (model.encode_text(tokens, normalize=True).numpy(),
                model.encode_image(transform(image)[None], normalize=True).numpy())


@pytest.mark.parametrize("arch, tag, needs_quick_gelu", [
    ("ViT-B-32", "openai", True),  # plain architecture, tag trained with QuickGELU
    ("ViT-H-14", "dfn5b", True),  # QuickGELU and resize_mode "squash"
    ("ViT-L-14", "laion2b_s32b_b82k", False),  # plain GELU, mean/std (0.5, 0.5, 0.5)
])
def test_tiny_bundle_takes_quick_gelu_and_preprocessing_from_the_tag(arch, tag, needs_quick_gelu, register, tmp_path):
    variant = register(entry("pcfg-test", arch, tag))
    path = make_bundle(variant.name, tmp_path, onnx=False)
    spec = json.loads((path / "manifest.json").read_text())

    want_config = shrink_clip_config(open_clip.get_model_config(arch))
    if needs_quick_gelu:
        assert not want_config.get("quick_gelu")  # the architecture alone would say GELU
        want_config["quick_gelu"] = True
    assert spec["clip"]["config"] == want_config
    assert spec["clip"]["config"].get("quick_gelu", False) is needs_quick_gelu
    pcfg = open_clip_preprocess(arch, tag)
    assert spec["preprocess"] == {"image_size": 224, "mean": list(pcfg["mean"]), "std": list(pcfg["std"]),
                                  "interpolation": pcfg["interpolation"], "resize_mode": pcfg["resize_mode"]}

    # The loader serves what open_clip computes for that config, with the tag's transform ...
    encoder = load_encoder(variant.name, tmp_path)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 180, 3), dtype=np.uint8))
    want_text, want_image = reference_outputs(want_config, path / "open_clip_model.safetensors",
                                              dict(pcfg, size=224), image)
    np.testing.assert_allclose(encoder.encode_text(TEXTS).embeddings, want_text, atol=1e-5, rtol=0)
    np.testing.assert_allclose(encoder.encode_images([encoder.prepare_image(image)]), want_image, atol=1e-5, rtol=0)
    # ... and the activation matters: the other one gives other vectors from the same file.
    other = dict(copy.deepcopy(want_config), quick_gelu=not needs_quick_gelu)
    wrong_text, _ = reference_outputs(other, path / "open_clip_model.safetensors", dict(pcfg, size=224), image)
    assert np.abs(wrong_text - want_text).max() > 1e-3


def test_baked_bundle_takes_quick_gelu_and_preprocessing_from_the_tag(monkeypatch, register, tmp_path):
    """Bake from a local mirror: a shrunk plain (GELU) config, and a tag that open_clip's pretrained
    cfg (stood in for here: real tags are full size) marks QuickGELU with non-default preprocessing."""
    arch, tag = "pcfg-test-plain", "qg_tag"
    configs = tmp_path / "configs"
    configs.mkdir()
    config = shrink_clip_config(open_clip.get_model_config("ViT-B-32"))
    (configs / f"{arch}.json").write_text(json.dumps(config))
    open_clip.add_model_config(configs)
    tag_cfg = {"url": "", "hf_hub": "", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
               "interpolation": "bilinear", "resize_mode": "squash", "quick_gelu": True}
    real_get = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda model, t: dict(tag_cfg) if (model, t) == (arch, tag) else real_get(model, t))

    mirror = tmp_path / "mirror"
    (mirror / "org/plain").mkdir(parents=True)
    torch.manual_seed(4)
    manifest.save_safetensors(random_clip(dict(config, quick_gelu=True)).state_dict(),
                              mirror / "org/plain/open_clip_model.safetensors")
    weights = mirror / "org/plain/open_clip_model.safetensors"
    variant = register(Variant("pcfg-bake", "test", clip=OpenClipModel(arch, tag, Source(
        "open_clip_model.safetensors", repo="org/plain", revision="0123abc", sha256=sha256_file(weights)))))

    path = bake.bake_variant(variant, tmp_path / "out", bake.LocalDirSource(mirror), onnx=False)
    spec = json.loads((path / "manifest.json").read_text())
    assert spec["clip"]["config"] == dict(config, quick_gelu=True)
    assert spec["preprocess"] == {"image_size": 224, "mean": [0.5] * 3, "std": [0.25] * 3,
                                  "interpolation": "bilinear", "resize_mode": "squash"}
    encoder = load_encoder(variant.name, tmp_path / "out")
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (200, 320, 3), dtype=np.uint8))
    preprocess = merge_preprocess_dict(asdict(PreprocessCfg()), dict(tag_cfg, size=224))
    want_text, want_image = reference_outputs(dict(config, quick_gelu=True), weights, preprocess, image)
    np.testing.assert_allclose(encoder.encode_text(TEXTS).embeddings, want_text, atol=1e-5, rtol=0)
    np.testing.assert_allclose(encoder.encode_images([encoder.prepare_image(image)]), want_image, atol=1e-5, rtol=0)


def test_registry_preprocessing_that_contradicts_the_tag_is_refused(register, tmp_path):
    variant = register(entry("pcfg-conflict", "ViT-B-32", "openai", mean=(0.5, 0.5, 0.5), resize_mode="squash"))
    with pytest.raises(PretrainedConflict, match=r"mean: registry \(0.5, 0.5, 0.5\).*resize_mode: registry 'squash'"):
        make_bundle(variant.name, tmp_path, onnx=False)
    assert list(tmp_path.iterdir()) == []  # nothing that looks like a bundle


def test_registry_values_equal_to_the_tags_are_accepted():
    clip = entry("x", "ViT-B-32", "openai", mean=registry.OPENAI_DATASET_MEAN, interpolation="bicubic").clip
    assert manifest.preprocess_for(clip, 224)["mean"] == list(registry.OPENAI_DATASET_MEAN)


def test_quickgelu_architecture_for_gelu_weights_is_refused(register, tmp_path):
    """`X-quickgelu` + a tag open_clip lists only under `X`, trained with GELU: the same weights, wrong activation."""
    assert open_clip.get_pretrained_cfg("ViT-B-32-quickgelu", "laion2b_s34b_b79k") == {}
    variant = register(entry("pcfg-qg", "ViT-B-32-quickgelu", "laion2b_s34b_b79k"))
    with pytest.raises(PretrainedConflict, match="register the architecture 'ViT-B-32'"):
        make_bundle(variant.name, tmp_path, onnx=False)
    with pytest.raises(PretrainedConflict, match="quick_gelu"):  # a caller passing its own config is checked too
        manifest.build_manifest(variant, open_clip.get_model_config("ViT-B-32-quickgelu"), origin="test", sources=[])


def test_a_tag_open_clip_does_not_know_keeps_the_registry_values():
    clip = entry("x", "ViT-B-32", "my-finetune", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 interpolation="bilinear", resize_mode="squash").clip
    assert manifest.preprocess_for(clip, 224) == {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
                                                  "interpolation": "bilinear", "resize_mode": "squash"}
    assert "quick_gelu" not in manifest.clip_config_for(clip)
    defaults = manifest.preprocess_for(entry("y", "ViT-B-32", "my-finetune").clip, 224)
    assert defaults == {"image_size": 224, "mean": list(registry.OPENAI_DATASET_MEAN),
                        "std": list(registry.OPENAI_DATASET_STD), "interpolation": "bicubic", "resize_mode": "shortest"}


def test_vit_l_14_openai_gets_quick_gelu():
    """The case from the bug report, without building anything."""
    clip = entry("x", "ViT-L-14", "openai").clip
    assert "quick_gelu" not in open_clip.get_model_config("ViT-L-14")
    assert manifest.clip_config_for(clip)["quick_gelu"] is True


def test_the_shipped_variants_agree_with_open_clip(tiny_model_dir):
    """english and multilingual already name what their tags need: their manifests did not change."""
    for name, quick_gelu in (("english", True), ("multilingual", False)):
        clip = registry.get(name).clip
        spec = json.loads((tiny_model_dir / name / "manifest.json").read_text())
        assert manifest.clip_config_for(clip) == open_clip.get_model_config(clip.arch)
        assert spec["clip"]["config"].get("quick_gelu", False) is quick_gelu
        pcfg = open_clip_preprocess(clip.arch, clip.pretrained_tag)
        assert {k: spec["preprocess"][k] for k in ("mean", "std", "interpolation", "resize_mode")} == {
            "mean": list(pcfg["mean"]), "std": list(pcfg["std"]),
            "interpolation": pcfg["interpolation"], "resize_mode": pcfg["resize_mode"]}
