"""clipserve-batch: `embed`, `score` and `merge`.

    clipserve-batch embed --input items.csv --output emb.jsonl --endpoint https://SERVICE
    clipserve-batch score --input pairs.csv --output scores.csv --local --model-dir /models
    clipserve-batch merge --input items.csv --output emb.npy   # after sharded runs

Re-running the same command resumes. Exit status: 0 done, 1 bad arguments or input,
2 the target failed for good (re-run to resume), 3 merge found rows missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batch.export import MergeError, merge, output_format
from batch.reader import Columns, InputError, iter_records
from batch.retry import RetryTally
from batch.runner import COMMANDS, JobSpec, JobStopped, run_job
from batch.sharding import SHARD_BY, Shard, find_parts, parse_shard, part_path, shard_from_env

log = logging.getLogger("batch")

EXIT_OK, EXIT_USAGE, EXIT_TARGET, EXIT_INCOMPLETE = 0, 1, 2, 3


def _add_column_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("columns (default: id; text or caption; image or url)")
    group.add_argument("--id-column", help="column with unique row ids (default: 'id', else the row number)")
    group.add_argument("--text-column")
    group.add_argument("--image-column")


def _add_job_args(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--input", required=True, type=Path, help="CSV, TSV or JSONL")
    formats = ".jsonl or .npy (+ .ids.txt)" if command == "embed" else ".jsonl or .csv"
    parser.add_argument("--output", required=True, type=Path, help=f"{formats}; appended to, so re-running resumes")
    target = parser.add_argument_group("target (one of --endpoint / --local)")
    where = target.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", metavar="URL", help="base URL of a clipserve service")
    where.add_argument("--local", action="store_true", help="load the model bundle in this process; no server")
    target.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get("MODEL_DIR", "/models")),
        help="--local: folder of baked bundles (default: $MODEL_DIR or /models)",
    )
    target.add_argument(
        "--variant",
        default=os.environ.get("MODEL_VARIANT", "english"),
        help="--local: model variant (default: $MODEL_VARIANT or english)",
    )
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
    _add_column_args(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipserve-batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser("embed", help="embed every row's text and/or image")
    _add_job_args(embed, "embed")
    score = commands.add_parser("score", help="CLIP score of every row's image against its text")
    _add_job_args(score, "score")
    merge_parser = commands.add_parser("merge", help="join the shards' part files in input order")
    merge_parser.add_argument("--input", required=True, type=Path, help="the input the shards read (gives the order)")
    merge_parser.add_argument("--output", required=True, type=Path, help=".jsonl, .csv (score) or .npy (embed)")
    merge_parser.add_argument(
        "--parts", nargs="+", type=Path, help="part files (default: OUTPUT-stem.shard-*-of-*.jsonl beside --output)"
    )
    merge_parser.add_argument(
        "--allow-missing", action="store_true", help="write what there is even if rows are missing"
    )
    _add_column_args(merge_parser)
    return parser


def _columns(args: argparse.Namespace) -> Columns:
    return Columns(id=args.id_column, text=args.text_column, image=args.image_column)


def _shard(args: argparse.Namespace) -> Shard:
    if args.shard:
        return parse_shard(args.shard, args.shard_by)
    return shard_from_env(os.environ, args.shard_by) or Shard(0, 1, args.shard_by)


def work_path(output: Path) -> Path:
    """Where an unsharded job appends when the output is not JSONL: out.npy -> out.npy.jsonl."""
    return output.with_name(output.name + ".jsonl")


def _headers(args: argparse.Namespace) -> dict[str, str]:
    from batch.auth import bearer_headers

    headers = bearer_headers(args.token, args.api_key)
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {header!r}: expected 'NAME: VALUE'")
        headers[name.strip()] = value.strip()
    return headers


def _request_signer(args: argparse.Namespace) -> Any:
    """requests auth for --aws-sigv4 or --google-id-token (None without either); fails before any row."""
    if args.aws_sigv4 and args.google_id_token:
        raise ValueError("--aws-sigv4 and --google-id-token: choose one")
    if args.aws_sigv4:
        from batch.auth import SigV4Auth, region_from_url

        return SigV4Auth(args.aws_region or region_from_url(args.endpoint))
    if args.google_id_token:
        from batch.auth import GoogleIdTokenAuth

        auth = GoogleIdTokenAuth(args.endpoint.rstrip("/"))
        auth.token()  # no credentials: say so now
        return auth
    return None


def _make_target(args: argparse.Namespace, tally: RetryTally) -> Any:
    search_dirs = [args.input.resolve().parent]
    if args.local:
        from batch.local_target import LocalTarget

        log.info("loading %s from %s", args.variant, args.model_dir)
        return LocalTarget.load(
            args.variant, args.model_dir, search_dirs=search_dirs, allow_private_urls=args.allow_private_urls
        )
    from batch.http_target import HttpOptions, HttpTarget

    options = HttpOptions(
        endpoint=args.endpoint,
        headers=_headers(args),
        auth=_request_signer(args),
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        backoff_max_s=args.backoff_max,
        pool_size=max(2, args.concurrency),
    )
    return HttpTarget(options, search_dirs=search_dirs, on_retry=tally.add)


def cmd_job(args: argparse.Namespace) -> int:
    fmt = output_format(args.output)
    allowed = {"embed": (".jsonl", ".npy"), "score": (".jsonl", ".csv")}[args.command]
    if fmt not in allowed:
        raise ValueError(f"{args.command} writes {' or '.join(allowed)}, not {fmt}")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if args.concurrency is None:
        args.concurrency = 2 if args.local else 4
    if args.concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    shard = _shard(args)
    sharded = shard.count > 1
    part = part_path(args.output, shard) if sharded else (args.output if fmt == ".jsonl" else work_path(args.output))
    spec = JobSpec(
        command=args.command,
        input=args.input,
        part=part,
        shard=shard,
        columns=_columns(args),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        normalize=getattr(args, "normalize", True),
        progress_interval_s=args.progress_interval,
        retry_errors=args.retry_errors,
    )
    iter_records(args.input)  # a missing or unknown input fails now, not after loading a model
    tally = RetryTally()
    target = _make_target(args, tally)
    try:
        summary = run_job(spec, target, tally)
        summary.model = _describe(target)
    except JobStopped as stopped:
        _report(stopped.summary.as_dict())
        log.error("stopped: %s. Rows written so far are kept; re-run the same command to resume.", stopped.cause)
        return EXIT_TARGET
    finally:
        target.close()
    result = summary.as_dict()
    if summary.complete and not sharded and fmt != ".jsonl":
        report = merge(args.input, [part], args.output, spec.columns)
        result["files"] = report.files
    elif sharded:
        log.info(
            "shard %s done; when every shard is: clipserve-batch merge --input %s --output %s",
            summary.shard,
            args.input,
            args.output,
        )
    _report(result)
    return EXIT_OK if summary.complete else EXIT_INCOMPLETE


def _describe(target: Any) -> dict[str, Any]:
    try:
        return target.describe()
    except Exception as exc:  # noqa: BLE001 - the summary is still worth printing
        log.debug("describe failed: %s", exc)
        return {}


def _report(summary: dict[str, Any]) -> None:
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


def cmd_merge(args: argparse.Namespace) -> int:
    parts = args.parts or find_parts(args.output)
    try:
        report = merge(args.input, parts, args.output, _columns(args), allow_missing=args.allow_missing)
    except MergeError as exc:
        log.error("%s", exc)
        return EXIT_INCOMPLETE
    log.info("merged %d parts: %d rows -> %s", len(parts), report.rows, ", ".join(report.files))
    print(
        json.dumps(
            {
                "rows": report.rows,
                "missing": report.missing_count,
                "extra": report.extra_count,
                "parts": [str(p) for p in parts],
                "files": report.files,
            }
        ),
        flush=True,
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    assert args.command in (*COMMANDS, "merge")
    try:
        return cmd_merge(args) if args.command == "merge" else cmd_job(args)
    except (InputError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except RuntimeError as exc:  # MissingDependency, CorruptOutput, model loading
        log.error("%s", exc)
        return EXIT_USAGE
