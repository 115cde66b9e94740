"""The lock: pins for files whose publisher gives neither a sha256 nor a full commit.

A registry `Source` without a pin cannot be trusted to hold the same bytes tomorrow (the SigLIP 2
repos: `main` moves, and no checksum is published). `--allow-unpinned` took whatever came; the lock
instead makes the first networked bake (`python -m models.bake --variant V --lock`) record the
commit it resolved and the sha256 it got in `models/pins.lock.json`, which is committed. Every
later bake, `serve.sh` and the Docker build read the lock and fetch that commit and check that
sha256, exactly as for a pin written in the registry; a file neither pinned nor locked is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from models.registry import COMMIT, SHA256, Source

LOCK_FILE = Path(__file__).with_name("pins.lock.json")
FORMAT = 1


class LockError(ValueError):
    """The lock file is malformed (a hand edit gone wrong): the bake stops rather than trust it."""


def key(source: Source) -> str:
    """How a file is named in the lock: `repo/filename` for a hub file, the URL for a release file."""
    return f"{source.repo}/{source.filename}" if source.repo else str(source.url)


def load(path: Path | str = LOCK_FILE) -> dict[str, dict[str, Any]]:
    """The locked files by `key`; {} when there is no lock file yet."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise LockError(f"{path}: lock format {data.get('format')!r}, this code reads {FORMAT}")
    files = data.get("files", {})
    for name, entry in files.items():
        if not SHA256.fullmatch(str(entry.get("sha256", ""))):
            raise LockError(f"{path}: {name} has no valid sha256")
        if entry.get("revision") is not None and not COMMIT.fullmatch(entry["revision"]):
            raise LockError(f"{path}: {name} has a revision that is not a full commit: {entry['revision']!r}")
    return files


def effective(source: Source, lock: dict[str, dict[str, Any]]) -> Source:
    """The source as a bake must fetch it: as pinned in the registry, else with the lock's commit and sha256,
    else unchanged (unpinned: the bake refuses it unless told otherwise)."""
    if source.pinned:
        return source
    entry = lock.get(key(source))
    if entry is None:
        return source
    revision = entry.get("revision") if source.repo else None
    return dataclasses.replace(source, revision=revision or source.revision, sha256=entry["sha256"])


def is_locked(source: Source, lock: dict[str, dict[str, Any]]) -> bool:
    return not source.pinned and key(source) in lock


def record(entries: dict[str, dict[str, Any]], path: Path | str = LOCK_FILE) -> None:
    """Add or replace `entries` ({key: {revision, sha256, size}}) in the lock file, written atomically."""
    path = Path(path)
    files = {**load(path), **entries}
    text = json.dumps({"format": FORMAT, "files": dict(sorted(files.items()))}, indent=2, sort_keys=True) + "\n"
    partial = path.with_name(path.name + f".{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
