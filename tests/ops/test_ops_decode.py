"""Image decoding in a fresh process and under random/mutated bytes: only ImageError ever escapes."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inputs.decode import decode_image
from inputs.errors import CODES, ImageError
from ops_support import REPO, image_bytes

MAX_PIXELS = 4_000_000
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
SEEDS = {fmt: image_bytes(fmt, size=(24, 16), seed=i) for i, fmt in enumerate(FORMATS)}


def test_every_format_decodes_as_the_first_image_of_a_fresh_process():
    """Regression: Pillow loads its plugins lazily; the service's first image (and every WebP/TIFF) was refused."""
    script = (
        "import sys, base64\n"
        "from inputs.decode import decode_image\n"
        "for line in sys.stdin.read().split():\n"
        "    fmt, data = line.split(':')\n"
        "    print(fmt, decode_image(base64.b64decode(data), max_pixels=10**6).size)\n"
    )
    import base64

    stdin = "\n".join(f"{fmt}:{base64.b64encode(SEEDS[fmt]).decode()}" for fmt in ("WEBP", "TIFF", "PNG"))
    out = subprocess.run([sys.executable, "-c", script], input=stdin, capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["WEBP (24, 16)", "TIFF (24, 16)", "PNG (24, 16)"]


def _decode_or_image_error(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except ImageError as exc:
        assert exc.code in CODES
    else:
        assert image.mode == "RGB" and image.size[0] * image.size[1] <= MAX_PIXELS


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise_anything_but_image_error(data):
    _decode_or_image_error(data)


@st.composite
def mutated_images(draw):
    """A valid image of some format with a few bytes flipped, a slice cut out, or junk spliced in."""
    data = bytearray(SEEDS[draw(st.sampled_from(FORMATS))])
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "truncate", "splice", "zero_run"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        else:
            data[pos:pos + 16] = bytes(16)
    return bytes(data)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_mutated_images_never_raise_anything_but_image_error(data):
    _decode_or_image_error(data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_headers_declaring_huge_sizes_are_too_large_before_decoding(fmt):
    """Every format's header patched (where it is simple) or built to claim more pixels than allowed."""
    big = Image.new("L", (3000, 2000))  # 6 MP > MAX_PIXELS, tiny when compressed
    buf = io.BytesIO()
    big.save(buf, fmt)
    with pytest.raises(ImageError) as info:
        decode_image(buf.getvalue(), max_pixels=MAX_PIXELS)
    assert info.value.code == "too_large"


@pytest.mark.parametrize("size", [(1, 101), (2, 30_000), (40_000, 3)])
def test_extreme_aspect_ratios_are_too_large_before_preprocessing_can_blow_them_up(size):
    """Regression: a 2 x 30,000 PNG (a few hundred bytes) took 26 s and 2.7 GB in prepare_image."""
    buf = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(buf, "PNG")
    with pytest.raises(ImageError) as info:
        decode_image(buf.getvalue(), max_pixels=MAX_PIXELS)
    assert info.value.code == "too_large" and "100:1" in info.value.message


@pytest.mark.parametrize("size", [(1, 1), (1, 100), (3000, 30), (224, 4000)])
def test_ordinary_elongated_images_still_decode(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), max_pixels=MAX_PIXELS).size == size


def test_decoding_and_preprocessing_are_bounded_across_concurrent_requests():
    """Large images cost ~300 MB each while decoded: at most decode_concurrency run at once, process-wide."""
    import threading
    import time

    from inputs import ImageLimits, load_images

    limits = ImageLimits(concurrency=8, decode_concurrency=2)
    lock = threading.Lock()
    active, peak = [0], [0]

    def slow_prepare(image):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1
        return image.size

    sources = [image_bytes("PNG", size=(20, 20), seed=s) for s in range(6)]
    results: list = []
    requests = [threading.Thread(target=lambda: results.append(load_images(sources, limits, then=slow_prepare)))
                for _ in range(3)]
    for t in requests:
        t.start()
    for t in requests:
        t.join(30)
    assert len(results) == 3 and all(r == [(20, 20)] * 6 for r in results)
    assert peak[0] == 2


def test_decoding_runs_at_the_lowest_cpu_priority_so_the_model_keeps_its_cores():
    """Decode threads at nice 19 (Linux), request and model threads untouched."""
    import os
    import sys
    import threading

    from inputs import ImageLimits, load_images

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread nice is Linux-only")

    def niceness(image):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    limits = ImageLimits(decode_concurrency=2)
    results = load_images([image_bytes("PNG", size=(20, 20), seed=s) for s in range(3)], limits, then=niceness)
    assert results == [19, 19, 19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0
