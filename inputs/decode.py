"""Encoded image bytes -> RGB ``PIL.Image``, refusing decompression bombs before any pixel is decoded."""

from __future__ import annotations

import io
import logging
import warnings

from PIL import Image

from inputs.errors import INVALID_IMAGE, TOO_LARGE, ImageError

log = logging.getLogger(__name__)

# Formats a client may send. Limiting the list keeps Pillow's rarer parsers away from untrusted bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "AVIF")
# Pillow's warnings are about the client's file (corrupt EXIF, palette transparency, its own bomb limit,
# which ours undercuts): not worth a log line each. A filter installed once, for Pillow's modules only;
# ``warnings.catch_warnings`` per call would swap the process-wide filter list and race between threads.
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
# Longest side / shortest side. CLIP preprocessing scales the shortest side up or down to the model's size
# (224-240 px) before cropping, so a 2 x 30,000 image (60 kpx, a few hundred bytes) would be resized to
# 240 x 3.6 M pixels: 26 s and 2.7 GB in one request thread. Real photos, panoramas and long screenshots
# stay far below this ratio.
MAX_ASPECT_RATIO = 100


def draft_size_for(model_image_size: int, exact: bool = False) -> int | None:
    """The ``draft_size`` for a model that takes ``model_image_size`` px (twice that), or None for exact decoding."""
    return None if exact else 2 * model_image_size


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode the first frame of ``data`` and convert it to RGB (as open_clip's preprocessing does).

    ``Image.open`` reads only the header, so the pixel count (and the aspect ratio, see MAX_ASPECT_RATIO)
    is checked before any pixel is decoded.
    ``draft_size``: let a JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding, as long as both sides stay
    at least this large (Pillow's draft mode). Decoding a 12 MP photo costs more than embedding it; the
    model sees the image resized to 224-240 px anyway, so decoding at no less than twice that size
    changes the embedding by a cosine under 1e-5 and is 3-4x cheaper.
    Raises ImageError(too_large | invalid_image); nothing else escapes.
    """
    image = _open_checked(data, max_pixels)
    try:
        if draft_size and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        return _first_frame_rgb(image)
    finally:
        image.close()


def image_header(data: bytes, *, max_pixels: int) -> tuple[str, str]:
    """(format, mode) of ``data`` after the same checks as ``decode_image``, with no pixel decoded: for a
    decoder elsewhere (the GPU's) that must refuse exactly what this module refuses. Raises ImageError."""
    image = _open_checked(data, max_pixels)
    try:
        return str(image.format), str(image.mode)
    finally:
        image.close()


def is_image(data: bytes) -> bool:
    """Whether the header is one of the allowed image formats (no pixel decoded): tells a file that is no
    image at all (skipped by ingest) from a broken or oversized one (an error)."""
    try:
        Image.open(io.BytesIO(data), formats=_allowed_formats()).close()
    except Image.DecompressionBombError:
        return True
    except Exception:  # noqa: BLE001 - Pillow raises many types for bytes it does not recognise
        return False
    return True


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """The lazily opened image, its header checked: format, pixel count, aspect ratio."""
    try:
        image = Image.open(io.BytesIO(data), formats=_allowed_formats())
    except Image.DecompressionBombError:
        raise ImageError(TOO_LARGE, f"the image has more than {max_pixels} pixels") from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for bad bytes; all mean "not an image"
        raise ImageError(INVALID_IMAGE, "not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageError(INVALID_IMAGE, "the image has no pixels")
        if width * height > max_pixels:
            raise ImageError(TOO_LARGE, f"the image is {width}x{height}, more than {max_pixels} pixels")
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise ImageError(TOO_LARGE, f"the image is {width}x{height}; sides more than {MAX_ASPECT_RATIO}:1 "
                                        "apart would be scaled to an enormous size by the model's preprocessing")
    except BaseException:
        image.close()
        raise
    return image


def _allowed_formats() -> list[str]:
    # Pillow registers its format plugins lazily: Image.OPEN is empty in a fresh process (so the first image
    # was refused) and holds only the common five after preinit() (so WebP and TIFF never opened). init() is
    # idempotent and cheap after its first call.
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]


def _first_frame_rgb(image: Image.Image) -> Image.Image:
    try:
        image.seek(0)
        image.load()
        return image.convert("RGB")
    except MemoryError:
        raise ImageError(TOO_LARGE, "the image is too large to decode") from None
    except Exception:  # noqa: BLE001 - truncated or corrupt data in any of Pillow's decoders
        raise ImageError(INVALID_IMAGE, "the image data is truncated or corrupt") from None
