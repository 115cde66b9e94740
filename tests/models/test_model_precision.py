"""PRECISION: bf16 weights stay within cosine 0.999 of fp32 for every tower; `auto` follows the CPU's flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import precision
from models.loader import load_encoder

MIN_COSINE = 0.999
TEXTS = ["a photo of a cat", "", "ünïcödé тексты 文字 🙂", "a dog on the street at night",
         " ".join(["the house with a green tree"] * 40)]
REPO = Path(__file__).resolve().parents[2]


def sample_images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((480, 640), (300, 300))]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def assert_bf16_close(model_dir: Path, variant: str) -> None:
    fp32 = load_encoder(variant, model_dir, precision="fp32")
    bf16 = load_encoder(variant, model_dir, precision="bf16")
    assert (fp32.info.precision, bf16.info.precision) == ("fp32", "bf16")
    texts32, texts16 = fp32.encode_text(TEXTS), bf16.encode_text(TEXTS)
    assert texts16.embeddings.dtype == np.float32 and texts16.truncated == texts32.truncated
    assert min_cosine(texts32.embeddings, texts16.embeddings) >= MIN_COSINE
    images = sample_images()
    images32 = fp32.encode_images([fp32.prepare_image(im) for im in images])
    images16 = bf16.encode_images([bf16.prepare_image(im) for im in images])
    assert min_cosine(images32, images16) >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(images16, axis=1), 1.0, atol=1e-5)  # still normalized in fp32


@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_bf16_towers_stay_close_to_fp32_on_tiny_bundles(tiny_model_dir, variant):
    assert_bf16_close(tiny_model_dir, variant)


@pytest.mark.timeout(1500)  # may be the first to make the real-size bundles (tests/conftest.py)
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_bf16_towers_stay_close_to_fp32_on_real_size_bundles(real_size_model_dir, variant):
    assert_bf16_close(real_size_model_dir, variant)


@pytest.mark.parametrize("flags, expected", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "bf16"),  # Sapphire Rapids: AMX
    ("flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile", "bf16"),              # AMX
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", "bf16"),  # AMD EPYC Zen 4 (measured)
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni", "fp32"),            # AVX-512 without bf16: emulated, slow
    ("Features\t: fp asimd sve bf16 i8mm", "bf16"),                       # Arm (Graviton 3, Axion)
    ("Features\t: fp asimd crc32", "fp32"),                               # older Arm
])
def test_auto_uses_bf16_only_where_the_cpu_computes_it(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{flags}\n\nprocessor\t: 1\n{flags}\n")
    assert precision.resolve("auto", cpuinfo) == expected
    assert precision.resolve("fp32", cpuinfo) == "fp32" and precision.resolve("bf16", cpuinfo) == "bf16"


def test_unreadable_cpuinfo_means_fp32(tmp_path):
    assert precision.resolve("auto", tmp_path / "missing") == "fp32"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        precision.resolve("fp16")


@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_bf16_from_the_bundles_bf16_copy_equals_converting_at_load(tiny_model_dir, tmp_path, variant):
    """Bundles carry bf16 copies (weights_bf16); a bundle without them is converted at load, to the same vectors."""
    import json
    import shutil

    with_copies = load_encoder(variant, tiny_model_dir, precision="bf16")
    stripped = tmp_path / variant
    shutil.copytree(tiny_model_dir / variant, stripped)
    manifest = json.loads((stripped / "manifest.json").read_text())
    assert manifest["clip"]["weights_bf16"].endswith(".bf16.safetensors")
    for section in ("clip", "text"):
        manifest[section].pop("weights_bf16", None)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if ".bf16." not in k}
    (stripped / "manifest.json").write_text(json.dumps(manifest))
    converted = load_encoder(variant, tmp_path, precision="bf16")
    images = sample_images()
    assert np.array_equal(with_copies.encode_text(TEXTS).embeddings, converted.encode_text(TEXTS).embeddings)
    assert np.array_equal(with_copies.encode_images([with_copies.prepare_image(im) for im in images]),
                          converted.encode_images([converted.prepare_image(im) for im in images]))
