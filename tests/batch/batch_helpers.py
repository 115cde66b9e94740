"""Small helpers shared by the batch tests: write inputs, run the CLI in-process, read outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from batch.cli import main


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    fieldnames: list[str] = []
    for row in rows:
        fieldnames += [k for k in row if k not in fieldnames]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line must be a whole JSON record (no torn or corrupt line is tolerated here)."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends in a partial line"
    return [json.loads(line) for line in data.decode().splitlines()]


def run_cli(capsys: Any, *args: str | Path) -> tuple[int, dict[str, Any] | None]:
    """Runs clipserve-batch in this process; returns (exit status, the JSON summary or None)."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    out = capsys.readouterr().out.strip().splitlines()
    return status, (json.loads(out[-1]) if out else None)


def vector(record: dict[str, Any], key: str) -> np.ndarray:
    return np.asarray(record[key], dtype=np.float32)
