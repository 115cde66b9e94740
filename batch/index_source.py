"""Where an index's rows come from, shared by ``index build`` and ``index push``: an embed output as it is, or rows
embedded first (resumably, as ``embed`` does), with the model identity that made them; and the usable rows
collected from it with their metadata columns."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch import index_input, options
from batch.reader import Columns, InputError, iter_records
from batch.retry import RetryTally
from batch.runner import JobSpec, JobStopped, run_job
from batch.specs import SourceSpec
from search.items_db import ColumnTypes
from search.query import MODEL_KEYS

log = logging.getLogger("batch")


def add_source_args(parser: argparse.ArgumentParser, default_embeddings: str) -> None:
    """Where the rows' vectors and metadata come from, and how to embed them (index build and push)."""
    parser.add_argument("--metadata-columns", help="comma-separated columns to keep (default: all but the id)")
    parser.add_argument("--metadata", type=Path,
                        help="with an embed output as --input: the CSV/JSONL holding the rows' metadata, by id")
    parser.add_argument("--embeddings", type=Path,
                        help=f"where rows to embed are embedded to (default: {default_embeddings})")
    options.add_target_args(parser, required=True)
    options.add_run_args(parser, "index", sharding=False)
    options.add_column_args(parser)


@dataclass(frozen=True)
class Source:
    """Where an index's vectors and metadata come from, once anything that needed embedding is embedded."""

    embeddings: Path
    metadata: Path | None
    model: dict[str, Any]
    embed_summary: dict[str, Any] | None = None


def embedding_source(source: SourceSpec, default_part: Path) -> Source | None:
    """An embed output as it is (model identity from the target), or rows embedded into --embeddings /
    `default_part` first (resuming it). None when the embedding target failed for good."""
    if not index_input.is_embed_output(source.input):
        if source.metadata is not None:
            raise ValueError("--metadata is for an embed output as --input; rows to embed carry their own columns")
        part = source.embeddings or default_part
        embedded = _embed(source, part)
        return None if embedded is None else Source(part, source.input, *embedded)
    return Source(source.input, source.metadata, _model_without_embedding(source))


def _model_without_embedding(source: SourceSpec) -> dict[str, Any]:
    """The model identity when nothing needs embedding: the bundle's manifest, or the service's GET /."""
    if source.target.local:
        from models.bundle import model_identity

        return model_identity(source.target.model_dir, source.target.local_variant())
    target = options.make_target(source.target, source.input, RetryTally())
    try:
        return _identity(target.describe())
    finally:
        target.close()


def _embed(source: SourceSpec, part: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Embed the input into `part` (resuming it), as `embed` would: (model identity, the embed summary), or
    None when the target failed for good (what was embedded is kept)."""
    iter_records(source.input)  # a missing or unknown input fails now, not after loading a model
    run = source.run
    spec = JobSpec(command="embed", input=source.input, part=part, columns=source.columns,
                   batch_size=run.batch_size, concurrency=run.concurrency_for(source.target),
                   progress_interval_s=run.progress_interval_s, retry_errors=run.retry_errors)
    tally = RetryTally()
    target = options.make_target(source.target, source.input, tally)
    try:
        summary = run_job(spec, target, tally)
        model = _identity(target.describe())
    except JobStopped as stopped:
        log.error("stopped while embedding: %s. Rows embedded so far are kept in %s; re-run the same command to "
                  "resume.", stopped.cause, part)
        print(json.dumps(stopped.summary.as_dict()), flush=True)
        return None
    finally:
        target.close()
    log.info("embedded %s into %s: %d rows (%d already there), errors: %s", source.input, part, summary.rows,
             summary.already_done, summary.errors or "none")
    return model, {"rows": summary.rows, "already_done": summary.already_done, "written": summary.written,
                   "errors": summary.errors, "retries": summary.retries}


def _identity(described: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in MODEL_KEYS if not described.get(k)]
    if missing:
        raise ValueError(f"the target does not say which model it serves ({', '.join(missing)} missing from its "
                         "model info); update the service")
    return {k: described[k] for k in MODEL_KEYS}


@contextlib.contextmanager
def collected_rows(source: SourceSpec, embeddings_path: Path, metadata: Path | None, columns: Columns,
                   model: dict[str, Any]) -> Iterator[tuple[str, bool, ColumnTypes, index_input.Collected]]:
    """(modality, from_csv, column types, the usable rows) of an embed output, its vectors in a local scratch file
    ($TMPDIR: the output may be a bucket mount) for as long as the block runs."""
    embeddings = index_input.EmbedOutput(embeddings_path)
    try:
        modality = source.modality or ("image" if embeddings.has("image") else "text")
        names = _metadata_names(metadata, columns, source.metadata_columns)
        from_csv = metadata is not None and metadata.suffix.lower() in (".csv", ".tsv")
        types = ColumnTypes(names, from_csv)
        with tempfile.TemporaryDirectory(prefix="clipserve-index-") as scratch:
            collected = index_input.collect(embeddings, modality, int(model["dim"]), Path(scratch) / "vectors.f32",
                                            metadata=metadata, columns=columns, metadata_columns=names, types=types)
            if not collected.kept_ids:
                raise InputError(f"no row has a usable {modality} embedding (left out: {dict(collected.skipped)})")
            yield modality, from_csv, types, collected
    finally:
        embeddings.close()


def _metadata_names(metadata: Path | None, columns: Columns, chosen: str | None) -> list[str]:
    """The metadata columns to keep: --metadata-columns, else every column but the id (first-seen order)."""
    if metadata is None:
        if chosen:
            raise ValueError("--metadata-columns needs metadata: rows to embed as --input, or --metadata FILE")
        return []
    seen: dict[str, None] = {}
    for record in iter_records(metadata):
        seen.update(dict.fromkeys(record))
    id_column = columns.id or ("id" if "id" in seen else None)
    if chosen:
        names = [name.strip() for name in chosen.split(",") if name.strip()]
        unknown = [name for name in names if name not in seen]
        if unknown:
            raise ValueError(f"--metadata-columns: {', '.join(unknown)} not in {metadata} "
                             f"(it has: {', '.join(seen)})")
        return names
    return [name for name in seen if name != id_column]
