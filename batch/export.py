"""Joining part files into one output in input order: JSONL, CSV (score) or .npy + ids (embed).

The parts are indexed (id -> file, offset, length) rather than loaded, so merging a million
embeddings needs memory for the ids only. The merge checks that every input id is there once.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from batch import output
from batch.reader import Columns, read_rows
from batch.sharding import strip_output_suffix

log = logging.getLogger(__name__)

OUTPUT_FORMATS = (".jsonl", ".csv", ".npy")
SCORE_COLUMNS = ("id", "clip_score", "cosine", "error", "error_message")


class MergeError(RuntimeError):
    pass


@dataclass
class MergeReport:
    rows: int = 0
    missing: list[str] = field(default_factory=list)  # input ids in no part (first 20)
    missing_count: int = 0
    extra_count: int = 0  # ids in the parts that the input does not have
    files: list[str] = field(default_factory=list)


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"{path}: output must end in one of {', '.join(OUTPUT_FORMATS)}")
    return suffix


def index_parts(parts: Sequence[Path]) -> dict[str, tuple[int, int, int]]:
    """id -> (part number, byte offset, length). Raises on an id found twice."""
    index: dict[str, tuple[int, int, int]] = {}
    for part_no, part in enumerate(parts):
        for offset, line in output.iter_lines_with_offsets(part):
            record = output.parse_line(line)
            if record is None:
                log.warning("%s: skipping a torn line at byte %d", part, offset)
                continue
            row_id = str(record["id"])
            if row_id in index:
                raise MergeError(f"id {row_id!r} is in {parts[index[row_id][0]]} and in {part}")
            index[row_id] = (part_no, offset, len(line))
    return index


class _PartReader:
    def __init__(self, parts: Sequence[Path]) -> None:
        self._files: list[BinaryIO] = [p.open("rb") for p in parts]

    def line(self, where: tuple[int, int, int]) -> bytes:
        part_no, offset, length = where
        f = self._files[part_no]
        f.seek(offset)
        return f.read(length)

    def close(self) -> None:
        for f in self._files:
            f.close()


def merge(
    input_path: Path,
    parts: Sequence[Path],
    out: Path,
    columns: Columns | None = None,
    allow_missing: bool = False,
) -> MergeReport:
    """Writes `out` (format from its suffix) with one record per input row, in input order."""
    fmt = output_format(out)
    index = index_parts(parts)
    report = MergeReport()
    order: list[tuple[str, tuple[int, int, int]]] = []
    input_fields: list[str] = []
    for row in read_rows(input_path, columns or Columns()):
        for name in row.fields:
            if name not in input_fields:
                input_fields.append(name)
        where = index.pop(row.id, None)
        if where is None:
            report.missing_count += 1
            if len(report.missing) < 20:
                report.missing.append(row.id)
        else:
            order.append((row.id, where))
    report.extra_count = len(index)
    if report.extra_count:
        log.warning("%d ids in the parts are not in %s; left out", report.extra_count, input_path)
    if report.missing_count and not allow_missing:
        raise MergeError(
            f"{report.missing_count} input ids are in no part file (first: {report.missing[:5]}); "
            "finish the job (re-run the shards) or pass --allow-missing"
        )
    report.rows = len(order)
    reader = _PartReader(parts)
    try:
        if fmt == ".jsonl":
            report.files = [str(_write_jsonl(out, order, reader))]
        elif fmt == ".csv":
            report.files = [str(_write_csv(out, order, reader, input_fields))]
        else:
            report.files = [str(p) for p in _write_npy(out, order, reader)]
    finally:
        reader.close()
    return report


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _publish(tmp: Path, path: Path) -> Path:
    """Atomic rename, so a reader never sees a half-written output."""
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _write_jsonl(out: Path, order: list, reader: _PartReader) -> Path:
    tmp = _tmp(out)
    with tmp.open("wb") as f:
        for _, where in order:
            f.write(reader.line(where))
    return _publish(tmp, out)


def _write_csv(out: Path, order: list, reader: _PartReader, input_fields: list[str]) -> Path:
    """The input's columns, then id, clip_score, cosine, error (code) and error_message."""
    fieldnames = [name for name in input_fields if name not in SCORE_COLUMNS] + list(SCORE_COLUMNS)
    tmp = _tmp(out)
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        for _, where in order:
            record: dict[str, Any] = json.loads(reader.line(where))
            error = record.pop("error", None) or {}
            if "text_embedding" in record or "image_embedding" in record:
                raise MergeError("CSV output is for `score` results; write embeddings as .jsonl or .npy")
            record["error"] = error.get("code", "")
            record["error_message"] = error.get("message", "")
            writer.writerow(record)
    return _publish(tmp, out)


def npy_paths(out: Path) -> dict[str, Path]:
    """emb.npy -> emb.text.npy, emb.image.npy, emb.ids.txt."""
    base = strip_output_suffix(out)
    return {
        "text": base.with_name(base.name + ".text.npy"),
        "image": base.with_name(base.name + ".image.npy"),
        "ids": base.with_name(base.name + ".ids.txt"),
    }


def _write_npy(out: Path, order: list, reader: _PartReader) -> list[Path]:
    """One float32 matrix per modality the data has, row i = ids[i]; NaN where a row has none."""
    paths = npy_paths(out)
    dims: dict[str, int] = {}
    for _, where in order:  # first pass: which modalities, which dims
        record = json.loads(reader.line(where))
        for kind in ("text", "image"):
            vector = record.get(f"{kind}_embedding")
            if vector is not None and kind not in dims:
                dims[kind] = len(vector)
        if len(dims) == 2:
            break
    written: list[Path] = []
    matrices = {}
    for kind, dim in dims.items():
        matrices[kind] = np.lib.format.open_memmap(
            _tmp(paths[kind]), mode="w+", dtype=np.float32, shape=(len(order), dim)
        )
        matrices[kind][:] = np.nan
    ids_tmp = _tmp(paths["ids"])
    with ids_tmp.open("w", encoding="utf-8") as ids_file:
        for i, (row_id, where) in enumerate(order):
            record = json.loads(reader.line(where))
            ids_file.write(row_id.replace("\n", " ") + "\n")
            for kind, matrix in matrices.items():
                vector = record.get(f"{kind}_embedding")
                if vector is not None:
                    matrix[i] = vector
    for kind, matrix in matrices.items():
        matrix.flush()
        del matrix
        written.append(_publish(_tmp(paths[kind]), paths[kind]))
    matrices.clear()
    written.append(_publish(ids_tmp, paths["ids"]))
    return written
