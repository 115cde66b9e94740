"""Fixtures for the client's tests: a live (Qdrant local-mode) collection made by the real `clipserve-batch`."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def live_index(tiny_model_dir, tmp_path_factory) -> tuple[Path, str]:
    """(folder, collection): two texts with a `shop` column pushed by `clipserve-batch index push --local`."""
    from batch.cli import main

    root = tmp_path_factory.mktemp("client-qdrant")
    with (root / "items.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["id", "text", "shop"], ["a", "a red square", "x"], ["b", "a blue circle", "y"]])
    assert main(["index", "push", "--input", str(root / "items.csv"), "--metadata-columns", "shop", "--qdrant-path",
                 str(root / "q"), "--collection", "c", "--local", "--model-dir", str(tiny_model_dir)]) == 0
    return root / "q", "c"
