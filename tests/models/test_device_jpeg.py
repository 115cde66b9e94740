"""IMAGE_DECODE=gpu's decoder (models/device_jpeg.py): torchvision's JPEG decoder and tensor preprocessing give
the exact Pillow path's embeddings (cosine >= 0.999), and whatever it cannot take goes the CPU way, so the
per-image errors are the CPU path's. Run on the CPU everywhere, and on the GPU too where there is one
(bench/bench_gpu.py runs this file on the GPU machine: nvJPEG, through the real loader)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from inputs import ImageError, ImageLimits, decode_image, load_images
from jpegs import cmyk_jpeg, exact, photo, png, with_device_jpeg
from models.loader import load_encoder

pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def preprocess(tiny_model_dir):
    return json.loads((tiny_model_dir / "english" / "manifest.json").read_text())["preprocess"]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", params=DEVICES)
def gpu_style(request, tiny_model_dir, preprocess):
    if request.param == "cuda":  # the real thing: the loader's IMAGE_DECODE=gpu on a GPU
        encoder = load_encoder("english", tiny_model_dir, precision="fp32", runtime="torch", device="cuda",
                               image_decode="gpu")
        assert encoder.info.image_decode == "gpu"
        return encoder
    return with_device_jpeg(load_encoder("english", tiny_model_dir, precision="fp32", runtime="torch"), preprocess)


@pytest.mark.parametrize("data", [photo(), photo(3000, 2000, seed=1), photo(333, 999, seed=2),
                                  photo(800, 600, mode="L", seed=3), photo(1024, 768, seed=4, progressive=True),
                                  photo(640, 480, seed=5, quality=40)],
                         ids=["640x480", "3000x2000", "333x999", "grey", "progressive", "q40"])
def test_the_device_path_embeds_as_the_exact_cpu_path(gpu_style, english_encoder, data):
    header = Image.open(io.BytesIO(data))
    taken = gpu_style.prepare_encoded_image(data, header.format, header.mode)
    assert taken is not None and tuple(taken.shape) == (3, 224, 224)
    reference = english_encoder.prepare_image(decode_image(data, max_pixels=10**8))
    difference = np.abs(taken.cpu().numpy() - reference.numpy())  # one grey level is 1 / 255 / std = 0.015 here
    assert float(difference.max()) < 0.016 and float(difference.mean()) < 0.004
    vector = gpu_style.encode_images([taken])[0]
    assert float(vector @ exact(english_encoder, data)) >= 0.999


def test_what_the_device_path_cannot_take_goes_the_cpu_way_with_the_cpu_errors(gpu_style, english_encoder):
    good = photo(seed=7)
    corrupt = bytearray(good)
    corrupt[len(good) // 2: len(good) // 2 + 400] = bytes(range(256)) + bytes(144)  # entropy data, EOI kept
    sources = [good, good[: len(good) // 2], bytes(corrupt), png(), cmyk_jpeg(), b"\xff\xd8\xff\xe0 not a jpeg"]
    limits = ImageLimits()
    on_device = load_images(sources, limits, then=gpu_style.prepare_image, encoded=gpu_style.prepare_encoded_image)
    on_cpu = load_images(sources, limits, then=english_encoder.prepare_image)
    for i, (device_item, cpu_item) in enumerate(zip(on_device, on_cpu, strict=True)):
        if isinstance(cpu_item, ImageError):
            assert isinstance(device_item, ImageError) and device_item.code == cpu_item.code, i
        else:
            assert not isinstance(device_item, ImageError), (i, device_item)
    assert [getattr(x, "code", None) for x in on_device[1::4]] == ["invalid_image", "invalid_image"]
    for i in (3, 4):  # PNG and CMYK JPEG: Pillow's pixels, bit for bit the CPU path
        np.testing.assert_array_equal(on_device[i].cpu().numpy(), on_cpu[i].numpy())


def test_the_header_limits_apply_before_the_device_decodes(gpu_style):
    calls = []

    def encoded(data, image_format, mode):
        calls.append(image_format)
        return gpu_style.prepare_encoded_image(data, image_format, mode)

    [result] = load_images([photo(2000, 1500, seed=8)], ImageLimits(max_pixels=1_000_000),
                           then=gpu_style.prepare_image, encoded=encoded)
    assert isinstance(result, ImageError) and result.code == "too_large" and calls == []
    [result] = load_images([photo(seed=9)], ImageLimits(), then=gpu_style.prepare_image, encoded=encoded)
    assert not isinstance(result, ImageError) and calls == ["JPEG"]


def test_on_the_cpu_every_image_is_decoded_by_pillow(english_encoder):
    assert english_encoder.info.image_decode == "cpu"
    assert english_encoder.prepare_encoded_image(photo(), "JPEG", "RGB") is None
