"""Input rows from CSV or JSONL, in file order.

Every row gets an `id` (the `id` column, or its 0-based position when the file has none), a
text and an image (either may be missing). Ids must be unique: resume and merge rely on them.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_ALIASES = ("text", "caption")
IMAGE_ALIASES = ("image", "url")
ID_COLUMN = "id"


class InputError(ValueError):
    """The input file cannot be read as rows (bad format, missing or duplicate ids)."""


@dataclass(frozen=True)
class Columns:
    """Column names chosen on the command line; None means: look for the usual aliases."""

    id: str | None = None
    text: str | None = None
    image: str | None = None


@dataclass(frozen=True)
class Row:
    position: int  # 0-based row number in the input, the order `merge` restores
    id: str
    text: str | None
    image: str | None
    fields: dict[str, Any] = field(default_factory=dict, compare=False)  # the row as read


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")


def input_format(path: Path) -> str:
    """'csv' or 'jsonl' from the file name, or 'folder' for a folder of images."""
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise InputError(f"{path}: unknown input format {suffix!r}; use .csv, .tsv or .jsonl, or a folder of images")


def _iter_csv(path: Path) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(sys.maxsize)  # base64 images make long fields
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None:
            return
        yield from reader


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{line_no}: expected a JSON object per line")
            yield record


def _iter_folder(path: Path) -> Iterator[dict[str, Any]]:
    """A folder of images as rows: id and image are the file's path inside the folder (sub-folders too), in
    sorted order, so the same folder gives the same rows. Images resolve against the folder (search_dirs)."""
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    for name in files:
        yield {"id": name, "image": name}


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The raw records (dicts) of a CSV or JSONL file, or of a folder of images."""
    fmt = input_format(path)
    if fmt == "folder":
        return _iter_folder(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if fmt == "csv":
        return _iter_csv(path)
    return _iter_jsonl(path)


def _as_text(value: Any) -> str | None:
    """A cell as a string; empty cells and nulls are missing."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _pick(record: dict[str, Any], explicit: str | None, aliases: tuple[str, ...]) -> str | None:
    if explicit is not None:
        return _as_text(record.get(explicit))
    for name in aliases:
        if name in record:
            return _as_text(record[name])
    return None


def read_rows(path: Path, columns: Columns = Columns()) -> Iterator[Row]:
    """Rows in file order. Raises InputError on a missing or duplicate id."""
    seen: set[str] = set()
    id_column = columns.id
    for position, record in enumerate(iter_records(path)):
        if position == 0 and id_column is None and ID_COLUMN in record:
            id_column = ID_COLUMN
        if id_column is None:
            row_id = str(position)
        else:
            row_id = _as_text(record.get(id_column))
            if row_id is None:
                raise InputError(f"{path}: row {position} has no {id_column!r}")
        if row_id in seen:
            raise InputError(f"{path}: duplicate id {row_id!r} at row {position}; ids must be unique")
        seen.add(row_id)
        yield Row(
            position=position,
            id=row_id,
            text=_pick(record, columns.text, TEXT_ALIASES),
            image=_pick(record, columns.image, IMAGE_ALIASES),
            fields=record,
        )
