"""clipserve-batch index build | verify | push: the search indexes the service opens or talks to.

    clipserve-batch index build --input items.csv --output indexes/products/v1 --local
    clipserve-batch index build --input emb.npy --metadata items.csv --output indexes/products/v2 --endpoint URL
    clipserve-batch index verify indexes/products/v1
    clipserve-batch index push --input items.csv --qdrant-url https://QDRANT:6333 --collection products --local

`build` embeds the input first when it is not an embed output (into OUTPUT.embeddings.jsonl, resumable
as `embed` is: re-running the command picks up where a killed run stopped), then writes the folder
atomically (manifest last). The model identity in the manifest comes from the target: the bundle's
manifest with --local, GET / with --endpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch import index_input, options, output
from batch.reader import Columns, InputError, iter_records
from batch.retry import RetryTally
from batch.runner import JobSpec, JobStopped, run_job
from search import build as index_build
from search import index_format
from search.errors import IndexUnusable
from search.items_db import ColumnTypes
from search.query import MODEL_KEYS

log = logging.getLogger("batch")


def add_parser(commands: Any) -> None:
    index = commands.add_parser("index", help="build or check a search index version folder")
    sub = index.add_subparsers(dest="index_command", required=True)
    build = sub.add_parser("build", help="embed (if needed) and write an index version folder")
    build.add_argument("--input", required=True, type=Path,
                       help="an embed output (.jsonl or .npy), or rows to embed (CSV, TSV, JSONL)")
    build.add_argument("--output", required=True, type=Path,
                       help="the version folder to write, e.g. indexes/products/v3 (must not exist)")
    build.add_argument("--name", help="the index's name (default: the output's parent folder name)")
    build.add_argument("--modality", choices=index_input.MODALITIES,
                       help="which embedding to index (default: image when the rows have images, else text)")
    build.add_argument("--index-type", choices=index_build.INDEX_TYPES, default="auto",
                       help=f"flat = exact; hnsw = approximate (default auto: flat up to {index_build.FLAT_MAX:,} "
                            "items, hnsw above)")
    build.add_argument("--hnsw-m", type=int, default=index_build.HNSW_M,
                       help=f"hnsw: links per item (default {index_build.HNSW_M})")
    build.add_argument("--ef-construction", type=int, default=index_build.EF_CONSTRUCTION,
                       help=f"hnsw: build breadth (default {index_build.EF_CONSTRUCTION})")
    build.add_argument("--ef-search", type=int, default=index_build.EF_SEARCH,
                       help=f"hnsw: query breadth the service uses (default {index_build.EF_SEARCH})")
    _add_source_args(build, "OUTPUT.embeddings.jsonl")
    verify = sub.add_parser("verify", help="check a version folder: manifest, sizes and every file's sha256")
    verify.add_argument("directory", type=Path)
    push = sub.add_parser("push", help="embed (if needed) and upsert into a Qdrant collection (created if missing)")
    push.add_argument("--input", required=True, type=Path,
                      help="an embed output (.jsonl or .npy), or rows to embed (CSV, TSV, JSONL)")
    qdrant = push.add_mutually_exclusive_group(required=True)
    qdrant.add_argument("--qdrant-url", default=os.environ.get("QDRANT_URL"), help="a Qdrant server")
    qdrant.add_argument("--qdrant-path", type=Path, help="qdrant-client's local mode on this folder")
    push.add_argument("--collection", default=os.environ.get("QDRANT_COLLECTION", "clipserve"),
                      help="the collection (default: $QDRANT_COLLECTION or clipserve)")
    push.add_argument("--qdrant-api-key", default=os.environ.get("QDRANT_API_KEY"),
                      help="API key for --qdrant-url (default: $QDRANT_API_KEY)")
    push.add_argument("--qdrant-timeout", type=float, default=30.0, help="seconds per Qdrant call (default 30)")
    push.add_argument("--push-batch-size", type=int, default=256, help="points per upsert (default 256)")
    push.add_argument("--modality", choices=index_input.MODALITIES,
                      help="which embedding to push (default: image when the rows have images, else text)")
    _add_source_args(push, "INPUT.embeddings.jsonl beside it")


def _add_source_args(parser: argparse.ArgumentParser, default_embeddings: str) -> None:
    """Where the rows' vectors and metadata come from, and how to embed them (index build and push)."""
    parser.add_argument("--metadata-columns", help="comma-separated columns to keep (default: all but the id)")
    parser.add_argument("--metadata", type=Path,
                        help="with an embed output as --input: the CSV/JSONL holding the rows' metadata, by id")
    parser.add_argument("--embeddings", type=Path,
                        help=f"where rows to embed are embedded to (default: {default_embeddings})")
    options.add_target_args(parser, required=True)
    options.add_run_args(parser, "index", sharding=False)
    options.add_column_args(parser)


def run(args: argparse.Namespace) -> int:
    if args.index_command == "verify":
        return cmd_verify(args.directory)
    if args.index_command == "push":
        from batch import index_push

        return index_push.cmd_push(args)
    return cmd_build(args)


