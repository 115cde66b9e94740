"""Pure numpy: vectors -> the numbers /score returns, and vectors -> JSON (floats or base64)."""

from __future__ import annotations

import base64
from typing import Sequence

import numpy as np


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float64). Callers reject zero rows first. Each row is first divided by its
    largest magnitude, so a client's 1e300-sized values do not overflow the norm."""
    vectors = np.asarray(vectors, dtype=np.float64)
    vectors = vectors / np.abs(vectors).max(axis=1, keepdims=True)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def cosine_matrix(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """(n_images, n_texts) cosine similarities."""
    return unit_rows(images) @ unit_rows(texts).T


def cosine_pairwise(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """cos(images[i], texts[i]) for each i."""
    return np.einsum("ij,ij->i", unit_rows(images), unit_rows(texts))


def clip_score(cosine: np.ndarray) -> np.ndarray:
    """CLIPScore as usually reported: max(100 * cosine, 0)."""
    return np.maximum(100.0 * cosine, 0.0)


def zero_shot_probs(cosine: np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax over the texts (last axis) of logit_scale * cosine, as CLIP zero-shot classification does."""
    logits = logit_scale * cosine
    logits = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def sigmoid_probs(cosine: np.ndarray, logit_scale: float, logit_bias: float) -> np.ndarray:
    """sigmoid(logit_scale * cosine + logit_bias) for each image-text pair on its own, as SigLIP was trained to
    score (no normalization over the labels: several can be likely, or none)."""
    return 1.0 / (1.0 + np.exp(-(logit_scale * cosine + logit_bias)))


def probabilities(cosine: np.ndarray, info: object) -> np.ndarray:
    """What the model means by a probability: softmax over the texts (CLIP) or a sigmoid per pair (SigLIP),
    by the model's ``score_kind``."""
    if getattr(info, "score_kind", "softmax") == "sigmoid":
        return sigmoid_probs(cosine, info.logit_scale, info.logit_bias)  # type: ignore[attr-defined]
    return zero_shot_probs(cosine, info.logit_scale)  # type: ignore[attr-defined]


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list:
    """Rows as float32 arrays (written as JSON numbers by handler.jsonio), or as base64 of little-endian float32."""
    if encoding_format == "base64":
        rows = np.ascontiguousarray(vectors, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    return list(np.ascontiguousarray(vectors, dtype=np.float32))


def place(values: Sequence, positions: Sequence[int], size: int) -> list:
    """A list of ``size`` entries with values at ``positions`` and None elsewhere (keeps arrays aligned)."""
    out: list = [None] * size
    for position, value in zip(positions, values, strict=True):
        out[position] = value
    return out
