"""The clipserve HTTP API as a batch target (issue 3's contract).

One request per batch: /embed/text, /embed/image or /embed/mixed for `embed`, /score with
`pairwise` for `score`. Vectors travel as base64 float32 (exact and a third of the size).
Throttling, cold starts and dropped connections are retried by the session (batch.retry). A
request the service rejects as a whole (400/413/422) is split in halves until the row at
fault is alone, so one bad row costs only itself. So is a request still answered 500 after
every retry (a row that makes the service fail), with no more 500 retries for the halves: the
row left alone gets the service's error code, provided the service answered some other part of
the batch (or, for a one-row batch, the request before it). A service that answers nothing but
500 still stops the job, as do 429/502/503/504 and connection errors after every retry.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from requests.adapters import HTTPAdapter

from batch.images import LocalFile, classify_image, read_local_file
from batch.reader import Row
from batch.results import EmbedResult, RowError, ScoreResult
from batch.retry import RETRY_STATUSES, make_retry
from batch.targets import MISSING_EMBED_INPUT, FatalTargetError, missing_score_input

log = logging.getLogger(__name__)

SPLITTABLE_STATUSES = (400, 413, 422)  # the request as a whole was refused: find the row at fault
SERVER_FAULT_STATUS = 500  # still failing after every retry: maybe one row makes the service fail; find it
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
    auth: requests.auth.AuthBase | None = None
    timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    max_retries: int = 10
    backoff_factor: float = 0.5
    backoff_max_s: float = 30.0
    pool_size: int = 8
    model: str | None = None  # the served model to use (its `model` field); None: the service's default


class _Rejected(Exception):
    """The service refused the whole request with a 4xx we can attribute to its rows."""

    def __init__(self, status: int, error: RowError, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"HTTP {status}: {error.code}")
        self.status = status
        self.error = error
        self.details = details  # per-image errors by index, when every image failed (422)

    def per_image(self) -> dict[str, Any] | None:
        """A 422 "every image failed" read as a normal body: its per-image errors, no vectors."""
        if self.status == 422 and self.details:
            return {"errors": self.details}
        return None


class _ServerFailed(FatalTargetError):
    """HTTP 500 after every retry. Fatal unless ``_split_on_rejection`` pins it on one row."""

    def __init__(self, message: str, error: RowError) -> None:
        super().__init__(message)
        self.error = error


@dataclass
class _Split:
    """What happened to the parts of one batch while it was being split."""

    failed: _ServerFailed | None = None  # the first 500 that outlived its retries
    failed_rows: int = 0  # rows answered 500 when alone


def decode_vector(value: Any) -> np.ndarray | None:
    """A vector from the API: base64 little-endian float32, a JSON list, or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def _error_of(response: requests.Response) -> tuple[RowError, list[dict[str, Any]] | None]:
    """The API's {"error": {"code", "message", "details"?}}, or the status when the body is not that."""
    try:
        error = response.json()["error"]
        code, message = str(error.get("code", f"http_{response.status_code}")), str(error.get("message", ""))
        details = error.get("details")
        return RowError(code, message), details if isinstance(details, list) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return RowError(f"http_{response.status_code}", response.text[:200]), None


def _errors_by_index(body: dict[str, Any]) -> dict[int, RowError]:
    return {
        int(e["index"]): RowError(str(e.get("code", "error")), str(e.get("message", "")))
        for e in body.get("errors") or []
    }


