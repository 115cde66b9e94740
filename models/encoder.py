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

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TextEncoding:
    embeddings: np.ndarray  # (n, dim) float32
    truncated: list[int]  # indices of inputs cut to the context length


class TextTower(Protocol):
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, list[int]]: ...


class ImageTower(Protocol):
    def prepare(self, image: Image.Image) -> torch.Tensor: ...

    def encode(self, batch: torch.Tensor) -> torch.Tensor: ...


class Encoder:
    """Texts and images to float32 vectors in one shared space.

    `encode_text` / `encode_images` run torch and are meant for one inference thread;
    `prepare_image` is a pure function of its input, for request threads.
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
        if not texts:
            return TextEncoding(self._empty(), [])
        with torch.inference_mode():
            features, truncated = self._text.encode(texts)
            return TextEncoding(self._to_numpy(features, normalize), sorted(truncated))

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
