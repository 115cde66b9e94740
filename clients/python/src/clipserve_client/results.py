"""What the calls return: numpy arrays in the caller's order, with each failed item's error at its index."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from clipserve_client.errors import ItemError, ItemsFailed

Vectors = npt.NDArray[np.float32]


class _HasErrors:
    errors: list[ItemError]

    @property
    def ok(self) -> bool:
        """True when every item succeeded."""
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise ItemsFailed (listing every failed index) unless every item succeeded."""
        if self.errors:
            raise ItemsFailed(self.errors)


@dataclass(frozen=True)
class Embeddings(_HasErrors):
    """``vectors[i]`` is item i's embedding (float32); a failed item's row is NaN and its error is in ``errors``.
    ``truncated``: indices of texts cut to the model's context. ``model``: the variant that made them."""

    vectors: Vectors
    errors: list[ItemError] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    model: str | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def succeeded(self) -> npt.NDArray[np.bool_]:
        """A mask of the rows that hold a vector."""
        return np.asarray(~np.isnan(self.vectors).any(axis=1), dtype=np.bool_)


@dataclass(frozen=True)
class MixedEmbeddings(_HasErrors):
    """Texts and images embedded by one model in the same call (comparable by cosine)."""

    texts: Embeddings
    images: Embeddings

    @property
    def errors(self) -> list[ItemError]:  # type: ignore[override]
        return self.images.errors + self.texts.errors


@dataclass(frozen=True)
class Scores(_HasErrors):
    """``/score``: rows are images, columns texts (pairwise: one value per pair). A failed image's row is NaN.
    ``probs`` are the model's own (``probs_kind``: softmax over the texts for CLIP, sigmoid per pair for SigLIP)."""

    cosine: npt.NDArray[np.float64]
    clip_score: npt.NDArray[np.float64]
    probs: npt.NDArray[np.float64] | None
    probs_kind: str | None
    pairwise: bool
    errors: list[ItemError] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    model: str | None = None


@dataclass(frozen=True)
class ZeroShot(_HasErrors):
    """Each image's probabilities over ``labels`` and its most likely label (None where the image failed)."""

    labels: list[str]
    probs: npt.NDArray[np.float64]
    probs_kind: str | None
    best: list[str | None]
    errors: list[ItemError] = field(default_factory=list)
    model: str | None = None


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, cosine ``score``, ``clip_score`` and metadata (when asked for)."""

    id: str
    score: float
    clip_score: float | None = None
    metadata: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # vector, thumbnail URL, ... when included


@dataclass(frozen=True)
class Written(_HasErrors):
    """``upsert``: how many items were written; the items that were not, with why."""

    written: int
    errors: list[ItemError] = field(default_factory=list)
