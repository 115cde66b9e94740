"""Loading: offline with the network blocked, clear failures for missing or broken bundles,
architectures the registry does not know, and the CPU budget for torch threads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from models import registry, threads
from models.bundle import BundleError, check_bundle, verify_bundle
from models.loader import load_encoder

REPO = Path(__file__).resolve().parents[2]

BLOCKED_LOAD = textwrap.dedent("""
    import json, socket, sys, time
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(repr(args)[:100])
        raise OSError("network blocked by the test")
    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.create_connection = socket.getaddrinfo = refuse

    from models.bundle import BundleError
    from models.loader import load_encoder
    good_dir, missing_dir = sys.argv[1:3]
    results = {}
    for variant in ("english", "multilingual"):
        encoder = load_encoder(variant, good_dir)
        shape = list(encoder.encode_text(["a photo of a cat"]).embeddings.shape)
        start = time.monotonic()
        try:
            load_encoder(variant, missing_dir)
            error = None
        except BundleError as exc:
            error = str(exc)
        results[variant] = {"shape": shape, "error": error, "seconds": time.monotonic() - start}
    print(json.dumps({"results": results, "attempts": attempts}))
""")


def test_loads_with_network_blocked_and_fails_fast_without_bundle(tiny_model_dir, tmp_path):
    """A fresh interpreter (so every import happens under the block) with sockets made to fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", BLOCKED_LOAD, str(tiny_model_dir), str(tmp_path)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    for variant, result in report["results"].items():
        assert result["shape"] == [1, 32]
        assert result["error"] is not None and f"python -m models.bake --variant {variant}" in result["error"]
        assert str(tmp_path / variant / "manifest.json") in result["error"]
        assert result["seconds"] < 1.0


@pytest.fixture
def english_copy(tiny_model_dir, tmp_path) -> Path:
    shutil.copytree(tiny_model_dir / "english", tmp_path / "english")
    return tmp_path


def test_missing_weight_file_is_named(english_copy):
    (english_copy / "english" / "open_clip_model.safetensors").unlink()
    with pytest.raises(BundleError) as err:
        load_encoder("english", english_copy)
    assert "missing" in str(err.value) and "open_clip_model.safetensors" in str(err.value)
    assert "python -m models.bake --variant english" in str(err.value)


def test_truncated_weight_file_is_reported(english_copy):
    weights = english_copy / "english" / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BundleError, match="open_clip_model.safetensors has 1000 bytes"):
        load_encoder("english", english_copy)


def test_unfinished_bundle_without_manifest_is_rejected(english_copy):
    (english_copy / "english" / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_encoder("english", english_copy)


def test_corrupted_file_fails_verification_but_not_the_cheap_check(english_copy):
    weights = english_copy / "english" / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    check_bundle(english_copy, "english")  # sizes only: boot stays fast
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(english_copy, "english")


def test_bundle_of_another_variant_is_rejected(english_copy):
    (english_copy / "english").rename(english_copy / "multilingual")
    with pytest.raises(BundleError, match="is for variant 'english'"):
        load_encoder("multilingual", english_copy)


def test_unknown_variant_lists_the_valid_names(tmp_path):
    with pytest.raises(registry.UnknownVariant) as err:
        load_encoder("klingon", tmp_path)
    assert "english" in str(err.value) and "multilingual" in str(err.value)
    with pytest.raises(registry.UnknownVariant, match="available: english, multilingual"):
        registry.get("nope")


def test_registry_hands_out_copies():
    variant = registry.get("english")
    assert variant.clip.arch == "ViT-B-32-quickgelu"  # not plain ViT-B-32: the weights need QuickGELU
    assert registry.get("english") == variant and registry.get("english") is not variant
    assert registry.get("multilingual").clip.weights.sha256_prefix == "699c4b84"


def test_weights_are_loaded_not_randomly_initialised(english_encoder, tiny_model_dir):
    """Every parameter is the file's value and nothing is left on the meta device."""
    from safetensors.torch import load_file

    model = english_encoder._image.model
    saved = load_file(tiny_model_dir / "english" / "open_clip_model.safetensors")
    state = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert torch.equal(model.attn_mask, torch.full((77, 77), float("-inf")).triu(1))


def test_mclip_buffers_are_real(multilingual_encoder):
    model = multilingual_encoder._text.model
    embeddings = model.transformer.embeddings
    assert torch.equal(embeddings.position_ids, torch.arange(514).expand(1, -1))
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))


