"""The clipserve HTTP API as a batch target, through the Python client (clients/python: clipserve_client).

The client does what any caller of the service needs: requests within the service's limits, base64 float32
vectors, retries of 429/5xx and dropped connections with backoff and Retry-After, and a refused request (or one
answered 500 after every retry) halved until the row at fault is alone, which then gets the service's code while
the rest succeed. What is the batch job's own stays here: rows to requests (a batch's texts and images go to
/embed/text, /embed/image or /embed/mixed), IMAGE cells resolved against the input's folder, one result per row,
and every failure of the whole call turned into FatalTargetError (the job stops; a re-run resumes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from clipserve_client import Client, ClipserveError, Embeddings, Encoded, RetryPolicy

from batch.images import LocalFile, classify_image
from batch.reader import Row
from batch.results import EmbedResult, RowError, ScoreResult
from batch.targets import MISSING_EMBED_INPUT, FatalTargetError, missing_score_input

_HINTS = {
    401: " (check --token / --api-key / --google-id-token / --aws-sigv4)",
    403: " (check --token / --api-key / --google-id-token / --aws-sigv4)",
    404: " (is --endpoint the service's base URL?)",
    429: " (the service stayed overloaded through every retry: lower --concurrency or raise --max-retries)",
    504: " (requests kept timing out: lower --batch-size or --concurrency)",
}


@dataclass(frozen=True)
class HttpOptions:
    endpoint: str
    headers: dict[str, str]
    auth: httpx.Auth | None = None
    timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    max_retries: int = 10
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    model: str | None = None  # the served model to use (its `model` field); None: the service's default


@contextlib.contextmanager
def _failures_stop_the_job() -> Iterator[None]:
    """Whatever fails the whole call (credentials, an outage outliving its retries, an answer that breaks the
    contract) is not a row's fault: stop the job rather than write wrong rows."""
    try:
        yield
    except ClipserveError as exc:
        raise FatalTargetError(f"{exc.message}{_HINTS.get(exc.status or 0, '')}") from exc


class HttpTarget:
    """Sends batches of rows to a clipserve endpoint through one thread-safe client."""

    def __init__(self, options: HttpOptions, search_dirs: Sequence[Path] = (),
                 on_retry: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.search_dirs = tuple(search_dirs)
        retry = RetryPolicy(max_retries=options.max_retries, backoff_s=options.backoff_s,
                            backoff_max_s=options.backoff_max_s)
        # concurrency=1: the job runs --concurrency batches at once, each one call here.
        self.client = Client(options.endpoint, auth=options.auth, headers=options.headers, model=options.model,
                             timeout=options.timeout_s, connect_timeout=options.connect_timeout_s, concurrency=1,
                             retry=retry, on_retry=on_retry)

    def describe(self) -> dict[str, Any]:
        """The facts of the model the job uses: GET /'s default model, or the one --model names."""
        with _failures_stop_the_job():
            info = self.client.info()
        if self.options.model is None:
            return info.get("model") or {}
        wanted = next((m for m in info.get("models", []) if self.options.model in (m["id"], *m.get("aliases", []))),
                      None)
        return {"variant": wanted["id"], **{k: v for k, v in wanted.items() if k != "id"}} if wanted else {}

    def close(self) -> None:
        self.client.close()

    def _image(self, value: str) -> str | Path:
        """An IMAGE cell for the client: a local file as its path (the client reads it), anything else as is."""
        ref = classify_image(value, self.search_dirs)
        return ref.path if isinstance(ref, LocalFile) else Encoded(ref)

    # -- embed ------------------------------------------------------------------------------

    def embed(self, rows: Sequence[Row], normalize: bool = True) -> list[EmbedResult]:
        texts = [(i, row.text) for i, row in enumerate(rows) if row.text is not None]
        images = [(i, self._image(row.image)) for i, row in enumerate(rows) if row.image is not None]
        text_result = image_result = None
        with _failures_stop_the_job():
            if texts and images:
                mixed = self.client.embed_mixed([t for _, t in texts], [im for _, im in images], normalize=normalize)
                text_result, image_result = mixed.texts, mixed.images
            elif texts:
                text_result = self.client.embed_text([t for _, t in texts], normalize=normalize)
            elif images:
                image_result = self.client.embed_image([im for _, im in images], normalize=normalize)
        text_of = _by_row(texts, text_result)
        image_of = _by_row(images, image_result)
        results = []
        for i, row in enumerate(rows):
            if row.text is None and row.image is None:
                results.append(EmbedResult(error=MISSING_EMBED_INPUT))
                continue
            text_vector, text_error, truncated = text_of.get(i, (None, None, False))
            image_vector, image_error, _ = image_of.get(i, (None, None, False))
            results.append(EmbedResult(text_embedding=text_vector, image_embedding=image_vector, truncated=truncated,
                                       error=image_error or text_error))
        return results

    # -- score ------------------------------------------------------------------------------

    def score(self, rows: Sequence[Row]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(rows)
        pairs: list[tuple[int, str, str | Path]] = []
        for i, row in enumerate(rows):
            missing = missing_score_input(row)
            if missing is not None:
                results[i] = ScoreResult(error=missing)
            else:
                pairs.append((i, row.text, self._image(row.image)))  # type: ignore[arg-type]
        if pairs:
            with _failures_stop_the_job():
                scores = self.client.score([t for _, t, _ in pairs], [im for _, _, im in pairs], pairwise=True)
            errors = {e.index: RowError(e.code, e.message) for e in scores.errors}
            for j, (row_i, _, _) in enumerate(pairs):
                if j in errors or np.isnan(scores.cosine[j]):
                    results[row_i] = ScoreResult(error=errors.get(j, RowError("error", "no score returned")))
                else:
                    results[row_i] = ScoreResult(clip_score=float(scores.clip_score[j]), cosine=float(scores.cosine[j]))
        return results  # type: ignore[return-value]


def _by_row(items: list[tuple[int, Any]], result: Embeddings | None) -> dict[int, tuple[Any, RowError | None, bool]]:
    """row -> (vector or None, error or None, truncated) from a client result over ``items``."""
    if result is None:
        return {}
    errors = {e.index: RowError(e.code, e.message) for e in result.errors}
    truncated = set(result.truncated)
    out = {}
    for j, (row_i, _) in enumerate(items):
        vector = None if j in errors else result.vectors[j]
        out[row_i] = (vector, errors.get(j), j in truncated)
    return out
