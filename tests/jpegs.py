"""JPEGs for the device-decode tests (tests/models/test_device_jpeg.py, tests/api/test_api_device.py)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from inputs import decode_image
from models.device_jpeg import DeviceJpeg


def photo(width: int = 640, height: int = 480, mode: str = "RGB", seed: int = 0, quality: int = 90,
          progressive: bool = False) -> bytes:
    """Smooth colour fields plus fine noise, like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([128 + 100 * np.sin(x / 31 + seed), 128 + 100 * np.cos(y / 27),
                       128 + 60 * np.sin((x + y) / 43)], axis=-1)
    pixels = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "JPEG", quality=quality, progressive=progressive)
    return out.getvalue()


def with_device_jpeg(encoder, preprocess):
    """The encoder as the loader leaves it with IMAGE_DECODE=gpu, its decoder on the CPU here."""
    encoder._image.device_jpeg = DeviceJpeg(preprocess, "cpu")
    encoder.info = dataclasses.replace(encoder.info, image_decode="gpu")
    return encoder


def exact(encoder, data: bytes) -> np.ndarray:
    return encoder.encode_images([encoder.prepare_image(decode_image(data, max_pixels=10**8))])[0]


def cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (64, 48), (10, 200, 30, 5)).save(out, "JPEG")
    return out.getvalue()


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()
