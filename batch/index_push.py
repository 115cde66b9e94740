"""clipserve-batch index push: an embed output (or rows, embedded first) upserted into a Qdrant collection.

The collection is created when missing (the model's dimension, cosine distance, clipserve's description
in its metadata, payload indexes for the filterable columns on a server) and checked when it exists (the
same model and modality, or the push stops before writing). Points are upserted in batches under ids
derived from the rows' ids, so a push is idempotent; a progress file beside the embeddings records how far
it got, and a re-run after a kill continues from there: every id ends up in the collection exactly once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from batch import bucket_source, index_input, index_source
from batch.specs import PushSpec
from batch.progress import make_progress
from search import qdrant_index
from search.errors import BackendTimeout, IndexUnusable, Unavailable
from search.items_db import typed_metadata
from search.query import Item

log = logging.getLogger("batch")


def cmd_push(spec: PushSpec) -> int:
    if spec.bucket is None:
        return _push(spec)
    with bucket_source.staged_rows(spec.bucket, spec.max_image_bytes, spec.path_keys) as staged:
        if not staged.marks:
            log.error("backfill: %s holds no image to push (left out: %s)", spec.bucket, staged.skipped or "none")
            return 3  # EXIT_INCOMPLETE: nothing was pushed
        rows = dataclasses.replace(spec.source, input=staged.rows, embeddings=staged.rows.with_name("emb.jsonl"),
                                   metadata_columns=",".join(staged.columns))
        return _push(dataclasses.replace(spec, source=rows), staged)


def _push(spec: PushSpec, staged: bucket_source.Staged | None = None) -> int:
    """Rows (or a backfill's staged rows) embedded if needed and upserted; a backfill's ledger marks recorded."""
    started = time.monotonic()
    if spec.push_batch_size < 1:
        raise ValueError("--push-batch-size must be at least 1")
    where = str(spec.qdrant_path) if spec.qdrant_path else spec.qdrant_url
    client = qdrant_index.connect(url=spec.qdrant_url, path=spec.qdrant_path, api_key=spec.qdrant_api_key,
                                  timeout_s=spec.qdrant_timeout_s)
    try:
        if staged is not None and client.collection_exists(spec.collection):
            staged.drop_overtaken(qdrant_index.QdrantIndex.open(client, spec.collection, where,
                                                                timeout_s=spec.qdrant_timeout_s,
                                                                local=spec.qdrant_path is not None))
        rows_input = spec.source.input
        source = index_source.embedding_source(spec.source,
                                               rows_input.with_name(rows_input.stem + ".embeddings.jsonl"))
        if source is None:
            return 2
        columns = spec.source.columns
        with index_source.collected_rows(spec.source, source.embeddings, source.metadata, columns, source.model) as (
                modality, from_csv, types, collected):
            index = _collection(client, spec, where, source.model, modality, types.result())
            progress_file = _progress_path(source.embeddings, spec.collection, where)
            done = _resume_point(progress_file, collected.kept_ids)
            rows = index_input.metadata_of_kept(source.metadata, columns, collected)
            pushed = _upsert(index, collected, rows, types.result(), from_csv, done, progress_file, spec)
            if staged is not None:
                staged.record(index)
            count = index.refresh_count()
    except (Unavailable, BackendTimeout) as exc:
        log.error("%s. Points written so far are kept; re-run the same command to continue.", exc)
        return 2
    finally:
        client.close()
    summary = {"command": "index push", "collection": spec.collection, "qdrant": where, "modality": modality,
               "rows": len(collected.kept_ids), "already_pushed": done, "upserted": pushed, "collection_count": count,
               "skipped": {**dict(collected.skipped), **(staged.skipped if staged else {})}, "model": source.model,
               "seconds": round(time.monotonic() - started, 2), "embeddings": str(source.embeddings)}
    if spec.bucket is not None:
        summary["bucket"] = spec.bucket
    seconds = max(summary["seconds"], 1e-9)
    summary["points_per_s"] = round(pushed / seconds, 1)
    if source.embed_summary is not None:
        summary["embed"] = source.embed_summary
    log.info("index push: %d points into %s at %s (%d already there), %.1f points/s; left out: %s", pushed,
             spec.collection, where, done, summary["points_per_s"], summary["skipped"] or "none")
    print(json.dumps(summary), flush=True)
    return 0


def _collection(client: Any, spec: PushSpec, where: str, model: dict[str, Any], modality: str,
                columns: dict[str, str]) -> qdrant_index.QdrantIndex:
    """The collection, created for this model if missing; an existing one must be for the same model and modality."""
    local = spec.qdrant_path is not None
    if not client.collection_exists(spec.collection):
        log.info("creating Qdrant collection %s at %s (dim %s, cosine, %s)", spec.collection, where, model["dim"],
                 modality)
        qdrant_index.create_collection(client, spec.collection, model=model, modality=modality, columns=columns,
                                       local=local)
    index = qdrant_index.QdrantIndex.open(client, spec.collection, where, timeout_s=spec.qdrant_timeout_s, local=local)
    index.check_model(model)
    if index.description["modality"] != modality:
        raise IndexUnusable(f"Qdrant collection {spec.collection!r} holds {index.description['modality']} "
                            f"embeddings; this push has {modality} ones (--modality)")
    clashes = {k: (v, columns[k]) for k, v in index.columns().items() if k in columns and v != columns[k]
               and not (v == "float" and columns[k] == "int")}
    if clashes:
        raise IndexUnusable(f"the collection's columns have other types: {clashes} (collection, this input)")
    index.add_columns(columns)
    return index


def _progress_path(embeddings: Path, collection: str, where: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{collection}@{where}")[:150]
    return embeddings.with_name(f".{embeddings.name}.pushed-{safe}.json")


def _resume_point(path: Path, ids: list[str]) -> int:
    """How many of the rows (in order) a previous push of the same rows got into the collection."""
    try:
        state = json.loads(path.read_text())
        done, last = int(state["done"]), state["last_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    if 0 < done <= len(ids) and ids[done - 1] == last:
        log.info("resuming: %d points pushed by an earlier run", done)
        return done
    return 0


def _upsert(index: qdrant_index.QdrantIndex, collected: Any, rows: Any, columns: dict[str, str], from_csv: bool,
            done: int, progress_file: Path, spec: PushSpec) -> int:
    total = len(collected.kept_ids)
    progress = make_progress(total - done, "index push", spec.source.run.progress_interval_s)
    pushed = 0
    try:
        rows = itertools.islice(enumerate(rows), done, None)
        while True:
            batch = list(itertools.islice(rows, spec.push_batch_size))
            if not batch:
                break
            items = [Item(id=item_id, vector=collected.vectors[i], metadata=typed_metadata(record, columns, from_csv))
                     for i, (item_id, record) in batch]
            index.upsert(items)
            pushed += len(items)
            _save_progress(progress_file, done + pushed, items[-1].id)
            progress.update(len(items), 0)
    finally:
        progress.close()
    return pushed


def _save_progress(path: Path, done: int, last_id: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"done": done, "last_id": last_id}))
    os.replace(partial, path)
