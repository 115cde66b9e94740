"""Images from wherever the caller has them, as the service's IMAGE strings.

A URL or data URI is passed through (the service fetches it, with its own SSRF checks); anything local (a path,
bytes, a file object, a PIL image) is read here and sent as base64, so the service never needs the caller's
files. A local failure (a missing file) is that item's error, found before anything is sent.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import IO, Any, Union

from clipserve_client.errors import ItemError

_REMOTE = ("http://", "https://", "data:")


class Encoded(str):
    """An image already in the service's IMAGE form (bare base64 of the file, a data URI, a URL), sent as is: a plain
    string that is not a URL or data URI is read as a path."""


ImageInput = Union[str, Encoded, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Any]


def to_wire(index: int, image: ImageInput) -> str | ItemError:
    """The IMAGE string for one input, or the reason it cannot be sent."""
    try:
        if isinstance(image, str):
            if isinstance(image, Encoded) or image.startswith(_REMOTE):
                return str(image)
            return _encode(Path(image).expanduser().read_bytes())
        if isinstance(image, os.PathLike):
            return _encode(Path(image).expanduser().read_bytes())
        if isinstance(image, (bytes, bytearray, memoryview)):
            return _encode(bytes(image))
        if hasattr(image, "read"):
            data = image.read()
            if not isinstance(data, (bytes, bytearray)):
                return ItemError(index, "unsupported_input", "a file object opened in text mode: open it with 'rb'")
            return _encode(bytes(data))
        if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image: sent losslessly as PNG
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return _encode(buffer.getvalue())
    except FileNotFoundError:
        return ItemError(index, "file_not_found", f"no such file: {image!s}")
    except OSError as exc:
        return ItemError(index, "file_unreadable", f"cannot read {image!s}: {exc.strerror or exc}")
    return ItemError(index, "unsupported_input", f"not an image input: {type(image).__name__} (a path, bytes, a file "
                                                  "object, a PIL image, an http(s) URL or a data URI)")


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
