"""The index version folder: what is in it, how it is written atomically, how it is checked.

    DIR/vectors.faiss   FAISS index, ids 0..N-1 = the items' row numbers (flat, or IVF with a direct map)
    DIR/items.sqlite    items(row, id, c0, c1, ...) + columns(position, name, type): ids and metadata
    DIR/thumbnails.*    optional (`index build --thumbnails`): a small JPEG per item (search/thumbnails.py)
    DIR/manifest.json   written last: format, model, modality, count, index type, every file's sha256/size

A folder is immutable once published: a new build goes to a new version folder, and rolling back
is pointing the service at the old one. A build writes the data files into the folder and the
manifest last (`stage` + `publish`), so one killed halfway leaves a folder without a manifest, which
the service refuses and the next build clears. No rename is involved: bucket mounts (Cloud Storage
FUSE) cannot rename a folder atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models.bundle import file_record, fsync_path, sha256_file
from search import thumbnails
from search.errors import IndexUnusable

MANIFEST = "manifest.json"
VECTORS = "vectors.faiss"
ITEMS = "items.sqlite"
FORMAT = "clipserve-index"
FORMAT_VERSION = 1
MODALITIES = ("image", "text")


def build_hint(directory: Path | str) -> str:
    return (f"Build one with `clipserve-batch index build --input FILE --output {directory} --local` "
            "(or --endpoint URL); see the README's search section.")


def read_manifest(directory: Path | str) -> dict[str, Any]:
    """The manifest of a complete version folder; IndexUnusable (naming the folder and the fix) otherwise."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        what = "has no manifest.json (an unfinished build?)" if directory.is_dir() else "does not exist"
        raise IndexUnusable(f"INDEX_DIR={directory} {what}. {build_hint(directory)}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexUnusable(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexUnusable(f"{path}: not a clipserve index manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexUnusable(f"{path}: index format version {manifest.get('format_version')!r}; this service reads "
                            f"version {FORMAT_VERSION}. Rebuild the index with this release's clipserve-batch.")
    return manifest


def check_files(directory: Path | str, manifest: dict[str, Any], *, sha256: bool = False) -> None:
    """Every listed file present with its recorded size (and, with ``sha256``, its recorded hash)."""
    directory = Path(directory)
    for name, record in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise IndexUnusable(f"index {directory} is incomplete: {path} is missing. {build_hint(directory)}")
        size = path.stat().st_size
        if size != record["size"]:
            raise IndexUnusable(f"index {directory}: {path} has {size} bytes, the manifest says {record['size']} "
                                "(edited or truncated since the build)")
        if sha256:
            actual = sha256_file(path)
            if actual != record["sha256"]:
                raise IndexUnusable(f"index {directory}: {path} has sha256 {actual}, the manifest says "
                                    f"{record['sha256']} (edited since the build)")


def verify(directory: Path | str) -> dict[str, Any]:
    """The full check (`python -m search.verify DIR`): manifest, sizes and every file's sha256."""
    manifest = read_manifest(directory)
    check_files(directory, manifest, sha256=True)
    return manifest


# What a build writes before its manifest (SQLite's journal only if it was killed mid-transaction).
_DATA_FILES = frozenset({VECTORS, ITEMS, ITEMS + "-journal", MANIFEST + ".partial",
                         thumbnails.BIN, thumbnails.OFFSETS})


class VersionExists(ValueError):
    """The version folder is already a complete index, or holds files a build did not write."""


@contextlib.contextmanager
def stage(final: Path) -> Iterator[Path]:
    """The empty version folder to write the data files into. What a killed build left there (data files,
    no manifest) is cleared first; if this build fails, its files are removed again."""
    if (final / MANIFEST).exists():
        raise VersionExists(f"{final} already exists: index versions are immutable; build into a new folder "
                            "(e.g. the next version number) and point the service at it")
    if final.exists():
        foreign = sorted(p.name for p in final.iterdir() if p.name not in _DATA_FILES)
        if foreign:
            raise VersionExists(f"{final} exists and holds {', '.join(foreign[:5])}: not a build's leftovers; "
                                "choose an empty or new folder")
        _clear(final)
    final.mkdir(parents=True, exist_ok=True)
    try:
        yield final
    except BaseException:
        if not (final / MANIFEST).exists():
            _clear(final)
        raise


def _clear(folder: Path) -> None:
    for name in _DATA_FILES:
        (folder / name).unlink(missing_ok=True)


def publish(final: Path, manifest: dict[str, Any]) -> Path:
    """Record every data file's sha256 and size, then write the manifest: the folder is complete."""
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION)
    manifest["files"] = {p.name: file_record(p) for p in sorted(final.iterdir()) if p.name != MANIFEST}
    for name in manifest["files"]:
        fsync_path(final / name)
        (final / name).chmod(0o644)
    partial = final / (MANIFEST + ".partial")
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    partial.replace(final / MANIFEST)
    final.chmod(0o755)
    fsync_path(final)
    return final
