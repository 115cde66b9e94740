"""What a target returns for one row, and how it becomes an output record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from batch.output import vector_to_json


@dataclass(frozen=True)
class RowError:
    code: str  # the service's per-item code (invalid_image, fetch_failed, ...) or a client one
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class EmbedResult:
    text_embedding: np.ndarray | None = None
    image_embedding: np.ndarray | None = None
    truncated: bool = False  # the text was longer than the model's context
    error: RowError | None = None


@dataclass(frozen=True)
class ScoreResult:
    clip_score: float | None = None
    cosine: float | None = None
    error: RowError | None = None


def embed_record(row_id: str, result: EmbedResult) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": row_id,
        "text_embedding": vector_to_json(result.text_embedding),
        "image_embedding": vector_to_json(result.image_embedding),
        "error": result.error.as_dict() if result.error else None,
    }
    if result.truncated:
        record["truncated"] = True
    return record


def score_record(row_id: str, fields: dict[str, Any], result: ScoreResult) -> dict[str, Any]:
    """The input row's own columns, then id, clip_score, cosine and error."""
    record = dict(fields)
    record.update(
        id=row_id,
        clip_score=result.clip_score,
        cosine=result.cosine,
        error=result.error.as_dict() if result.error else None,
    )
    return record
