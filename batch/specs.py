"""What a clipserve-batch command was asked to do, as typed values: the CLI (batch/cli.py) reads its flags into
these, and nothing below it sees the argparse namespace, so a flag can be renamed in one place and the commands
can be driven from code."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from batch.reader import Columns
from batch.sharding import Shard
from search.build import IndexOptions


@dataclass(frozen=True)
class TargetSpec:
    """Where rows are embedded: a clipserve service (``endpoint``, its credentials and patience) or a bundle loaded
    in this process (``endpoint`` None). ``model``: a served model or alias, or with a bundle the variant."""

    endpoint: str | None = None
    model: str | None = None
    model_dir: Path = Path("/models")
    allow_private_urls: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # Authorization (--token / --api-key) and --header
    google_id_token: bool = False
    aws_sigv4: bool = False
    aws_region: str | None = None
    timeout_s: float = 300.0
    max_retries: int = 10
    backoff_max_s: float = 30.0

    @property
    def local(self) -> bool:
        return self.endpoint is None

    def local_variant(self) -> str:
        """A bundle's variant: ``model``, else $MODEL_VARIANT, else english."""
        return self.model or os.environ.get("MODEL_VARIANT", "english")


@dataclass(frozen=True)
class RunSpec:
    """How a job runs: rows per request, requests in flight (None: the command's default for its target), progress
    lines, and whether rows written with an error are done again when resuming."""

    batch_size: int = 16
    concurrency: int | None = None
    progress_interval_s: float = 30.0
    retry_errors: bool = False
    normalize: bool = True

    def concurrency_for(self, target: TargetSpec, remote: int = 4, local: int = 2) -> int:
        return self.concurrency or (local if target.local else remote)


@dataclass(frozen=True)
class JobArgs:
    """``embed`` / ``score`` (and ``score --compare``)."""

    command: str
    input: Path
    output: Path
    columns: Columns
    target: TargetSpec
    run: RunSpec
    shard: Shard
    compare_tolerance: float | None = None  # score --compare


@dataclass(frozen=True)
class SourceSpec:
    """Where an index's rows come from (``index build`` and ``index push``): an embed output as it is, or rows to
    embed first with ``target``."""

    input: Path
    columns: Columns
    target: TargetSpec
    run: RunSpec
    embeddings: Path | None = None
    metadata: Path | None = None
    metadata_columns: str | None = None
    modality: str | None = None


@dataclass(frozen=True)
class BuildSpec:
    source: SourceSpec
    output: Path
    name: str | None
    options: IndexOptions
    thumbnails: int | None = None


@dataclass(frozen=True)
class PushSpec:
    source: SourceSpec
    collection: str
    qdrant_url: str | None = None
    qdrant_path: Path | None = None
    qdrant_api_key: str | None = None
    qdrant_timeout_s: float = 30.0
    push_batch_size: int = 256
    bucket: str | None = None           # --bucket gs://B/prefix | s3://B/prefix: a backfill (source.input unused)
    path_keys: tuple[str, ...] = ()     # --path-keys, as INGEST_PATH_KEYS
    max_image_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class EvalSpec:
    target: TargetSpec
    models: tuple[str | None, ...]
    zero_shot: Path | None = None
    retrieval: Path | None = None
    clip_score: Path | None = None
    image_column: str = "image"
    text_column: str = "caption"
    templates: str = "openai_imagenet"
    batch_size: int = 32
    concurrency: int = 2
    json: Path | None = None
