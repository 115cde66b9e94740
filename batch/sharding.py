"""Which rows a task owns when a job is split over n tasks, and where its part file goes.

`position`: row i belongs to shard i mod n (exact balance; every task must read the same file).
`id`: a stable hash of the id (the same row lands in the same shard even if the file is reordered).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from batch.reader import Row

SHARD_BY = ("position", "id")
_PART_RE = re.compile(r"\.shard-(\d{5})-of-(\d{5})\.jsonl$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    by: str = "position"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= index < count")
        if self.by not in SHARD_BY:
            raise ValueError(f"shard-by must be one of {SHARD_BY}, not {self.by!r}")

    def owns(self, row: Row) -> bool:
        if self.count == 1:
            return True
        key = row.position if self.by == "position" else stable_hash(row.id)
        return key % self.count == self.index


def stable_hash(text: str) -> int:
    """The same integer for the same id in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def parse_shard(spec: str, by: str = "position") -> Shard:
    """'3/10' -> Shard(3, 10)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match:
        raise ValueError(f"--shard {spec!r}: expected INDEX/COUNT, e.g. 0/4")
    return Shard(int(match.group(1)), int(match.group(2)), by)


def shard_from_env(environ: Mapping[str, str], by: str = "position") -> Shard | None:
    """The Cloud Run Jobs task (CLOUD_RUN_TASK_INDEX / CLOUD_RUN_TASK_COUNT), if any."""
    index, count = environ.get("CLOUD_RUN_TASK_INDEX"), environ.get("CLOUD_RUN_TASK_COUNT")
    if index is None or count is None:
        return None
    try:
        return Shard(int(index), int(count), by)
    except ValueError as exc:
        raise ValueError(f"CLOUD_RUN_TASK_INDEX={index!r} CLOUD_RUN_TASK_COUNT={count!r}: {exc}") from None


def strip_output_suffix(output: Path) -> Path:
    """out.jsonl / out.npy / out.csv -> out (the stem parts and work files are named after)."""
    return output.with_suffix("") if output.suffix else output


def part_path(output: Path, shard: Shard) -> Path:
    """The JSONL file this task appends to."""
    base = strip_output_suffix(output)
    return base.with_name(f"{base.name}.shard-{shard.index:05d}-of-{shard.count:05d}.jsonl")


def find_parts(output: Path) -> list[Path]:
    """Part files written for `output`, sorted by shard index; checks that none is missing."""
    base = strip_output_suffix(output)
    found: dict[int, Path] = {}
    counts: set[int] = set()
    for path in base.parent.glob(f"{base.name}.shard-*-of-*.jsonl"):
        match = _PART_RE.search(path.name)
        if match and path.name[: match.start()] == base.name:
            found[int(match.group(1))] = path
            counts.add(int(match.group(2)))
    if not found:
        raise FileNotFoundError(f"no part files {base.name}.shard-*-of-*.jsonl in {base.parent}")
    if len(counts) != 1:
        raise ValueError(f"part files for {base.name} from runs with different shard counts: {sorted(counts)}")
    (count,) = counts
    missing = sorted(set(range(count)) - set(found))
    if missing:
        raise ValueError(f"missing part files for shards {missing} of {count}")
    return [found[i] for i in range(count)]
