"""Telling an IMAGE cell apart: a URL or data URI, bare base64, or a path on this machine.

URLs, data URIs and base64 go to the target unchanged; local files are read here (the service
cannot see them). A cell made only of base64 characters that names no existing file is base64.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from batch.results import RowError

_REMOTE_PREFIXES = ("http://", "https://", "data:")
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/=_\-\s]+")
_MAX_PATH_LEN = 4096


@dataclass(frozen=True)
class LocalFile:
    path: Path


ImageRef = str | LocalFile  # str: sent to the service (or to inputs/) as is


def classify_image(value: str, search_dirs: Sequence[Path] = ()) -> ImageRef:
    """A URL/data URI/base64 string, or the local file it names (relative to search_dirs)."""
    stripped = value.strip()
    if stripped.lower().startswith(_REMOTE_PREFIXES):
        return stripped
    if stripped.lower().startswith("file://"):
        return LocalFile(Path(unquote(urlparse(stripped).path)))
    if len(stripped) > _MAX_PATH_LEN:
        return stripped
    path = _find_file(Path(stripped).expanduser(), search_dirs)
    if path is not None:
        return LocalFile(path)
    if _BASE64_CHARS.fullmatch(stripped):
        return stripped
    # Not base64 (has '.', ':', ' ' ...): a path that does not exist; reading it reports so.
    return LocalFile(Path(stripped).expanduser())


def _find_file(path: Path, search_dirs: Sequence[Path]) -> Path | None:
    candidates = [path] if path.is_absolute() else [path, *(d / path for d in search_dirs)]
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate
        except OSError:  # name too long and the like
            return None
    return None


def read_local_file(ref: LocalFile) -> bytes | RowError:
    """The file's bytes, or the row error to report."""
    try:
        return ref.path.read_bytes()
    except FileNotFoundError:
        return RowError("file_not_found", f"no such file: {ref.path}")
    except OSError as exc:
        return RowError("file_unreadable", f"cannot read {ref.path}: {exc.strerror or exc}")
