"""The ONNX runtime: every tower's vectors equal the torch fp32 tower's within 1e-5 (normalized), on tiny and
real-size random bundles; its inputs (preprocessing, both tokenizers) are the torch path's exactly; no torch is
imported; int8 is opt-in, refused where bake found it unfaithful; the runtime rule of RUNTIME=auto."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import onnx_export
from models.bundle import BundleError
from models.loader import load_encoder, resolve_runtime

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
TEXTS = ["a cat", "a photo of a red bicycle leaning on a wall, seen from the left", "zwei Hunde im Schnee",
         "一只猫坐在窗台上看着外面的雨", "x" * 3000, " ".join(["a very long caption"] * 300), ""]


def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    shapes = ((480, 640, 3), (100, 700, 3), (240, 240, 3), (37, 51, 3))
    out = [Image.fromarray(rng.integers(0, 256, s, dtype=np.uint8)) for s in shapes]
    out.append(Image.fromarray(rng.integers(0, 256, (90, 80), dtype=np.uint8), "L"))
    return out


def assert_runtimes_agree(model_dir: Path, variant: str) -> None:
    torch_enc = load_encoder(variant, model_dir, precision="fp32", runtime="torch")
    onnx_enc = load_encoder(variant, model_dir, precision="fp32", runtime="onnx")
    assert onnx_enc.info.runtime == "onnx" and onnx_enc.info.precision == "fp32"
    a, b = torch_enc.encode_text(TEXTS), onnx_enc.encode_text(TEXTS)
    assert a.truncated == b.truncated
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=TOLERANCE, rtol=0)
    one_by_one = np.concatenate([onnx_enc.encode_text([t]).embeddings for t in TEXTS])
    np.testing.assert_allclose(one_by_one, a.embeddings, atol=TOLERANCE, rtol=0)
    pictures = images()
    prepared_torch = [torch_enc.prepare_image(im) for im in pictures]
    prepared_onnx = [onnx_enc.prepare_image(im) for im in pictures]
    for x, y in zip(prepared_torch, prepared_onnx):
        np.testing.assert_array_equal(x.numpy(), y)  # the same model input, bit for bit
    np.testing.assert_allclose(onnx_enc.encode_images(prepared_onnx), torch_enc.encode_images(prepared_torch),
                               atol=TOLERANCE, rtol=0)
    raw = onnx_enc.encode_images(prepared_onnx[:2], normalize=False)
    np.testing.assert_allclose(raw, torch_enc.encode_images(prepared_torch[:2], normalize=False),
                               atol=TOLERANCE * float(np.abs(raw).max()), rtol=0)


@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_onnx_fp32_equals_torch_fp32_on_tiny_bundles(tiny_model_dir, variant):
    assert_runtimes_agree(tiny_model_dir, variant)


@pytest.mark.parametrize("variant", ["siglip2-b32", "siglip2-so400m"])
def test_onnx_fp32_equals_torch_fp32_on_tiny_siglip_bundles(siglip_model_dir, variant):
    """timm's MAP-pooled image tower and the full-context text tower export; squash preprocessing in numpy."""
    assert_runtimes_agree(siglip_model_dir, variant)


# The first test to use real_size_model_dir pays for making 3.3 GB of bundles (about 5 minutes on 2 vCPUs).
@pytest.mark.timeout(1500)
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["english", "multilingual"])
def test_onnx_fp32_equals_torch_fp32_on_real_size_bundles(real_size_model_dir, variant):
    assert_runtimes_agree(real_size_model_dir, variant)


def test_the_tokens_are_the_torch_towers_tokens(tiny_model_dir):
    for variant in ("english", "multilingual"):
        torch_enc = load_encoder(variant, tiny_model_dir, precision="fp32", runtime="torch")
        onnx_enc = load_encoder(variant, tiny_model_dir, precision="fp32", runtime="onnx")
        for text in TEXTS + ["&amp; <b>bold</b>", "  spaces   everywhere ", "Zürich 🐱 naïve"]:
            assert onnx_enc.prepare_text(text) == torch_enc.prepare_text(text), (variant, text)


ONNX_IMPORT_CHECK = """
import sys
from models.loader import load_encoder
from PIL import Image
for variant, model_dir in (("english", sys.argv[1]), ("multilingual", sys.argv[1]), ("siglip2-b16", sys.argv[2])):
    enc = load_encoder(variant, model_dir, precision="fp32", runtime="onnx")
    enc.encode_text(["a cat"]); enc.encode_images([enc.prepare_image(Image.new("RGB", (64, 48)))])
print(sorted(m for m in ("torch", "torchvision", "transformers", "open_clip", "timm") if m in sys.modules))
"""


