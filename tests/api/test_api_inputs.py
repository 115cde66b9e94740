"""IMAGE strings and bytes -> RGB images: formats, modes, frames, limits, and every way bytes can be bad."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from api_helpers import animated_gif, b64, data_uri, image_bytes, png_header_claiming
from inputs import ImageError, ImageLimits, decode_image, load_image, load_images, parse_image_string

LIMITS = ImageLimits(max_bytes=100_000, max_pixels=1_000_000)


def code_of(source, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, limits)
    return info.value.code


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats_decode_to_rgb_like_pillow_convert(fmt):
    data = image_bytes(fmt)
    got = load_image(data, LIMITS)
    expected = Image.open(io.BytesIO(data)).convert("RGB")
    assert got.mode == "RGB" and got.size == (64, 48)
    assert np.array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("mode,color", [("L", 128), ("LA", (128, 200)), ("RGBA", (10, 20, 30, 0)), ("P", 3),
                                        ("1", 1), ("I;16", 3000), ("CMYK", (0, 255, 0, 0)), ("I", 70000)])
def test_any_mode_is_converted_as_open_clip_does(mode, color):
    fmt = "TIFF" if mode in ("CMYK", "I") else "PNG"
    data = image_bytes(fmt, mode=mode, color=color)
    got = load_image(data, LIMITS)
    assert got.mode == "RGB"
    assert np.array_equal(np.asarray(got), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_first_frame_of_animation():
    got = load_image(animated_gif(frames=3), LIMITS)
    assert got.getpixel((5, 5)) == (255, 0, 0)


def test_gif_with_thousands_of_frames_is_fast():
    data = animated_gif(frames=3000, size=8)
    started = time.monotonic()
    assert load_image(data, ImageLimits(max_bytes=len(data))).getpixel((5, 5)) == (255, 0, 0)
    assert time.monotonic() - started < 2.0


def test_one_pixel_image():
    assert load_image(image_bytes("PNG", size=(1, 1)), LIMITS).size == (1, 1)


def test_decompression_bomb_refused_from_header():
    started = time.monotonic()
    assert code_of(png_header_claiming(50_000, 50_000)) == "too_large"
    assert time.monotonic() - started < 2.0   # decoding 2.5 gigapixels would take minutes and ~7 GB


def test_pixel_limit_is_exact():
    data = image_bytes("PNG", size=(1000, 1000))
    assert decode_image(data, max_pixels=1_000_000).size == (1000, 1000)
    with pytest.raises(ImageError) as info:
        decode_image(data, max_pixels=999_999)
    assert info.value.code == "too_large"


@pytest.mark.parametrize("data", [
    b"", b"not an image at all", image_bytes("JPEG")[:200], image_bytes("PNG")[:60],
    b"GIF89a" + b"\0" * 20, b"%PDF-1.4 hello", b"\x89PNG\r\n\x1a\n" + b"\xff" * 50,
])
def test_truncated_or_non_image_bytes_are_invalid(data):
    assert code_of(data) == "invalid_image"


def test_truncated_jpeg_body_is_invalid():
    data = image_bytes("JPEG", size=(400, 300))
    assert code_of(data[: len(data) // 2]) == "invalid_image"


def test_unlisted_format_refused():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PPM")
    assert code_of(buf.getvalue()) == "invalid_image"


def test_uploaded_bytes_over_limit_are_too_large():
    assert code_of(b"\0" * (LIMITS.max_bytes + 1)) == "too_large"


# --- IMAGE strings ---------------------------------------------------------------------------

def test_base64_forms_all_decode_to_the_same_image():
    data = image_bytes("PNG")
    std = b64(data)
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    wrapped = "\n".join(std[i:i + 76] for i in range(0, len(std), 76))
    for value in (std, urlsafe, wrapped, data_uri(data), data_uri(data, "jpeg"),
                  "data:image/png;charset=utf-8;base64," + std, "  " + std + "  "):
        assert parse_image_string(value, max_bytes=LIMITS.max_bytes).data == data


def test_urls_are_recognised_not_decoded():
    assert parse_image_string("https://example.com/a.png", max_bytes=10).url == "https://example.com/a.png"
    assert parse_image_string("HTTP://example.com/a.png", max_bytes=10).url is not None


@pytest.mark.parametrize("value", ["not base64!!", "abc$", "data:text/plain;base64,aGk=", "data:image/png,rawbytes",
                                   "", "   "])
def test_bad_strings_are_invalid_image(value):
    assert code_of(value) == "invalid_image"


def test_base64_over_limit_is_too_large_before_decoding():
    assert code_of("A" * (LIMITS.max_bytes * 2)) == "too_large"
    assert code_of(data_uri(b"\0" * (LIMITS.max_bytes + 10))) == "too_large"


def test_load_images_keeps_order_and_reports_failures_in_place():
    good = image_bytes("PNG")
    results = load_images([b64(good), "garbage!", good, "file:///etc/passwd"], LIMITS, then=lambda im: im.size)
    assert results[0] == (64, 48) and results[2] == (64, 48)
    assert [r.code for r in (results[1], results[3])] == ["invalid_image", "forbidden_url"]


def test_urls_of_one_request_are_fetched_concurrently_within_the_bound():
    from api_helpers import serve_images
    from inputs import FetchLimits

    limits = ImageLimits(concurrency=4, fetch=FetchLimits(total_timeout_s=5, allow_private=True))
    with serve_images() as server:
        urls = [f"{server.base}/delay?s=0.6"] * 8
        started = time.monotonic()
        results = load_images(urls, limits)
        elapsed = time.monotonic() - started
    assert all(r.size == (64, 48) for r in results)
    assert 1.2 <= elapsed < 2.4      # two waves of four: concurrent, and no more than four at once


def test_preprocessing_failure_becomes_invalid_image():
    def broken(image):
        raise RuntimeError("boom")
    [result] = load_images([image_bytes("PNG")], LIMITS, then=broken)
    assert isinstance(result, ImageError) and result.code == "invalid_image"
