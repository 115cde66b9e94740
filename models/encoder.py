"""The `Encoder` every other part of the service uses (see ARCHITECTURE.md, model layer contract).

Runtime-neutral: the towers (torch in `openclip_tower` / `mclip_tower`, ONNX Runtime in `onnx_tower`)
return float32 numpy arrays, so this module imports no torch and an ONNX service never loads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
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
    precision: str = "fp32"  # what the towers compute in: "fp32" (exact), "bf16" or "int8"
    weights: str = ""  # fingerprint of the weight files (models.bundle.weights_fingerprint)
    runtime: str = "torch"  # "torch" or "onnx" (ONNX Runtime)
    device: str = "cpu"  # "cpu" or "cuda"
    gpu: str | None = None  # the GPU's name on cuda
    image_decode: str = "cpu"  # where JPEGs are decoded: "cpu" (Pillow) or "gpu" (models.device_jpeg)
    # int8 only: each tower's min cosine to fp32 on bake's probe set (the fidelity it was accepted at)
    int8_cosine: dict[str, float] | None = None
    # What a zero-shot probability is for this model: "softmax" over the labels of logit_scale * cos (CLIP), or
    # "sigmoid" of logit_scale * cos + logit_bias per label, each on its own (SigLIP, trained with that loss).
    logit_bias: float | None = None
    score_kind: str = "softmax"
    license: str = ""  # the weights' license (the bundle's manifest)

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

    def encode(self, items: list[PreparedText]) -> np.ndarray:
        """(n, dim) float32, not normalized."""


class ImageTower(Protocol):
    def prepare(self, image: Image.Image) -> Any:
        """(3, S, S) float32 model input (a torch tensor or a numpy array, as the tower takes it)."""

    def encode(self, batch: list[Any]) -> np.ndarray:
        """(n, dim) float32, not normalized."""


class Encoder:
    """Texts and images to float32 vectors in one shared space.

    `prepare_text` / `prepare_image` are pure functions of their input, for request threads (the
    input work runs in parallel there); `encode_prepared_texts` / `encode_images` run the model and are
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
        return _finish(self._text.encode(items), normalize)

    def prepare_image(self, image: Image.Image) -> Any:
        """PIL image (any mode) -> (3, S, S) model input with this bundle's preprocessing."""
        return self._image.prepare(image)

    def prepare_encoded_image(self, data: bytes, image_format: str, mode: str) -> Any | None:
        """Encoded bytes (header already checked) -> model input made on the towers' device, or None where this
        encoder wants Pillow's pixels (`prepare_image`): every format but JPEG, and every image on the CPU."""
        decoder = getattr(self._image, "device_jpeg", None)
        if decoder is None or not decoder.takes(image_format, mode, data):
            return None
        return decoder(data)

    def encode_images(self, images: Sequence[Any], normalize: bool = True) -> np.ndarray:
        """Embed tensors made by `prepare_image` or `prepare_encoded_image`."""
        images = list(images)
        if not images:
            return self._empty()
        expected = (3, self.info.image_size, self.info.image_size)
        bad = [i for i, x in enumerate(images) if tuple(x.shape) != expected]
        if bad:
            raise ValueError(f"encode_images takes tensors of shape {expected} from prepare_image; items {bad[:5]} are not")
        return _finish(self._image.encode(images), normalize)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.info.dim), dtype=np.float32)


def _finish(features: np.ndarray, normalize: bool) -> np.ndarray:
    """float32 rows, L2-normalized as torch.nn.functional.normalize does (norm clamped at 1e-12)."""
    features = np.asarray(features, dtype=np.float32)
    if normalize:
        norms = np.sqrt(np.einsum("ij,ij->i", features, features, dtype=np.float32))[:, None]
        features = features / np.maximum(norms, np.float32(1e-12))
    return np.ascontiguousarray(features, dtype=np.float32)
