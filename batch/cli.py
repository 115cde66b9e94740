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
import sys
from collections.abc import Sequence
from pathlib import Path

from batch import compare, eval as evaluation, index_cmd, options
from batch.export import MergeError, merge, output_format
from batch.reader import InputError, iter_records
from batch.retry import RetryTally
from batch.runner import COMMANDS, JobSpec, JobStopped, run_job
from batch.sharding import find_parts, part_path

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
    if getattr(args, "compare", False):
        return compare.cmd_compare(args, args.output if fmt == ".jsonl" else work_path(args.output))
    shard = options.shard(args)
    sharded = shard.count > 1
    part = part_path(args.output, shard) if sharded else (args.output if fmt == ".jsonl" else work_path(args.output))
    spec = JobSpec(
        command=args.command,
        input=args.input,
        part=part,
        shard=shard,
        columns=options.columns(args),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        normalize=getattr(args, "normalize", True),
        progress_interval_s=args.progress_interval,
        retry_errors=args.retry_errors,
    )
    iter_records(args.input)  # a missing or unknown input fails now, not after loading a model
    tally = RetryTally()
    target = options.make_target(args, tally)
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
        report = merge(args.input, [part], args.output, spec.columns)
        result["files"] = report.files
    elif sharded:
        log.info(
            "shard %s done; when every shard is: clipserve-batch merge --input %s --output %s",
            summary.shard,
            args.input,
            args.output,
        )
    options.report(result)
    return EXIT_OK if summary.complete else EXIT_INCOMPLETE


def cmd_merge(args: argparse.Namespace) -> int:
    parts = args.parts or find_parts(args.output)
    try:
        report = merge(args.input, parts, args.output, options.columns(args), allow_missing=args.allow_missing)
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
            return index_cmd.run(args)
        if args.command == "eval":
            return evaluation.cmd_eval(args)
        return cmd_merge(args) if args.command == "merge" else cmd_job(args)
    except (InputError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except RuntimeError as exc:  # MissingDependency, CorruptOutput, model loading
        log.error("%s", exc)
        return EXIT_USAGE
