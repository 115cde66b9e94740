"""clipserve-batch index build | verify | push: the search indexes the service opens or talks to.

    clipserve-batch index build --input items.csv --output indexes/products/v1 --local
    clipserve-batch index build --input emb.npy --metadata items.csv --output indexes/products/v2 --endpoint URL
    clipserve-batch index verify indexes/products/v1
    clipserve-batch index push --input items.csv --qdrant-url https://QDRANT:6333 --collection products --local
    clipserve-batch index push --bucket gs://photos --qdrant-url https://QDRANT:6333 --collection photos --local

`build` embeds the input first when it is not an embed output (into OUTPUT.embeddings.jsonl, resumable
as `embed` is: re-running the command picks up where a killed run stopped), then writes the folder
atomically (manifest last). The model identity in the manifest comes from the target: the bundle's
manifest with --local, GET / with --endpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batch import index_input, index_source, options, output, thumbnails
from batch.reader import Columns
from batch.specs import BuildSpec
from search import build as index_build
from search import index_format
from search.errors import IndexUnusable

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
    build.add_argument("--thumbnails", nargs="?", const=thumbnails.DEFAULT_SIZE, type=_thumbnail_size,
                       metavar="SIZE", help="store a JPEG thumbnail per item, SIZE px on the long side (default "
                                            f"{thumbnails.DEFAULT_SIZE}), served at GET /items/ID/thumbnail; from "
                                            "local files, data URIs and base64 (image URLs are shown as they are)")
    index_source.add_source_args(build, "OUTPUT.embeddings.jsonl")
    verify = sub.add_parser("verify", help="check a version folder: manifest, sizes and every file's sha256")
    verify.add_argument("directory", type=Path)
    push = sub.add_parser("push", help="embed (if needed) and upsert into a Qdrant collection (created if missing)")
    rows = push.add_mutually_exclusive_group(required=True)
    rows.add_argument("--input", type=Path, help="an embed output (.jsonl or .npy), or rows to embed (CSV, TSV, JSONL)")
    rows.add_argument("--bucket", metavar="gs://B[/prefix] | s3://B[/prefix]",
                      help="a backfill: the bucket's images, with the ids, metadata and ordering marks bucket events "
                           "give (docs/ingest.md); read with this machine's credentials")
    push.add_argument("--path-keys", default=os.environ.get("INGEST_PATH_KEYS"),
                      help="with --bucket: metadata keys for the leading folders (default: $INGEST_PATH_KEYS)")
    push.add_argument("--max-image-bytes", type=int, default=16 * 1024 * 1024,
                      help="with --bucket: larger objects are left out (default 16 MiB, as MAX_IMAGE_BYTES)")
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
    index_source.add_source_args(push, "INPUT.embeddings.jsonl beside it")


def _thumbnail_size(value: str) -> int:
    try:
        return thumbnails.parse_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def cmd_build(spec: BuildSpec) -> int:
    started = time.monotonic()
    final = spec.output
    if (final / index_format.MANIFEST).exists():
        raise ValueError(f"{final} is already a complete index: versions are immutable; build into a new folder")
    with output.exclusive(final):
        source = index_source.embedding_source(spec.source, final.with_name(final.name + ".embeddings.jsonl"))
        if source is None:
            return 2
        summary = _write(spec, final, source.embeddings, source.metadata, source.model)
    if source.embed_summary is not None:
        summary["embed"] = source.embed_summary
    summary["seconds"] = round(time.monotonic() - started, 2)
    log.info("index build: %s: %d items (%s), %s index; left out: %s", final, summary["count"], summary["modality"],
             summary["index"]["type"], summary["skipped"] or "none")
    print(json.dumps(summary), flush=True)
    return 0


def _write(spec: BuildSpec, final: Path, embeddings_path: Path, metadata: Path | None,
           model: dict[str, Any]) -> dict[str, Any]:
    columns = spec.source.columns
    with index_source.collected_rows(spec.source, embeddings_path, metadata, columns, model) as (
            modality, from_csv, types, collected):
        no_thumbnail: Counter = Counter()
        path = index_build.write_index(
            final, collected.vectors, index_input.metadata_of_kept(metadata, columns, collected),
            columns=types.result(), from_csv=from_csv, model=model, modality=modality,
            name=spec.name or final.resolve().parent.name, options=spec.options,
            build={"input": str(spec.source.input), "metadata": str(metadata) if metadata else None,
                   "skipped": dict(collected.skipped), "tool": "clipserve-batch index build"},
            thumbnails=_thumbnails(spec, metadata, columns, collected, no_thumbnail), thumbnail_size=spec.thumbnails)
    manifest = index_format.read_manifest(path)
    return {"command": "index build", "output": str(path), "name": manifest["name"], "version": manifest["version"],
            "count": manifest["count"], "modality": modality, "index": manifest["index"],
            "columns": manifest["metadata"]["columns"], "skipped": dict(collected.skipped), "model": model,
            "embeddings": str(embeddings_path),
            **({"thumbnails": {**manifest["thumbnails"], "without": dict(no_thumbnail)}} if spec.thumbnails else {})}


def _thumbnails(spec: BuildSpec, metadata: Path | None, columns: Columns, collected: Any,
                skipped: Counter) -> Iterator[bytes | None] | None:
    """A thumbnail (or None) per kept row, from the image cells of the rows file; None without --thumbnails."""
    if not spec.thumbnails:
        return None
    if metadata is None:
        raise ValueError("--thumbnails needs the rows that name the images: build from the rows file, or pass "
                         "--metadata FILE with an embed output")
    cells = (row.image for row in index_input.rows_of_kept(metadata, columns, collected))
    search_dirs = options.image_dirs(metadata) + options.image_dirs(spec.source.input)
    return thumbnails.thumbnails_of(cells, spec.thumbnails, search_dirs, skipped)