def cmd_verify(directory: Path) -> int:
    try:
        manifest = index_format.verify(directory)
    except IndexUnusable as exc:
        log.error("%s", exc)
        return 3
    log.info("%s: %d items, %d files, sha256 all match", directory, manifest["count"], len(manifest["files"]))
    print(json.dumps({"directory": str(directory), "ok": True, "count": manifest["count"],
                      "files": manifest["files"]}), flush=True)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    final = args.output
    if (final / index_format.MANIFEST).exists():
        raise ValueError(f"{final} is already a complete index: versions are immutable; build into a new folder")
    columns = options.columns(args)
    with output.exclusive(final):
        source = embedding_source(args, final.with_name(final.name + ".embeddings.jsonl"))
        if source is None:
            return 2
        summary = _write(args, final, source.embeddings, source.metadata, columns, source.model)
    if source.embed_summary is not None:
        summary["embed"] = source.embed_summary
    summary["seconds"] = round(time.monotonic() - started, 2)
    log.info("index build: %s: %d items (%s), %s index; left out: %s", final, summary["count"], summary["modality"],
             summary["index"]["type"], summary["skipped"] or "none")
    print(json.dumps(summary), flush=True)
    return 0


@dataclass(frozen=True)
class Source:
    """Where an index's vectors and metadata come from, once anything that needed embedding is embedded."""

    embeddings: Path
    metadata: Path | None
    model: dict[str, Any]
    embed_summary: dict[str, Any] | None = None


def embedding_source(args: argparse.Namespace, default_part: Path) -> Source | None:
    """An embed output as it is (model identity from the target), or rows embedded into --embeddings /
    `default_part` first (resuming it). None when the embedding target failed for good."""
    if not index_input.is_embed_output(args.input):
        if args.metadata is not None:
            raise ValueError("--metadata is for an embed output as --input; rows to embed carry their own columns")
        part = args.embeddings or default_part
        embedded = _embed(args, part)
        return None if embedded is None else Source(part, args.input, *embedded)
    return Source(args.input, args.metadata, _model_without_embedding(args))


def _model_without_embedding(args: argparse.Namespace) -> dict[str, Any]:
    """The model identity when nothing needs embedding: the bundle's manifest, or the service's GET /."""
    if args.local:
        from models.bundle import model_identity

        return model_identity(args.model_dir, args.variant)
    args.concurrency = args.concurrency or 1
    target = options.make_target(args, RetryTally())
    try:
        return _identity(target.describe())
    finally:
        target.close()


def _embed(args: argparse.Namespace, part: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Embed the input into `part` (resuming it), as `embed` would: (model identity, the embed summary), or
    None when the target failed for good (what was embedded is kept)."""
    iter_records(args.input)  # a missing or unknown input fails now, not after loading a model
    if args.concurrency is None:
        args.concurrency = 2 if args.local else 4
    spec = JobSpec(command="embed", input=args.input, part=part, columns=options.columns(args),
                   batch_size=args.batch_size, concurrency=args.concurrency,
                   progress_interval_s=args.progress_interval, retry_errors=args.retry_errors)
    tally = RetryTally()
    target = options.make_target(args, tally)
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
    log.info("embedded %s into %s: %d rows (%d already there), errors: %s", args.input, part, summary.rows,
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
def collected_rows(args: argparse.Namespace, embeddings_path: Path, metadata: Path | None, columns: Columns,
                   model: dict[str, Any]) -> Iterator[tuple[str, bool, ColumnTypes, index_input.Collected]]:
    """(modality, from_csv, column types, the usable rows) of an embed output, its vectors in a local scratch file
    ($TMPDIR: the output may be a bucket mount) for as long as the block runs."""
    embeddings = index_input.EmbedOutput(embeddings_path)
    try:
        modality = args.modality or ("image" if embeddings.has("image") else "text")
        names = _metadata_names(metadata, columns, args.metadata_columns)
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


def _write(args: argparse.Namespace, final: Path, embeddings_path: Path, metadata: Path | None, columns: Columns,
           model: dict[str, Any]) -> dict[str, Any]:
    with collected_rows(args, embeddings_path, metadata, columns, model) as (modality, from_csv, types, collected):
        index_options = index_build.IndexOptions(args.index_type, args.hnsw_m, args.ef_construction, args.ef_search)
        path = index_build.write_index(
            final, collected.vectors, index_input.metadata_of_kept(metadata, columns, collected),
            columns=types.result(), from_csv=from_csv, model=model, modality=modality,
            name=args.name or final.resolve().parent.name, options=index_options,
            build={"input": str(args.input), "metadata": str(metadata) if metadata else None,
                   "skipped": dict(collected.skipped), "tool": "clipserve-batch index build"})
    manifest = index_format.read_manifest(path)
    return {"command": "index build", "output": str(path), "name": manifest["name"], "version": manifest["version"],
            "count": manifest["count"], "modality": modality, "index": manifest["index"],
            "columns": manifest["metadata"]["columns"], "skipped": dict(collected.skipped), "model": model,
            "embeddings": str(embeddings_path)}


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
