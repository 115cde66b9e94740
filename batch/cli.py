"""clipserve-batch: `embed`, `score`, `merge` and `index`.

    clipserve-batch embed --input items.csv --output emb.jsonl --endpoint https://SERVICE
    clipserve-batch score --input pairs.csv --output scores.csv --local --model-dir /models
    clipserve-batch score --input pairs.csv --output scores.csv --endpoint URL --compare   # one per request vs batches
    clipserve-batch merge --input items.csv --output emb.npy   # after sharded runs
    clipserve-batch index build --input items.csv --output indexes/items/v1 --local   # see batch/index_cmd.py
    clipserve-batch eval --zero-shot photos/ --model english --model siglip2-b16 --local   # see batch/eval.py

Re-running the same command resumes. Exit status: 0 done, 1 bad arguments or input,
2 the target failed for good (re-run to resume), 3 merge found rows missing, 4 score --compare found
different scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from batch import bucket_source, compare, eval as evaluation, index_cmd, index_push, options
from batch.auth import bearer_headers
from batch.export import MergeError, merge, output_format
from batch.reader import Columns, InputError, iter_records
from batch.retry import RetryTally
from batch.runner import COMMANDS, JobSpec, JobStopped, run_job
from batch.sharding import Shard, find_parts, parse_shard, part_path, shard_from_env
from batch.specs import BuildSpec, EvalSpec, JobArgs, PushSpec, RunSpec, SourceSpec, TargetSpec
from search.build import IndexOptions

log = logging.getLogger("batch")

EXIT_OK, EXIT_USAGE, EXIT_TARGET, EXIT_INCOMPLETE = 0, 1, 2, 3


def _add_job_args(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--input", required=True, type=Path, help="CSV, TSV or JSONL")
    formats = ".jsonl or .npy (+ .ids.txt)" if command == "embed" else ".jsonl or .csv"
    parser.add_argument("--output", required=True, type=Path, help=f"{formats}; appended to, so re-running resumes")
    options.add_target_args(parser, required=True)
    options.add_run_args(parser, command)
    options.add_column_args(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipserve-batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser("embed", help="embed every row's text and/or image")
    _add_job_args(embed, "embed")
    score = commands.add_parser("score", help="CLIP score of every row's image against its text")
    _add_job_args(score, "score")
    score.add_argument("--compare", action="store_true",
                       help="also score the rows one per request, check both give the same scores, and write "
                            "OUTPUT-stem_comparison.csv with both timings and the speedup")
    score.add_argument("--compare-tolerance", type=float, default=compare.DEFAULT_TOLERANCE,
                       help=f"largest clip_score difference counted as the same (default {compare.DEFAULT_TOLERANCE})")
    merge_parser = commands.add_parser("merge", help="join the shards' part files in input order")
    merge_parser.add_argument("--input", required=True, type=Path, help="the input the shards read (gives the order)")
    merge_parser.add_argument("--output", required=True, type=Path, help=".jsonl, .csv (score) or .npy (embed)")
    merge_parser.add_argument(
        "--parts", nargs="+", type=Path, help="part files (default: OUTPUT-stem.shard-*-of-*.jsonl beside --output)"
    )
    merge_parser.add_argument(
        "--allow-missing", action="store_true", help="write what there is even if rows are missing"
    )
    options.add_column_args(merge_parser)
    index_cmd.add_parser(commands)
    evaluation.add_parser(commands)
    return parser


def work_path(output: Path) -> Path:
    """Where an unsharded job appends when the output is not JSONL: out.npy -> out.npy.jsonl."""
    return output.with_name(output.name + ".jsonl")


# -- the flags, read once into typed specs: nothing below this file sees the namespace ------------------------------


def columns_of(args: argparse.Namespace) -> Columns:
    return Columns(id=args.id_column, text=args.text_column, image=args.image_column)


def shard_of(args: argparse.Namespace) -> Shard:
    if args.shard:
        return parse_shard(args.shard, args.shard_by)
    return shard_from_env(os.environ, args.shard_by) or Shard(0, 1, args.shard_by)


def headers_of(args: argparse.Namespace) -> dict[str, str]:
    result = bearer_headers(args.token, args.api_key)
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {header!r}: expected 'NAME: VALUE'")
        result[name.strip()] = value.strip()
    return result


def target_of(args: argparse.Namespace, model: str | None = None) -> TargetSpec:
    return TargetSpec(endpoint=None if args.local else args.endpoint, model=model or getattr(args, "model", None),
                      model_dir=args.model_dir, allow_private_urls=args.allow_private_urls, headers=headers_of(args),
                      google_id_token=args.google_id_token, aws_sigv4=args.aws_sigv4, aws_region=args.aws_region,
                      timeout_s=args.timeout, max_retries=args.max_retries, backoff_max_s=args.backoff_max)


def run_of(args: argparse.Namespace) -> RunSpec:
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    return RunSpec(batch_size=args.batch_size, concurrency=args.concurrency,
                   progress_interval_s=args.progress_interval, retry_errors=args.retry_errors,
                   normalize=getattr(args, "normalize", True))


def source_of(args: argparse.Namespace) -> SourceSpec:
    return SourceSpec(input=args.input, columns=columns_of(args), target=target_of(args), run=run_of(args),
                      embeddings=args.embeddings, metadata=args.metadata, metadata_columns=args.metadata_columns,
                      modality=args.modality)


def build_of(args: argparse.Namespace) -> BuildSpec:
    return BuildSpec(source=source_of(args), output=args.output, name=args.name, thumbnails=args.thumbnails,
                     options=IndexOptions(args.index_type, args.hnsw_m, args.ef_construction, args.ef_search))


def push_of(args: argparse.Namespace) -> PushSpec:
    if (args.input is None) == (args.bucket is None):
        raise ValueError("index push: give --input FILE or --bucket gs://BUCKET[/prefix] | s3://BUCKET[/prefix]")
    if args.bucket is not None:
        bucket_source.parse_bucket(args.bucket)
        args.input = Path("bucket.jsonl")  # replaced by the staged rows
    return PushSpec(source=source_of(args), collection=args.collection, qdrant_url=args.qdrant_url,
                    qdrant_path=args.qdrant_path, qdrant_api_key=args.qdrant_api_key,
                    qdrant_timeout_s=args.qdrant_timeout, push_batch_size=args.push_batch_size, bucket=args.bucket,
                    path_keys=tuple(k.strip() for k in (args.path_keys or "").split(",") if k.strip()),
                    max_image_bytes=args.max_image_bytes)


def eval_of(args: argparse.Namespace) -> EvalSpec:
    return EvalSpec(target=target_of(args), models=tuple(args.models or [None]), zero_shot=args.zero_shot,
                    retrieval=args.retrieval, clip_score=args.clip_score, image_column=args.image_column,
                    text_column=args.text_column, templates=args.templates, batch_size=args.batch_size,
                    concurrency=args.concurrency or 2, json=args.json)


def job_of(args: argparse.Namespace) -> JobArgs:
    return JobArgs(command=args.command, input=args.input, output=args.output, columns=columns_of(args),
                   target=target_of(args), run=run_of(args), shard=shard_of(args),
                   compare_tolerance=args.compare_tolerance if getattr(args, "compare", False) else None)


# -- the commands -----------------------------------------------------------------------------------------------


def cmd_job(job: JobArgs) -> int:
    fmt = output_format(job.output)
    allowed = {"embed": (".jsonl", ".npy"), "score": (".jsonl", ".csv")}[job.command]
    if fmt not in allowed:
        raise ValueError(f"{job.command} writes {' or '.join(allowed)}, not {fmt}")
    if job.compare_tolerance is not None:
        return compare.cmd_compare(job, job.output if fmt == ".jsonl" else work_path(job.output))
    shard = job.shard
    sharded = shard.count > 1
    part = part_path(job.output, shard) if sharded else (job.output if fmt == ".jsonl" else work_path(job.output))
    spec = JobSpec(
        command=job.command,
        input=job.input,
        part=part,
        shard=shard,
        columns=job.columns,
        batch_size=job.run.batch_size,
        concurrency=job.run.concurrency_for(job.target),
        normalize=job.run.normalize,
        progress_interval_s=job.run.progress_interval_s,
        retry_errors=job.run.retry_errors,
    )
    iter_records(job.input)  # a missing or unknown input fails now, not after loading a model
    tally = RetryTally()
    target = options.make_target(job.target, job.input, tally)
    try:
        summary = run_job(spec, target, tally)
        summary.model = options.describe(target)
    except JobStopped as stopped:
        options.report(stopped.summary.as_dict())
        log.error("stopped: %s. Rows written so far are kept; re-run the same command to resume.", stopped.cause)
        return EXIT_TARGET
    finally:
        target.close()
    result = summary.as_dict()
    if summary.complete and not sharded and fmt != ".jsonl":
        report = merge(job.input, [part], job.output, spec.columns)
        result["files"] = report.files
    elif sharded:
        log.info(
            "shard %s done; when every shard is: clipserve-batch merge --input %s --output %s",
            summary.shard,
            job.input,
            job.output,
        )
    options.report(result)
    return EXIT_OK if summary.complete else EXIT_INCOMPLETE


def cmd_merge(args: argparse.Namespace) -> int:
    parts = args.parts or find_parts(args.output)
    try:
        report = merge(args.input, parts, args.output, columns_of(args), allow_missing=args.allow_missing)
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
    assert args.command in (*COMMANDS, "merge", "index", "eval")
    try:
        if args.command == "index":
            if args.index_command == "verify":
                return index_cmd.cmd_verify(args.directory)
            return index_push.cmd_push(push_of(args)) if args.index_command == "push" else index_cmd.cmd_build(
                build_of(args))
        if args.command == "eval":
            return evaluation.cmd_eval(eval_of(args))
        return cmd_merge(args) if args.command == "merge" else cmd_job(job_of(args))
    except (InputError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except RuntimeError as exc:  # MissingDependency, CorruptOutput, model loading
        log.error("%s", exc)
        return EXIT_USAGE