@contextlib.contextmanager
def _unexpected_answers_are_fatal(what: str) -> Iterator[None]:
    """A 200 whose body does not fit the contract (missing keys, wrong lengths) is not a row's fault:
    stop the job rather than write wrong rows."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise FatalTargetError(
            f"{what}: the service's answer does not match the API ({type(exc).__name__}: {exc})"
        ) from exc


class HttpTarget:
    """Sends batches of rows to a clipserve endpoint; one requests.Session per worker thread."""

    def __init__(
        self,
        options: HttpOptions,
        search_dirs: Sequence[Path] = (),
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options
        self.base_url = options.endpoint.rstrip("/")
        self.search_dirs = tuple(search_dirs)
        self._on_retry = on_retry
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._last_answered = False  # did the latest request that finished get an answer (not a 500)?

    # -- plumbing ---------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        """This thread's session; while a batch is split after a lasting 500, one that does not retry 500."""
        name = "split_session" if getattr(self._local, "no_500_retries", False) else "session"
        session = getattr(self._local, name, None)
        if session is None:
            statuses = RETRY_STATUSES
            if name == "split_session":
                statuses = tuple(s for s in RETRY_STATUSES if s != SERVER_FAULT_STATUS)
            session = requests.Session()
            retry = make_retry(
                self.options.max_retries,
                self.options.backoff_factor,
                self.options.backoff_max_s,
                on_retry=self._on_retry,
                statuses=statuses,
            )
            adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=self.options.pool_size)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update(self.options.headers)
            session.auth = self.options.auth
            setattr(self._local, name, session)
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        try:
            response = self._session().request(
                method, url, json=body, timeout=(self.options.connect_timeout_s, self.options.timeout_s)
            )
        except requests.RequestException as exc:
            raise FatalTargetError(f"{method} {url}: {exc} (up to {self.options.max_retries} retries done)") from exc
        status = response.status_code
        self._last_answered = status == 200 or status in SPLITTABLE_STATUSES
        if self._last_answered:  # the service worked on this request (a 4xx is its verdict on the rows)
            self._local.answers = getattr(self._local, "answers", 0) + 1
        if status == 200:
            try:
                return response.json()
            except ValueError:
                raise FatalTargetError(f"{method} {url}: 200 with a body that is not JSON") from None
        error, details = _error_of(response)
        if status in SPLITTABLE_STATUSES:
            raise _Rejected(status, error, details)
        hint = _HINTS.get(status, "")
        message = f"{method} {url}: HTTP {status} {error.code}: {error.message}{hint}"
        if status == SERVER_FAULT_STATUS:
            raise _ServerFailed(message, error)
        raise FatalTargetError(message)

    def describe(self) -> dict[str, Any]:
        """The facts of the model the job uses: GET /'s default model, or the one --model names."""
        info = self._request("GET", "/")
        if self.options.model is None:
            return info.get("model") or {}
        wanted = next((m for m in info.get("models", []) if self.options.model in (m["id"], *m.get("aliases", []))),
                      None)
        return {"variant": wanted["id"], **{k: v for k, v in wanted.items() if k != "id"}} if wanted else {}

    def _with_model(self, body: dict[str, Any]) -> dict[str, Any]:
        return body if self.options.model is None else {**body, "model": self.options.model}

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    # -- images -----------------------------------------------------------------------------

    def _wire_image(self, value: str) -> str | RowError:
        """What the service gets for an IMAGE cell: local files are read and sent as base64."""
        ref = classify_image(value, self.search_dirs)
        if not isinstance(ref, LocalFile):
            return ref
        data = read_local_file(ref)
        if isinstance(data, RowError):
            return data
        return base64.b64encode(data).decode("ascii")

    def _split_on_rejection(
        self, rows: Sequence[Row], send: Callable[[Sequence[Row]], list], fail: Callable[[RowError], Any]
    ) -> list:
        """send(rows), halving the batch on a whole-request 4xx, or a 500 after every retry, until the bad row
        is alone. Raises the 500 instead if no part of the batch got an answer: the service fails on everything."""
        answered_before = self._last_answered
        answers_before = getattr(self._local, "answers", 0)
        split = _Split()
        try:
            results = self._send_or_split(rows, send, fail, split)
        finally:
            self._local.no_500_retries = False
        if split.failed is not None:
            answered = getattr(self._local, "answers", 0) > answers_before
            if not answered and not (len(rows) == 1 and answered_before):
                raise split.failed
            log.warning(
                "HTTP 500 for %d row(s) sent alone while the service answered other requests: row errors (%s)",
                split.failed_rows, split.failed.error.code,
            )  # fmt: skip
        return results

    def _send_or_split(
        self,
        rows: Sequence[Row],
        send: Callable[[Sequence[Row]], list],
        fail: Callable[[RowError], Any],
        split: _Split,
    ) -> list:
        try:
            return send(rows)
        except _Rejected as rejected:
            status, error = rejected.status, rejected.error
        except _ServerFailed as failed:
            split.failed = split.failed or failed
            self._local.no_500_retries = True  # it outlived its retries: the halves get none for 500
            status, error = SERVER_FAULT_STATUS, failed.error
        if len(rows) == 1:
            split.failed_rows += status == SERVER_FAULT_STATUS
            return [fail(error)]
        log.info("HTTP %d for a batch of %d rows; splitting it to find the row at fault", status, len(rows))
        middle = len(rows) // 2
        return self._send_or_split(rows[:middle], send, fail, split) + self._send_or_split(
            rows[middle:], send, fail, split
        )

    # -- embed ------------------------------------------------------------------------------

    def embed(self, rows: Sequence[Row], normalize: bool = True) -> list[EmbedResult]:
        with _unexpected_answers_are_fatal("/embed"):
            return self._split_on_rejection(
                rows, lambda part: self._embed_once(part, normalize), lambda error: EmbedResult(error=error)
            )

    def _embed_once(self, rows: Sequence[Row], normalize: bool) -> list[EmbedResult]:
        texts: list[tuple[int, str]] = []
        images: list[tuple[int, str]] = []
        local_errors: dict[int, RowError] = {}
        for i, row in enumerate(rows):
            if row.text is not None:
                texts.append((i, row.text))
            if row.image is not None:
                wire = self._wire_image(row.image)
                if isinstance(wire, RowError):
                    local_errors[i] = wire
                else:
                    images.append((i, wire))

        text_vectors: dict[int, np.ndarray | None] = {}
        image_vectors: dict[int, np.ndarray | None] = {}
        truncated: set[int] = set()
        remote_errors: dict[int, RowError] = {}
        if texts or images:
            try:
                text_list, image_list, body = self._post_embed(
                    [t for _, t in texts], [im for _, im in images], normalize
                )
            except _Rejected as rejected:
                body = rejected.per_image()  # /embed/image where every image failed
                if body is None or texts:
                    raise
                text_list, image_list = [], [None] * len(images)
            text_vectors = {row_i: decode_vector(v) for (row_i, _), v in zip(texts, text_list, strict=True)}
            image_vectors = {row_i: decode_vector(v) for (row_i, _), v in zip(images, image_list, strict=True)}
            truncated = {texts[j][0] for j in body.get("truncated") or []}
            remote_errors = {images[j][0]: e for j, e in _errors_by_index(body).items()}

        results = []
        for i, row in enumerate(rows):
            if row.text is None and row.image is None:
                results.append(EmbedResult(error=MISSING_EMBED_INPUT))
                continue
            results.append(
                EmbedResult(
                    text_embedding=text_vectors.get(i),
                    image_embedding=image_vectors.get(i),
                    truncated=i in truncated,
                    error=local_errors.get(i) or remote_errors.get(i),
                )
            )
        return results

    def _post_embed(self, texts: list[str], images: list[str], normalize: bool) -> tuple[list, list, dict[str, Any]]:
        """(text vectors, image vectors, body) from the endpoint that fits what the batch holds."""
        options = {"normalize": normalize, "encoding_format": "base64"}
        if texts and images:
            body = self._request("POST", "/embed/mixed", self._with_model({"texts": texts, "images": images, **options}))
            return body["text_embeddings"], body["image_embeddings"], body
        if texts:
            body = self._request("POST", "/embed/text", self._with_model({"texts": texts, **options}))
            return body["embeddings"], [], body
        body = self._request("POST", "/embed/image", self._with_model({"images": images, **options}))
        return [], body["embeddings"], body

    # -- score ------------------------------------------------------------------------------

    def score(self, rows: Sequence[Row]) -> list[ScoreResult]:
        with _unexpected_answers_are_fatal("/score"):
            return self._split_on_rejection(rows, self._score_once, lambda error: ScoreResult(error=error))

    def _score_once(self, rows: Sequence[Row]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(rows)
        pairs: list[tuple[int, str, str]] = []
        for i, row in enumerate(rows):
            missing = missing_score_input(row)
            if missing is not None:
                results[i] = ScoreResult(error=missing)
                continue
            wire = self._wire_image(row.image)  # type: ignore[arg-type]
            if isinstance(wire, RowError):
                results[i] = ScoreResult(error=wire)
            else:
                pairs.append((i, row.text, wire))  # type: ignore[arg-type]
        if pairs:
            request = {"texts": [t for _, t, _ in pairs], "images": [im for _, _, im in pairs], "pairwise": True}
            try:
                body = self._request("POST", "/score", self._with_model(request))
            except _Rejected as rejected:
                body = rejected.per_image()  # every image failed
                if body is None:
                    raise
            errors = _errors_by_index(body)
            scores, cosines = body.get("clip_score") or [None] * len(pairs), body.get("cosine") or [None] * len(pairs)
            for j, (row_i, _, _) in enumerate(pairs):
                if j in errors or scores[j] is None:
                    results[row_i] = ScoreResult(error=errors.get(j, RowError("error", "no score returned")))
                else:
                    results[row_i] = ScoreResult(clip_score=float(scores[j]), cosine=float(cosines[j]))
        return results  # type: ignore[return-value]
