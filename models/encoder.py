"""The `Encoder` every other part of the service uses (see ARCHITECTURE.md, model layer contract)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class ModelInfo:
    """The facts about the loaded model a client needs (served as JSON by the API)."""

    variant: str
    architecture: str  # human-readable, e.g. "ViT-B-32-quickgelu"
    text_tower: str
    image_tower: str
    dim: int
    image_size: int
    context_length: int
    logit_scale: float  # exp already applied: the multiplier for cosine similarities
    precision: str = "fp32"  # what the towers compute in: "fp32" (exact) or "bf16"
    weights: str = ""  # fingerprint of the weight files (models.bundle.weights_fingerprint)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TextEncoding:
    embeddings: np.ndarray  # (n, dim) float32
    truncated: list[int]  # indices of inputs cut to the context length


@dataclass(frozen=True)
class PreparedText:
    """A tokenized text, ready for the model: made in request threads, batched on the inference thread."""

    ids: tuple[int, ...]  # token ids with the tower's special tokens, already cut to its context
    truncated: bool  # the text had more tokens than the context

    @property
    def tokens(self) -> int:
        return len(self.ids)


class TextTower(Protocol):
    def prepare(self, text: str) -> PreparedText: ...

    def encode(self, items: list[PreparedText]) -> torch.Tensor: ...


class ImageTower(Protocol):
    def prepare(self, image: Image.Image) -> torch.Tensor: ...

    def encode(self, batch: torch.Tensor) -> torch.Tensor: ...


class Encoder:
    """Texts and images to float32 vectors in one shared space.

    `prepare_text` / `prepare_image` are pure functions of their input, for request threads (the
    input work runs in parallel there); `encode_prepared_texts` / `encode_images` run torch and are
    meant for one inference thread. `encode_text` does both steps, for callers without threads.
    """

    def __init__(self, info: ModelInfo, text_tower: TextTower, image_tower: ImageTower):
        self.info = info
        self._text = text_tower
        self._image = image_tower

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> TextEncoding:
        """Embed texts; longer than the context is truncated (never an error) and reported."""
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_text takes strings; items {bad[:5]} are not")
        prepared = [self.prepare_text(t) for t in texts]
        return TextEncoding(self.encode_prepared_texts(prepared, normalize),
                            [i for i, p in enumerate(prepared) if p.truncated])

    def prepare_text(self, text: str) -> PreparedText:
        """Tokenize one text for this bundle's text tower (cut to the context, never an error)."""
        return self._text.prepare(text)

    def encode_prepared_texts(self, items: Sequence[PreparedText], normalize: bool = True) -> np.ndarray:
        """Embed texts made by `prepare_text`; equal to encoding them in one `encode_text` call."""
        items = list(items)
        if not items:
            return self._empty()
        with torch.inference_mode():
            return self._to_numpy(self._text.encode(items), normalize)

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        """PIL image (any mode) -> (3, S, S) model input with this bundle's preprocessing."""
        with torch.inference_mode():
            return self._image.prepare(image)

    def encode_images(self, images: Sequence[torch.Tensor], normalize: bool = True) -> np.ndarray:
        """Embed tensors made by `prepare_image`."""
        images = list(images)
        if not images:
            return self._empty()
        expected = (3, self.info.image_size, self.info.image_size)
        bad = [i for i, x in enumerate(images) if tuple(x.shape) != expected]
        if bad:
            raise ValueError(f"encode_images takes tensors of shape {expected} from prepare_image; items {bad[:5]} are not")
        with torch.inference_mode():
            return self._to_numpy(self._image.encode(torch.stack(images)), normalize)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.info.dim), dtype=np.float32)

    @staticmethod
    def _to_numpy(features: torch.Tensor, normalize: bool) -> np.ndarray:
        features = features.float()
        if normalize:
            features = F.normalize(features, dim=-1)
        return np.ascontiguousarray(features.numpy(), dtype=np.float32)