def test_the_onnx_runtime_never_imports_torch(tiny_model_dir, siglip_model_dir):
    out = subprocess.run([sys.executable, "-c", ONNX_IMPORT_CHECK, str(tiny_model_dir), str(siglip_model_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_int8_is_close_and_reports_its_bake_time_fidelity(tiny_model_dir):
    manifest = json.loads((tiny_model_dir / "english" / "manifest.json").read_text())
    int8 = manifest["onnx"]["int8"]
    if not int8["written"]:
        pytest.skip(f"the tiny bundle's int8 graphs were refused: {int8['reason']}")
    fp32 = load_encoder("english", tiny_model_dir, precision="fp32", runtime="onnx")
    quantized = load_encoder("english", tiny_model_dir, precision="int8", runtime="auto")
    assert quantized.info.runtime == "onnx" and quantized.info.precision == "int8"
    assert quantized.info.int8_cosine == {"image": int8["image"]["min_cosine"], "text": int8["text"]["min_cosine"]}
    a, b = fp32.encode_text(TEXTS[:4]).embeddings, quantized.encode_text(TEXTS[:4]).embeddings
    assert np.min(np.sum(a * b, axis=1)) >= 0.95
    assert not np.allclose(a, b, atol=1e-6)  # it is really the quantized graph


def test_bake_refuses_int8_that_loses_fidelity(tiny_model_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_model_dir / "english", tmp_path / "english")
    staged = tmp_path / "english"
    manifest = json.loads((staged / "manifest.json").read_text())
    monkeypatch.setattr(onnx_export, "INT8_MIN_COSINE", 1.0001)  # nothing quantized can reach it
    result = onnx_export.export_bundle(staged, {k: v for k, v in manifest.items() if k != "onnx"}, int8=True)
    int8 = result["onnx"]["int8"]
    assert int8["written"] is False and "below 1.0001" in int8["reason"] and "int8 files not written" in int8["reason"]
    assert not (staged / "image.int8.onnx").exists() and not (staged / "text.int8.onnx").exists()
    with pytest.raises(BundleError, match="no int8 graphs.*below 1.0001"):
        resolve_runtime("auto", "int8", result, staged)


def test_an_export_that_does_not_match_torch_stops_the_bundle(tmp_path, monkeypatch):
    from models.tiny import make_bundle

    monkeypatch.setattr(onnx_export, "EXPORT_TOLERANCE", 0.0)
    with pytest.raises(onnx_export.ExportCheckFailed, match="differs from the torch tower"):
        make_bundle("english", tmp_path, size="tiny", seed=3)
    assert not (tmp_path / "english").exists()


CPU_WITH_BF16 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
CPU_WITHOUT = "flags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize("flags, precision, runtime, expected", [
    (CPU_WITH_BF16, "auto", "auto", ("torch", "bf16")),
    (CPU_WITHOUT, "auto", "auto", ("onnx", "fp32")),
    (CPU_WITH_BF16, "fp32", "auto", ("onnx", "fp32")),
    (CPU_WITH_BF16, "bf16", "auto", ("torch", "bf16")),
    (CPU_WITHOUT, "int8", "auto", ("onnx", "int8")),
    (CPU_WITH_BF16, "auto", "onnx", ("onnx", "fp32")),
    (CPU_WITHOUT, "auto", "torch", ("torch", "fp32")),
])
def test_the_runtime_rule(tmp_path, flags, precision, runtime, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(flags)
    manifest = {"onnx": {"int8": {"written": True}}}
    assert resolve_runtime(runtime, precision, manifest, tmp_path, cpuinfo) == expected


@pytest.mark.parametrize("flags", [CPU_WITH_BF16, CPU_WITHOUT])
def test_bundles_without_graphs_still_load_on_torch(tmp_path, flags):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(flags)
    for precision in ("auto", "fp32"):
        assert resolve_runtime("auto", precision, {}, tmp_path, cpuinfo)[0] == "torch"


@pytest.mark.parametrize("runtime, precision, message", [
    ("torch", "int8", "runs on ONNX Runtime"),
    ("onnx", "bf16", "runs on torch"),
])
def test_impossible_combinations_say_why(tmp_path, runtime, precision, message):
    with pytest.raises(BundleError, match=message):
        resolve_runtime(runtime, precision, {"onnx": {"int8": {"written": True}}}, tmp_path)
    with pytest.raises(BundleError, match="no ONNX graphs"):
        resolve_runtime("onnx", "fp32", {}, tmp_path)
