"""The flags every clipserve-batch command shares (embed, score, index, eval), and the target they name.

The add_* functions build the parsers; batch/cli.py reads the flags into typed specs (batch/specs.py), and
``make_target`` takes one of those, never the namespace."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from batch.retry import RetryTally
from batch.sharding import SHARD_BY
from batch.specs import TargetSpec

log = logging.getLogger("batch")


def add_column_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("columns (default: id; text or caption; image or url)")
    group.add_argument("--id-column", help="column with unique row ids (default: 'id', else the row number)")
    group.add_argument("--text-column")
    group.add_argument("--image-column")


def add_model_arg(group: Any) -> None:
    group.add_argument(
        "--model",
        "--variant",
        dest="model",
        default=None,
        help="the model: with --endpoint a model the service serves, or an alias (default: its default model); "
        "with --local the variant to load (default: $MODEL_VARIANT or english). --variant is the older name",
    )


def add_target_args(parser: argparse.ArgumentParser, required: bool, with_model: bool = True) -> None:
    """--endpoint / --local and how to reach or load the model (shared with `index build` and `index push`).
    ``with_model``: add --model (eval adds its own, repeatable)."""
    target = parser.add_argument_group("target (one of --endpoint / --local)")
    where = target.add_mutually_exclusive_group(required=required)
    where.add_argument("--endpoint", metavar="URL", help="base URL of a clipserve service")
    where.add_argument("--local", action="store_true", help="load the model bundle in this process; no server")
    target.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get("MODEL_DIR", "/models")),
        help="--local: folder of baked bundles (default: $MODEL_DIR or /models)",
    )
    if with_model:
        add_model_arg(target)
    target.add_argument(
        "--allow-private-urls", action="store_true", help="--local: let image URLs point at private/loopback addresses"
    )
    auth = parser.add_argument_group("credentials for a private --endpoint")
    auth.add_argument(
        "--token",
        default=os.environ.get("CLIPSERVE_TOKEN"),
        help="sent as 'Authorization: Bearer TOKEN' (default: $CLIPSERVE_TOKEN)",
    )
    auth.add_argument(
        "--api-key",
        default=os.environ.get("CLIPSERVE_API_KEY"),
        help="one of the service's API_KEYS, sent as 'Authorization: Bearer KEY' (default: $CLIPSERVE_API_KEY)",
    )
    auth.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra header (repeatable)"
    )
    auth.add_argument(
        "--google-id-token",
        action="store_true",
        help="send a Google ID token for the endpoint (private Cloud Run service), refreshed hourly;"
        " from the metadata server or GOOGLE_APPLICATION_CREDENTIALS",
    )
    auth.add_argument(
        "--aws-sigv4",
        action="store_true",
        help="sign requests with AWS SigV4 (Lambda function URL, AWS_IAM auth); needs botocore",
    )
    auth.add_argument("--aws-region", help="--aws-sigv4 region (default: from the URL or the AWS config)")


def add_run_args(parser: argparse.ArgumentParser, command: str, sharding: bool = True) -> None:
    run = parser.add_argument_group("running")
    run.add_argument("--batch-size", type=int, default=16, help="rows per request (default 16)")
    run.add_argument(
        "--concurrency", type=int, default=None, help="batches in flight (default 4 with --endpoint, 2 with --local)"
    )
    run.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one response (default 300)")
    run.add_argument(
        "--max-retries", type=int, default=10, help="retries per request on 429/5xx/connection errors (default 10)"
    )
    run.add_argument(
        "--backoff-max", type=float, default=30.0, help="longest pause between retries without Retry-After"
    )
    if sharding:
        run.add_argument(
            "--shard", metavar="I/N", help="process shard I of N (default: $CLOUD_RUN_TASK_INDEX/$CLOUD_RUN_TASK_COUNT)"
        )
        run.add_argument(
            "--shard-by",
            choices=SHARD_BY,
            default="position",
            help="position: row i -> shard i mod N; id: stable hash of the id",
        )
    run.add_argument(
        "--retry-errors",
        action="store_true",
        help="when resuming, do again the rows written with an error (e.g. fetch_timeout)",
    )
    run.add_argument(
        "--progress-interval",
        type=float,
        default=30.0,
        help="seconds between progress lines when stderr is not a terminal",
    )
    if command == "embed":
        run.add_argument("--no-normalize", dest="normalize", action="store_false", help="raw (unit-less) embeddings")


def request_signer(target: TargetSpec) -> Any:
    """The client's auth for --aws-sigv4 or --google-id-token (None without either); fails before any row."""
    if target.aws_sigv4 and target.google_id_token:
        raise ValueError("--aws-sigv4 and --google-id-token: choose one")
    endpoint = target.endpoint or ""
    if target.aws_sigv4:
        from clipserve_client.auth import AwsSigV4, region_from_url

        return AwsSigV4(target.aws_region or region_from_url(endpoint))
    if target.google_id_token:
        from clipserve_client.auth import GoogleIdToken

        audience = endpoint.rstrip("/")
        auth = GoogleIdToken(audience)
        auth.token(audience)  # no credentials: say so now
        return auth
    return None


def image_dirs(rows: Path) -> list[Path]:
    """Where a row's relative image path is looked for: beside the rows file, or in the folder of images."""
    return [rows.resolve()] if rows.is_dir() else [rows.resolve().parent]


def make_target(target: TargetSpec, rows: Path, tally: RetryTally) -> Any:
    """The job's target: the service at ``target.endpoint`` (through the Python client), or the bundle loaded here.
    ``rows``: the input, beside which relative image paths are looked for."""
    search_dirs = image_dirs(rows)
    if target.local:
        from batch.local_target import LocalTarget

        variant = target.local_variant()
        log.info("loading %s from %s", variant, target.model_dir)
        return LocalTarget.load(variant, target.model_dir, search_dirs=search_dirs,
                                allow_private_urls=target.allow_private_urls)
    from batch.http_target import HttpOptions, HttpTarget

    http = HttpOptions(endpoint=target.endpoint or "", headers=dict(target.headers), auth=request_signer(target),
                       timeout_s=target.timeout_s, max_retries=target.max_retries,
                       backoff_max_s=target.backoff_max_s, model=target.model)
    return HttpTarget(http, search_dirs=search_dirs, on_retry=tally.add)


def describe(target: Any) -> dict[str, Any]:
    try:
        return target.describe()
    except Exception as exc:  # noqa: BLE001 - the summary is still worth printing
        log.debug("describe failed: %s", exc)
        return {}


def report(summary: dict[str, Any]) -> None:
    """Human lines on stderr, one JSON object on stdout."""
    log.info(
        "%s: %d rows in shard %s, %d already done, %d written in %.1f s (%.2f rows/s); errors: %s; retries: %s",
        summary["command"],
        summary["rows"],
        summary["shard"],
        summary["already_done"],
        summary["written"],
        summary["seconds"],
        summary["rows_per_s"],
        summary["errors"] or "none",
        summary["retries"] or "none",
    )
    if summary.get("clip_score"):
        stats = summary["clip_score"]
        log.info(
            "clip_score over %d rows: mean %.4f, std %.4f, min %.4f, median %.4f, max %.4f",
            stats["count"],
            stats["mean"],
            stats["std"],
            stats["min"],
            stats["median"],
            stats["max"],
        )
    print(json.dumps(summary), flush=True)