def test_an_architecture_the_registry_does_not_know_loads_from_its_manifest(tmp_path):
    """A bundle for another open_clip family (a shrunk ModifiedResNet, BatchNorm buffers included)
    loads with no code change, and equals the model it was saved from."""
    from models import bundle, manifest
    from models.tiny import random_clip

    config = {"embed_dim": 32, "quick_gelu": False,
              "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    torch.manual_seed(3)
    model = random_clip(config)
    variant = registry.Variant(name="future-rn", description="test only", clip=registry.openclip_from_url(
        "RN-tiny", "random", url="https://example.invalid/rn_tiny.safetensors"))
    with bundle.stage(tmp_path, variant.name) as staging:
        manifest.save_safetensors(manifest.clip_state_to_save(model, image_only=False), staging / manifest.CLIP_WEIGHTS)
        bundle.publish(staging, tmp_path, manifest.build_manifest(variant, config, origin="test", sources=[]))

    encoder = load_encoder("future-rn", tmp_path)
    assert (encoder.info.image_size, encoder.info.dim, encoder.info.architecture) == (64, 32, "RN-tiny")
    from PIL import Image
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    x = encoder.prepare_image(image)
    with torch.no_grad():
        want = model.encode_image(x[None], normalize=True).numpy()
    np.testing.assert_allclose(encoder.encode_images([x]), want, atol=1e-5, rtol=0)


def test_cpu_budget_reads_cgroup_v2_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cpu_budget(tmp_path) == 2  # 1.5 CPUs rounds up
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cpu_budget(tmp_path) == 8
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert threads.cpu_budget(tmp_path) == 1


def test_cpu_budget_reads_cgroup_v1_quota_and_affinity(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 3)
    v1 = tmp_path / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cpu_budget(tmp_path) == 3  # affinity is the tighter limit
    (v1 / "cpu.cfs_quota_us").write_text("1\n")
    assert threads.cpu_budget(tmp_path) == 1  # a sliver of one CPU is still one thread
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert threads.cpu_budget(tmp_path) == 3
    assert threads.cpu_budget(tmp_path / "no-cgroup-here") == 3


def test_configure_torch_threads_applies_override():
    before = torch.get_num_threads()
    try:
        assert threads.configure_torch_threads(1) == 1 and torch.get_num_threads() == 1
        assert threads.configure_torch_threads() == 1  # no value: keep what is in force
        with pytest.raises(ValueError):
            threads.configure_torch_threads(0)
    finally:
        threads.configure_torch_threads(before)


def test_tiny_bundles_are_deterministic_per_seed(tiny_model_dir, tmp_path):
    from models.tiny import make_bundle

    def hashes(root: Path, variant: str) -> dict:
        return json.loads((root / variant / "manifest.json").read_text())["files"]

    for variant in ("english", "multilingual"):
        make_bundle(variant, tmp_path / "same", seed=0, onnx=False)
        make_bundle(variant, tmp_path / "other", seed=1, onnx=False)
        same = hashes(tmp_path / "same", variant)
        assert same == {k: v for k, v in hashes(tiny_model_dir, variant).items() if k in same}  # ONNX files aside
        weights = [n for n in hashes(tmp_path / "other", variant) if n.endswith(".safetensors")]
        assert all(hashes(tmp_path / "other", variant)[n] != hashes(tiny_model_dir, variant)[n] for n in weights)
