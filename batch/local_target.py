"""The model in this process as a batch target: no server, for Cloud Run Jobs and one machine.

Images go through the service's own loader (inputs/: same URL rules, limits, error codes,
RGB conversion) and the encoder's prepare_image in the worker threads; the forward passes take
a lock, because several torch calls at once only oversubscribe the cores.

The service's settings apply too, read from the same environment variables (infra/settings.py):
texts over ``MAX_TEXT_CHARS`` are the service's per-row ``invalid_request``, not embeddings;
``PRECISION`` picks fp32 or bf16, ``DEVICE`` the CPU or a GPU, ``IMAGE_DECODE`` and ``EXACT_IMAGE_DECODE``
the JPEG decoding, so --local and --endpoint write the same rows.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from batch.images import LocalFile, classify_image, read_local_file
from batch.reader import Row
from batch.results import EmbedResult, RowError, ScoreResult
from batch.targets import MISSING_EMBED_INPUT, missing_score_input
from infra.settings import Settings


def _decode_workers(info: Any) -> dict[str, int]:
    """On the CPU two decodes at once (the model needs the cores too); on a GPU every core decodes, since the
    GPU outruns them (a ViT-B/32 image costs it well under a millisecond, a 640x480 JPEG a core 6-9 ms)."""
    if info.device != "cuda":
        return {"concurrency": 4, "decode_concurrency": 2}
    from models.threads import cpu_budget

    cores = cpu_budget()
    return {"concurrency": max(4, cores), "decode_concurrency": max(2, cores)}


class LocalTarget:
    def __init__(
        self,
        encoder: Any,
        search_dirs: Sequence[Path] = (),
        allow_private_urls: bool = False,
        settings: Settings | None = None,
    ) -> None:
        from inputs import FetchLimits, ImageLimits, draft_size_for

        settings = settings or Settings.from_env()
        self.encoder = encoder
        self.search_dirs = tuple(search_dirs)
        self.max_text_chars = settings.max_text_chars
        self.draft_size = draft_size_for(encoder.info.image_size, settings.exact_image_decode)
        self.limits = ImageLimits(fetch=FetchLimits(allow_private=allow_private_urls), **_decode_workers(encoder.info))
        self._forward = threading.Lock()

    @classmethod
    def load(cls, variant: str, model_dir: Path, **kwargs: Any) -> LocalTarget:
        from models.loader import load_encoder

        settings = kwargs.pop("settings", None) or Settings.from_env()
        encoder = load_encoder(variant=variant, model_dir=model_dir, precision=settings.precision,
                               runtime=settings.runtime, device=settings.device,
                               image_decode=settings.image_decode)
        return cls(encoder, settings=settings, **kwargs)

    def describe(self) -> dict[str, Any]:
        info = self.encoder.info
        return {"variant": info.variant, "architecture": info.architecture, "dim": info.dim, "weights": info.weights}

    def close(self) -> None:
        pass

    # -- building blocks --------------------------------------------------------------------

    def _text_error(self, row: Row) -> RowError | None:
        """The service's answer to a text over MAX_TEXT_CHARS: the whole row refused (400), alone."""
        if row.text is not None and len(row.text) > self.max_text_chars:
            return RowError(
                "invalid_request", f"texts[0]: String should have at most {self.max_text_chars} characters"
            )
        return None

    def _encode_texts(self, texts: list[str], normalize: bool) -> tuple[np.ndarray, set[int]]:
        with self._forward:
            encoding = self.encoder.encode_text(texts, normalize=normalize)
        return encoding.embeddings, set(encoding.truncated)

    def _encode_images(self, values: list[str], normalize: bool) -> list[np.ndarray | RowError]:
        """One vector or RowError per IMAGE cell, aligned with `values`."""
        from inputs import ImageError, load_images

        sources: list[str | bytes | RowError] = []
        for value in values:
            ref = classify_image(value, self.search_dirs)
            sources.append(read_local_file(ref) if isinstance(ref, LocalFile) else ref)
        loadable = [i for i, s in enumerate(sources) if not isinstance(s, RowError)]
        on_gpu = self.encoder.info.image_decode == "gpu"
        loaded = load_images([sources[i] for i in loadable], self.limits, then=self.encoder.prepare_image,
                             draft_size=self.draft_size, encoded=self.encoder.prepare_encoded_image if on_gpu else None)
        results: list[np.ndarray | RowError] = [s if isinstance(s, RowError) else None for s in sources]  # type: ignore[misc]
        tensors = []
        for i, item in zip(loadable, loaded, strict=True):
            if isinstance(item, ImageError):
                results[i] = RowError(item.code, item.message)
            else:
                tensors.append((i, item))
        if tensors:
            with self._forward:
                vectors = self.encoder.encode_images([t for _, t in tensors], normalize=normalize)
            for (i, _), vector in zip(tensors, vectors, strict=True):
                results[i] = vector
        return results

    # -- Target -----------------------------------------------------------------------------

    def embed(self, rows: Sequence[Row], normalize: bool = True) -> list[EmbedResult]:
        refused = {i: e for i, r in enumerate(rows) if (e := self._text_error(r)) is not None}
        text_rows = [i for i, r in enumerate(rows) if r.text is not None and i not in refused]
        image_rows = [i for i, r in enumerate(rows) if r.image is not None and i not in refused]
        text_vectors: dict[int, np.ndarray] = {}
        truncated: set[int] = set()
        if text_rows:
            vectors, truncated_at = self._encode_texts([rows[i].text for i in text_rows], normalize)  # type: ignore[misc]
            text_vectors = dict(zip(text_rows, vectors))
            truncated = {text_rows[j] for j in truncated_at}
        images = dict(zip(image_rows, self._encode_images([rows[i].image for i in image_rows], normalize)))  # type: ignore[misc]
        results = []
        for i, row in enumerate(rows):
            if row.text is None and row.image is None:
                results.append(EmbedResult(error=MISSING_EMBED_INPUT))
                continue
            if i in refused:
                results.append(EmbedResult(error=refused[i]))
                continue
            image = images.get(i)
            results.append(
                EmbedResult(
                    text_embedding=text_vectors.get(i),
                    image_embedding=image if isinstance(image, np.ndarray) else None,
                    truncated=i in truncated,
                    error=image if isinstance(image, RowError) else None,
                )
            )
        return results

    def score(self, rows: Sequence[Row]) -> list[ScoreResult]:
        """cosine of the normalized embeddings; clip_score = max(100 * cosine, 0) as in the API."""
        results: list[ScoreResult | None] = [None] * len(rows)
        pairs = []
        for i, row in enumerate(rows):
            error = missing_score_input(row) or self._text_error(row)
            if error is not None:
                results[i] = ScoreResult(error=error)
            else:
                pairs.append(i)
        if pairs:
            images = self._encode_images([rows[i].image for i in pairs], normalize=True)  # type: ignore[misc]
            ok = [(i, v) for i, v in zip(pairs, images) if isinstance(v, np.ndarray)]
            for i, v in zip(pairs, images):
                if isinstance(v, RowError):
                    results[i] = ScoreResult(error=v)
            if ok:
                texts, _ = self._encode_texts([rows[i].text for i, _ in ok], normalize=True)  # type: ignore[misc]
                for (i, image), text in zip(ok, texts, strict=True):
                    cosine = float(np.dot(image.astype(np.float32), text.astype(np.float32)))
                    results[i] = ScoreResult(clip_score=max(100.0 * cosine, 0.0), cosine=cosine)
        return results  # type: ignore[return-value]
