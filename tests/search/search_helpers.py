"""Random items, a reference filter evaluator and brute force: what the search backends are checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from search.build import IndexOptions, write_index
from search.filters import Filter, Match, MatchAny, Range
from search.items_db import ColumnTypes

MODEL = {"variant": "english", "architecture": "test-arch", "dim": 16, "weights": "sha256:" + "ab" * 32}
COLORS = ["red", "green", "blue", "black", "white"]


def clustered(n: int, dim: int, seed: int, centers: int = 20, noise: float = 0.25) -> np.ndarray:
    """Unit vectors around `centers` random directions (seeded)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim))
    x = c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_metadata(n: int, seed: int) -> list[dict[str, Any]]:
    """JSON-typed metadata with gaps (None) in every column, so must_not's treatment of missing keys shows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {}
        if rng.random() > 0.05:
            row["category"] = int(rng.integers(0, 100))
        if rng.random() > 0.05:
            row["color"] = COLORS[int(rng.integers(0, len(COLORS)))]
        if rng.random() > 0.05:
            row["price"] = float(np.round(rng.random() * 100, 2))
        if rng.random() > 0.05:
            row["in_stock"] = bool(rng.random() > 0.5)
        row["tags"] = ["a", "b"][: int(rng.integers(0, 3))]  # a list: kept, not filterable
        rows.append(row)
    return rows


def build(directory: Path, vectors: np.ndarray, metadata: list[dict[str, Any]], **options: Any) -> Path:
    types = ColumnTypes(["category", "color", "price", "in_stock", "tags"], from_csv=False)
    for row in metadata:
        types.add(row)
    ids = [f"item-{i}" for i in range(len(vectors))]
    return write_index(directory, vectors, zip(ids, metadata), columns=types.result(), from_csv=False,
                       model=MODEL, modality="image", name="test", options=IndexOptions(**options))


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def matches(condition: Any, metadata: dict[str, Any]) -> bool:
    """Qdrant's semantics, written plainly: a missing key matches no condition."""
    if isinstance(condition, Filter):
        return (all(matches(c, metadata) for c in condition.must)
                and (not condition.should or any(matches(c, metadata) for c in condition.should))
                and not any(matches(c, metadata) for c in condition.must_not))
    value = metadata.get(condition.key)
    if value is None:
        return False
    if isinstance(condition, Match):
        return _same(value, condition.value)
    if isinstance(condition, MatchAny):
        return any(_same(value, v) for v in condition.values)
    assert isinstance(condition, Range)
    checks = {"gt": value > (condition.gt or 0), "gte": value >= (condition.gte or 0),
              "lt": value < (condition.lt or 0), "lte": value <= (condition.lte or 0)}
    return all(checks[op] for op, _ in condition.bounds())


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int, keep: np.ndarray | None = None,
                threshold: float | None = None, exclude: int | None = None) -> list[tuple[int, float]]:
    """(row, score) of the exact top k, best first, ties by row."""
    scores = vectors.astype(np.float64) @ query.astype(np.float64)
    rows = [r for r in np.lexsort((np.arange(len(scores)), -scores))
            if (keep is None or keep[r]) and r != exclude and (threshold is None or scores[r] >= threshold)]
    return [(int(r), float(scores[r])) for r in rows[:k]]
