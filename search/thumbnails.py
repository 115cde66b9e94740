"""Thumbnails inside an index version folder: one JPEG per item, packed, read back by row.

    DIR/thumbnails.bin       the JPEGs, one after another in row order (an item without one takes 0 bytes)
    DIR/thumbnails.offsets   N+1 little-endian uint64: item ``row`` is bin[offsets[row]:offsets[row + 1]]

Two files rather than one per item: a million small files make a slow build, a slow copy to a bucket
and a slow mount, while two files are one sequential write and one read per request. The manifest lists
both (sizes and sha256) like the other data files and records the size in ``thumbnails``. Nothing here
makes a JPEG (the batch job does, from the images it reads): this module only knows the layout.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from search.errors import IndexUnusable

BIN = "thumbnails.bin"
OFFSETS = "thumbnails.offsets"
_OFFSET = np.dtype("<u8")


def write(folder: Path, thumbnails: Iterable[bytes | None], *, count: int, size: int) -> dict[str, Any]:
    """Pack one thumbnail (or None) per row into ``folder``; returns the manifest's ``thumbnails`` section."""
    offsets = np.zeros(count + 1, dtype=_OFFSET)
    rows = present = 0
    with (folder / BIN).open("wb") as out:
        for row, data in enumerate(thumbnails):
            if row >= count:
                raise ValueError(f"more thumbnails than the {count} items")
            if data:
                out.write(data)
                present += 1
            offsets[row + 1] = offsets[row] + len(data or b"")
            rows = row + 1
    if rows != count:
        raise ValueError(f"{rows} thumbnails for {count} items")
    (folder / OFFSETS).write_bytes(offsets.tobytes())
    return {"format": "jpeg", "size": size, "count": present, "bytes": int(offsets[-1])}


class Thumbnails:
    """A version folder's thumbnails, mapped read-only (the service never writes to the folder)."""

    def __init__(self, directory: Path, count: int) -> None:
        offsets = np.fromfile(directory / OFFSETS, dtype=_OFFSET)
        if len(offsets) != count + 1 or np.any(np.diff(offsets.astype(np.int64)) < 0):
            raise IndexUnusable(f"index {directory}: {OFFSETS} does not describe {count} thumbnails")
        self._offsets = offsets
        self._file = (directory / BIN).open("rb")
        if int(offsets[-1]) != (directory / BIN).stat().st_size:
            raise IndexUnusable(f"index {directory}: {BIN} is not the size {OFFSETS} says")
        self._data = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if offsets[-1] else b""

    @classmethod
    def of(cls, directory: Path, manifest: dict[str, Any]) -> "Thumbnails | None":
        """The folder's thumbnails, or None when it was built without them."""
        return cls(directory, int(manifest["count"])) if manifest.get("thumbnails") else None

    def get(self, row: int) -> bytes | None:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        return bytes(self._data[start:end]) if end > start else None

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()
        self._file.close()
