"""`index build --thumbnails`: a small JPEG per item, made from the image the row names.

A local file, a data URI or base64 gets a thumbnail; an http(s) URL does not (the playground shows the
URL itself, and the build stays offline and repeatable). A row whose image cannot be read or decoded
gets none and is counted; the item is still indexed. The same input gives the same bytes: Pillow's
resize and JPEG encoder are deterministic for fixed settings, and no timestamp or EXIF is written.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from PIL import Image

from batch.images import LocalFile, classify_image, read_local_file
from batch.results import RowError
from inputs.decode import decode_image
from inputs.errors import ImageError
from inputs.source import parse_image_string

DEFAULT_SIZE = 128
MAX_SIZE = 1024
_QUALITY = 85
_MAX_PIXELS = 100_000_000
_MAX_BYTES = 64 * 1024 * 1024


def parse_size(value: str) -> int:
    """--thumbnails[=SIZE]: the long side in pixels, 16 to MAX_SIZE."""
    try:
        size = int(value)
    except ValueError:
        raise ValueError(f"--thumbnails takes a size in pixels, got {value!r}") from None
    if not 16 <= size <= MAX_SIZE:
        raise ValueError(f"--thumbnails size must be 16 to {MAX_SIZE} pixels, got {size}")
    return size


def thumbnail(data: bytes, size: int) -> bytes:
    """The image scaled to ``size`` px on its long side (never up), as a baseline JPEG. Raises ImageError."""
    image = decode_image(data, max_pixels=_MAX_PIXELS, draft_size=size)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=_QUALITY, optimize=False, progressive=False)
    return out.getvalue()


def thumbnails_of(cells: Iterable[str | None], size: int, search_dirs: Sequence[Path],
                  skipped: Counter) -> Iterator[bytes | None]:
    """One thumbnail (or None) per image cell, in order; why a row has none is counted in ``skipped``."""
    for cell in cells:
        data = _image_bytes(cell, search_dirs, skipped)
        if data is None:
            yield None
            continue
        try:
            yield thumbnail(data, size)
        except ImageError as exc:
            skipped[exc.code] += 1
            yield None


def _image_bytes(cell: str | None, search_dirs: Sequence[Path], skipped: Counter) -> bytes | None:
    if cell is None:
        skipped["no_image"] += 1
        return None
    ref = classify_image(cell, search_dirs)
    if isinstance(ref, LocalFile):
        data = read_local_file(ref)
        if isinstance(data, RowError):
            skipped[data.code] += 1
            return None
        return data
    try:
        source = parse_image_string(ref, max_bytes=_MAX_BYTES)
    except ImageError as exc:
        skipped[exc.code] += 1
        return None
    if source.data is None:
        skipped["url_shown_as_is"] += 1
        return None
    return source.data
