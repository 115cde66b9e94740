"""The rows an index is made of: ids, unit vectors of one modality and metadata, in input order.

An index is built from an `embed` output (JSONL, or the `.npy` set `merge` writes) or from an input
CSV/JSONL that is embedded first (into a JSONL part, resumable exactly as `embed` is). Metadata comes
from the input file's own columns, or from `--metadata FILE` when the input is an embed output.

Rows whose embedding failed (an error, no vector of the modality, NaN or zeros) are left out and
counted by reason: an index never holds a made-up vector.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batch import export
from batch.reader import Columns, InputError, Row, input_format, iter_records, read_rows

MODALITIES = ("image", "text")


def is_embed_output(path: Path) -> bool:
    """An `embed` result (vectors already there) rather than rows to embed."""
    if path.suffix.lower() == ".npy":
        return True
    if input_format(path) != "jsonl":
        return False
    first = next(iter_records(path), None)
    return first is not None and ("text_embedding" in first or "image_embedding" in first)


class EmbedOutput:
    """An embed result, looked up by id (JSONL by byte offset, .npy by row), or read in its own order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix.lower() == ".npy":
            paths = export.npy_paths(path)
            ids = paths["ids"].read_text(encoding="utf-8").splitlines()
            self._ids = ids
            self._rows = _unique_index(ids, paths["ids"])
            self._matrices = {kind: np.load(paths[kind], mmap_mode="r") for kind in MODALITIES if paths[kind].exists()}
            self._jsonl = None
        else:
            try:
                self._offsets = export.index_parts([path])
            except export.MergeError as exc:
                raise InputError(f"{path}: duplicate ids ({exc}); ids must be unique") from None
            self._ids = list(self._offsets)
            self._jsonl = path.open("rb")

    def ids(self) -> list[str]:
        return self._ids

    def has(self, modality: str) -> bool:
        """Whether any row has a vector of this modality."""
        if self._jsonl is None:
            return modality in self._matrices
        return any(self.vector(i, modality)[0] is not None for i in self._ids)

    def vector(self, item_id: str, modality: str) -> tuple[np.ndarray | None, str]:
        """(the row's raw vector, or None with the reason it has none)."""
        if self._jsonl is None:
            row = self._rows.get(item_id)
            matrix = self._matrices.get(modality)
            if row is None or matrix is None:
                return None, "missing"
            vector = np.asarray(matrix[row], dtype=np.float32)
            return (None, "failed") if np.isnan(vector).any() else (vector, "")
        where = self._offsets.get(item_id)
        if where is None:
            return None, "missing"
        self._jsonl.seek(where[1])
        record = json.loads(self._jsonl.read(where[2]))
        if record.get("error"):
            return None, str(record["error"].get("code", "failed"))
        values = record.get(f"{modality}_embedding")
        return (None, f"no_{modality}_embedding") if values is None else (np.asarray(values, np.float32), "")

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()


def _unique_index(ids: list[str], path: Path) -> dict[str, int]:
    rows: dict[str, int] = {}
    for row, item_id in enumerate(ids):
        if item_id in rows:
            raise InputError(f"{path}: duplicate id {item_id!r} (rows {rows[item_id]} and {row}); ids must be unique")
        rows[item_id] = row
    return rows


@dataclass
class Collected:
    """The usable rows: vectors in a float32 file (row i = kept[i]) and what was left out."""

    vectors: np.ndarray  # (n, dim) memmap
    kept_ids: list[str]
    kept_positions: list[int]  # positions in the metadata file (empty without one)
    skipped: Counter = field(default_factory=Counter)
    column_types: dict[str, str] = field(default_factory=dict)


def metadata_rows(path: Path, columns: Columns) -> Iterator[Row]:
    return read_rows(path, columns)


def collect(embeddings: EmbedOutput, modality: str, dim: int, scratch: Path, *, metadata: Path | None,
            columns: Columns, metadata_columns: list[str], types: Any) -> Collected:
    """One pass: unit vectors of `modality` to `scratch` (raw float32), ids and positions of the rows kept.

    With `metadata`, rows are that file's, in its order (an embedding missing for a row is counted);
    without, the embed output's own rows. `types` (search.items_db.ColumnTypes) sees every kept record.
    """
    kept_ids: list[str] = []
    kept_positions: list[int] = []
    skipped: Counter = Counter()
    rows: Iterator[tuple[int, str, dict[str, Any]]]
    if metadata is not None:
        rows = ((r.position, r.id, r.fields) for r in metadata_rows(metadata, columns))
    else:
        rows = ((i, item_id, {}) for i, item_id in enumerate(embeddings.ids()))
    with scratch.open("wb") as out:
        for position, item_id, record in rows:
            raw, reason = embeddings.vector(item_id, modality)
            vector = None if raw is None else _unit(raw, dim, item_id)
            if vector is None:
                skipped[reason or "zero_vector"] += 1
                continue
            out.write(vector.astype("<f4").tobytes())
            kept_ids.append(item_id)
            kept_positions.append(position)
            types.add(record)
    vectors = np.memmap(scratch, dtype=np.float32, mode="r", shape=(len(kept_ids), dim)) if kept_ids \
        else np.zeros((0, dim), np.float32)
    return Collected(vectors, kept_ids, kept_positions if metadata is not None else [], skipped)


def _unit(vector: np.ndarray, dim: int, item_id: str) -> np.ndarray | None:
    if vector.shape != (dim,):
        raise InputError(f"row {item_id!r}: an embedding of {vector.size} values; the model's dimension is {dim} "
                         "(an embed output of another model?)")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return vector / norm


def rows_of_kept(path: Path, columns: Columns, collected: Collected) -> Iterator[Row]:
    """The metadata file's row of every kept item, in row order (a second, cheap pass over the file)."""
    wanted = iter(collected.kept_positions)
    next_position = next(wanted, None)
    for row in metadata_rows(path, columns):
        if row.position == next_position:
            yield row
            next_position = next(wanted, None)


def metadata_of_kept(path: Path | None, columns: Columns, collected: Collected) -> Iterator[tuple[str, dict]]:
    """(id, record) of every kept row, in row order."""
    if path is None:
        return ((item_id, {}) for item_id in collected.kept_ids)
    return ((row.id, row.fields) for row in rows_of_kept(path, columns, collected))
