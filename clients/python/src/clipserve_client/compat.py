"""The service-class names older CLIP services used, over an ``AsyncClient`` (remote, or the in-process one).

Code written against ``await clip.encode_text("red apple")``, ``encode_image(PIL.Image)``,
``encode_batch_text([...])``, ``encode_batch_images([...])``, ``compute_similarity(a, b)`` and
``get_model_info()`` switches to clipserve by building this instead: the vectors are clipserve's (unit length,
float32 numpy), the similarity is their cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from clipserve_client._async import AsyncClient
from clipserve_client.images import ImageInput

Vector = npt.NDArray[np.float32]


class CompatService:
    """``CompatService(AsyncClient(url))``; every method is a coroutine, as the service classes' were."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def encode_text(self, text: str) -> Vector:
        vectors = await self.encode_batch_text([text])
        return np.asarray(vectors[0], dtype=np.float32)

    async def encode_image(self, image: ImageInput) -> Vector:
        vectors = await self.encode_batch_images([image])
        return np.asarray(vectors[0], dtype=np.float32)

    async def encode_batch_text(self, texts: Sequence[str]) -> Vector:
        result = await self.client.embed_text(texts)
        result.raise_for_errors()
        vectors: Vector = result.vectors
        return vectors

    async def encode_batch_images(self, images: Sequence[ImageInput]) -> Vector:
        result = await self.client.embed_image(images)
        result.raise_for_errors()
        vectors: Vector = result.vectors
        return vectors

    async def compute_similarity(self, a: Vector | Sequence[float], b: Vector | Sequence[float]) -> float:
        """Cosine of two vectors (any scale)."""
        x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    async def get_model_info(self) -> dict[str, Any]:
        """The default model's facts (name, architecture, dim, ...), from ``GET /``."""
        return dict((await self.client.info()).get("model") or {})
