"""What the sync and async clients share, with no I/O: the service's limits, how a call becomes requests, how
answers become results, which failures are retried and how long to wait.

A call is an ``Operation`` over the caller's items. It is cut into chunks that fit the service's limits (read
from ``GET /``), each chunk is one request, and each answer is written into the operation at its items' indices,
so results come back in the caller's order however the chunks were sent. A chunk the service refuses as a whole
(400 ``invalid_request``, 413) is halved until the item at fault is alone, which then gets that error; the rest
succeed. A chunk answered 500 after every retry is halved too (without retrying 500 again), and an item alone
that still gets 500 carries ``internal_error``, unless the service answered nothing else, when the call raises
``ServerError``: a service that fails on everything is down, not a bad input.
"""

from __future__ import annotations

import abc
import base64
import email.utils
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipserve_client.errors import ClipserveError, InvalidInput, ItemError, ServerError, error_for

__all__ = ["Attempts", "CallState", "ClipserveError", "Limits", "Operation", "RetryPolicy", "Served",
           "UnexpectedAnswer", "run_chunk"]
from clipserve_client.results import Embeddings, Hit, MixedEmbeddings, Scores, Written, ZeroShot

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# The longest Retry-After honoured unless the policy's backoff_max_s (or retry_after_max_s) is longer.
RETRY_AFTER_MAX_S = 60.0
SPLITTABLE_CODES = frozenset({"invalid_request", "payload_too_large"})
ALL_FAILED_CODES = frozenset({"all_images_failed", "all_items_failed"})
_BODY_SHARE = 0.9  # of max_body_bytes a chunk may fill (JSON framing, the other fields)
_DEFAULT_CHUNK = 64


class UnexpectedAnswer(ClipserveError):
    """A 200 whose body does not fit the API (missing keys, wrong lengths): a proxy or a version mismatch."""


@dataclass(frozen=True)
class Limits:
    """The service's own limits (``GET /``'s ``limits``), which chunks must fit."""

    max_items: int = _DEFAULT_CHUNK
    max_body_bytes: int = 30 * 1024 * 1024
    search_max_top_k: int = 1000

    @classmethod
    def from_root(cls, root: dict[str, Any]) -> "Limits":
        limits = root.get("limits") or {}
        return cls(max_items=int(limits.get("max_items", _DEFAULT_CHUNK)),
                   max_body_bytes=int(limits.get("max_body_bytes", cls.max_body_bytes)),
                   search_max_top_k=int(limits.get("search_max_top_k", cls.search_max_top_k)))


@dataclass(frozen=True)
class RetryPolicy:
    """429/5xx and dropped connections are retried (every call is idempotent: the same input gives the same
    vector, and ``upsert`` of the same id replaces it) with exponential backoff and jitter, or after
    ``Retry-After`` when the service says, up to ``retry_after_max_s`` (default: the larger of
    ``backoff_max_s`` and 60 s) so a confused proxy's ``Retry-After: 3600`` cannot park a call for an hour."""

    max_retries: int = 8
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float | None = None

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number ``attempt + 1``: the backoff, or Retry-After when it is longer (a
        ``Retry-After: 0`` from a limiter whose window is about to turn must not become a burst of retries)."""
        backoff = float(min(self.backoff_max_s, self.backoff_s * 2.0 ** attempt) * (0.5 + random.random() / 2))
        if retry_after is None:
            return backoff
        cap = self.retry_after_max_s if self.retry_after_max_s is not None else max(self.backoff_max_s,
                                                                                    RETRY_AFTER_MAX_S)
        return max(backoff, min(float(retry_after), cap))


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def error_from_answer(status: int, body: Any, text: str, retry_after: float | None) -> ClipserveError:
    """The exception for an error answer: the service's ``{"error": {"code", "message", "details"}}``."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        exc = error_for(status, str(error.get("code") or "") or None, str(error.get("message", "")), retry_after)
        details = error.get("details")
        exc.details = details if isinstance(details, list) else None  # type: ignore[attr-defined]
        return exc
    exc = error_for(status, None, text[:200], retry_after)
    exc.details = None  # type: ignore[attr-defined]
    return exc


def splittable(exc: ClipserveError) -> bool:
    """A refusal that some item of the request caused (halving the request finds it)."""
    return isinstance(exc, InvalidInput) and (exc.code in SPLITTABLE_CODES or exc.status == 413)


def decode_vector(value: Any) -> np.ndarray | None:
    """A vector from the API: base64 little-endian float32, a JSON list, or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def chunks(sizes: Sequence[int], limits: Limits) -> list[list[int]]:
    """Consecutive positions packed while a chunk stays within the item and byte limits (``sizes``: each item's
    bytes on the wire)."""
    most = limits.max_items
    room = int(limits.max_body_bytes * _BODY_SHARE)
    out: list[list[int]] = []
    current: list[int] = []
    used = 0
    for position, size in enumerate(sizes):
        if current and (len(current) >= most or used + size > room):
            out.append(current)
            current, used = [], 0
        current.append(position)
        used += size
    if current:
        out.append(current)
    return out


@dataclass
class CallState:
    """What a call learned while its chunks ran: whether the service answered any of them, and the first 500
    that outlived its retries (raised if nothing was answered)."""

    answered: bool = False
    server_failure: ServerError | None = None


class Operation(abc.ABC):
    """One call over the caller's items. ``wire``: each item as sent, or the ItemError it already failed with
    locally (never sent). A position is an index into the items sent; ``indices[position]`` is the caller's index.
    Subclasses say how positions become a request and an answer results."""

    method = "POST"
    path = ""

    def __init__(self, base: dict[str, Any], wire: Sequence[Any] = ()) -> None:
        self.base = base  # fields every request carries (normalize, model, ...)
        self.indices = [i for i, w in enumerate(wire) if not isinstance(w, ItemError)]
        self.items = [w for w in wire if not isinstance(w, ItemError)]
        self.errors: dict[int, ItemError] = {w.index: w for w in wire if isinstance(w, ItemError)}

    def sizes(self) -> list[int]:
        """Each item's bytes on the wire (what chunks are packed by)."""
        return [len(item) + 8 for item in self.items]

    @abc.abstractmethod
    def request(self, positions: Sequence[int]) -> dict[str, Any]: ...

    @abc.abstractmethod
    def accept(self, positions: Sequence[int], answer: dict[str, Any]) -> None: ...

    def fail(self, position: int, code: str, message: str) -> None:
        index = self.indices[position]
        self.errors[index] = ItemError(index, code, message)

    def sorted_errors(self) -> list[ItemError]:
        return sorted(self.errors.values(), key=lambda e: e.index)

    def all_failed(self, positions: Sequence[int], details: list[dict[str, Any]]) -> None:
        """A 422 ``all_images_failed``: each item's own error, as a 200 would have listed them."""
        self.accept(positions, {"errors": details})


def _model_name(answer: dict[str, Any]) -> str | None:
    model = answer.get("model")
    return model.get("variant") if isinstance(model, dict) else None


def _item_errors(answer: dict[str, Any], positions: Sequence[int]) -> dict[int, tuple[str, str]]:
    """The answer's per-item errors by position in the call (their ``index`` is within this request)."""
    out = {}
    for error in answer.get("errors") or []:
        out[positions[int(error["index"])]] = (str(error.get("code", "error")), str(error.get("message", "")))
    return out


class EmbedOperation(Operation):
    """Texts or images (``kind``) to vectors. Items that failed locally (``errors`` given up front) are not sent."""

    def __init__(self, kind: str, wire: list[str | ItemError], base: dict[str, Any]) -> None:
        super().__init__(base, wire)
        self.kind = kind
        self.path = "/embed/text" if kind == "texts" else "/embed/image"
        self.total = len(wire)
        self.vectors: dict[int, np.ndarray] = {}
        self.truncated: set[int] = set()
        self.model: str | None = None

    def request(self, positions: Sequence[int]) -> dict[str, Any]:
        return {self.kind: [self.items[p] for p in positions], **self.base}

    def accept(self, positions: Sequence[int], answer: dict[str, Any]) -> None:
        embeddings = answer.get("embeddings")
        if embeddings is None:
            embeddings = [None] * len(positions)
        if len(embeddings) != len(positions):
            raise UnexpectedAnswer(f"{self.path}: {len(embeddings)} vectors for {len(positions)} items")
        failed = _item_errors(answer, positions)
        for position, value in zip(positions, embeddings):
            if position in failed:
                self.fail(position, *failed[position])
            elif value is None:
                self.fail(position, "error", "no vector returned")
            else:
                self.vectors[self.indices[position]] = decode_vector(value)  # type: ignore[assignment]
        self.truncated.update(self.indices[positions[t]] for t in answer.get("truncated") or [])
        self.model = self.model or _model_name(answer)

    def result(self, dim: int) -> Embeddings:
        if self.vectors:
            dim = len(next(iter(self.vectors.values())))
        out = np.full((self.total, dim), np.nan, dtype=np.float32)
        for index, vector in self.vectors.items():
            out[index] = vector
        return Embeddings(out, self.sorted_errors(), sorted(self.truncated), self.model)


class MixedOperation(Operation):
    """Texts and images of one call through ``/embed/mixed``: both kinds in each request, by one model."""

    path = "/embed/mixed"

    def __init__(self, texts: list[str], images: list[str | ItemError], base: dict[str, Any]) -> None:
        super().__init__(base)
        self.text_op = EmbedOperation("texts", list(texts), base)
        self.image_op = EmbedOperation("images", images, base)
        n_texts = len(self.text_op.items)
        self.kinds = [("texts", p) for p in range(n_texts)] + [("images", p) for p in range(len(self.image_op.items))]

    def sizes(self) -> list[int]:
        return self.text_op.sizes() + self.image_op.sizes()

    def _split(self, positions: Sequence[int]) -> tuple[list[int], list[int]]:
        texts = [self.kinds[p][1] for p in positions if self.kinds[p][0] == "texts"]
        images = [self.kinds[p][1] for p in positions if self.kinds[p][0] == "images"]
        return texts, images

    def request(self, positions: Sequence[int]) -> dict[str, Any]:
        texts, images = self._split(positions)
        body: dict[str, Any] = dict(self.base)
        if texts:
            body["texts"] = [self.text_op.items[p] for p in texts]
        if images:
            body["images"] = [self.image_op.items[p] for p in images]
        return body

    def accept(self, positions: Sequence[int], answer: dict[str, Any]) -> None:
        texts, images = self._split(positions)
        if texts:
            self.text_op.accept(texts, {"embeddings": answer.get("text_embeddings"),
                                        "truncated": answer.get("truncated"), "model": answer.get("model")})
        if images:
            self.image_op.accept(images, {"embeddings": answer.get("image_embeddings"), "errors": answer.get("errors"),
                                          "model": answer.get("model")})

    def fail(self, position: int, code: str, message: str) -> None:
        kind, inner = self.kinds[position]
        (self.text_op if kind == "texts" else self.image_op).fail(inner, code, message)

    def result(self, dim: int) -> MixedEmbeddings:
        return MixedEmbeddings(texts=self.text_op.result(dim), images=self.image_op.result(dim))


class ScoreOperation(Operation):
    """``/score``. Every image against every text: chunks of images, each with all the texts (the service caches
    their embeddings). Pairwise: chunks of pairs."""

    path = "/score"

    def __init__(self, texts: list[str], images: list[str | ItemError], pairwise: bool, base: dict[str, Any]) -> None:
        if pairwise and len(texts) != len(images):
            raise ValueError(f"pairwise scores need as many texts as images ({len(texts)} texts, {len(images)} images)")
        super().__init__({**base, "pairwise": pairwise}, images)
        self.texts, self.pairwise = texts, pairwise
        columns = 1 if pairwise else len(texts)
        self.cosine = np.full((len(images), columns), np.nan)
        self.clip_score = np.full((len(images), columns), np.nan)
        self.probs = np.full((len(images), columns), np.nan)
        self.got_probs = False  # pairwise CLIP scores have none
        self.probs_kind: str | None = None
        self.truncated: set[int] = set()
        self.model: str | None = None

    def request(self, positions: Sequence[int]) -> dict[str, Any]:
        texts = [self.texts[self.indices[p]] for p in positions] if self.pairwise else self.texts
        return {"texts": texts, "images": [self.items[p] for p in positions], **self.base}

    def accept(self, positions: Sequence[int], answer: dict[str, Any]) -> None:
        failed = _item_errors(answer, positions)
        cosine, clip, probs = answer.get("cosine"), answer.get("clip_score"), answer.get("probs")
        if probs is not None:
            self.got_probs = True
        for row, position in enumerate(positions):
            index = self.indices[position]
            if position in failed:
                self.fail(position, *failed[position])
                continue
            if cosine is None or cosine[row] is None:
                self.fail(position, "error", "no score returned")
                continue
            self.cosine[index] = cosine[row]
            self.clip_score[index] = clip[row] if clip is not None else np.nan
            if probs is not None and probs[row] is not None:
                self.probs[index] = probs[row]
        self.probs_kind = answer.get("probs_kind") or self.probs_kind
        truncated = answer.get("truncated") or []
        self.truncated.update(self.indices[positions[t]] if self.pairwise else t for t in truncated)
        self.model = self.model or _model_name(answer)

    def result(self) -> Scores:
        def squeeze(a: np.ndarray) -> np.ndarray:
            return a[:, 0] if self.pairwise else a

        return Scores(cosine=squeeze(self.cosine), clip_score=squeeze(self.clip_score),
                      probs=squeeze(self.probs) if self.got_probs else None, probs_kind=self.probs_kind,
                      pairwise=self.pairwise, errors=self.sorted_errors(),
                      truncated=sorted(self.truncated), model=self.model)


class UpsertOperation(Operation):
    """``POST /index``: items written to the live index; each one not written is an error at its index."""

    path = "/index"

    def __init__(self, items: list[dict[str, Any] | ItemError]) -> None:
        super().__init__({}, items)
        self.written = 0

    def sizes(self) -> list[int]:
        return [len(str(item.get("image") or item.get("text") or "")) + 16 * len(item.get("vector") or ()) + 256
                for item in self.items]

    def request(self, positions: Sequence[int]) -> dict[str, Any]:
        return {"items": [self.items[p] for p in positions]}

    def accept(self, positions: Sequence[int], answer: dict[str, Any]) -> None:
        for position, (code, message) in _item_errors(answer, positions).items():
            self.fail(position, code, message)
        self.written += int(answer.get("upserted", 0))

    def result(self) -> Written:
        return Written(self.written, self.sorted_errors())


def zero_shot_from(scores: Scores, labels: list[str]) -> ZeroShot:
    probs = scores.probs if scores.probs is not None else scores.cosine
    best: list[str | None] = [None if np.isnan(row).any() else labels[int(np.argmax(row))] for row in probs]
    return ZeroShot(labels=labels, probs=probs, probs_kind=scores.probs_kind, best=best, errors=scores.errors,
                    model=scores.model)


def hits_from(answer: dict[str, Any]) -> list[Hit]:
    try:
        return [Hit(id=str(r["id"]), score=float(r["score"]), clip_score=r.get("clip_score"),
                    metadata=r.get("metadata"),
                    extra={k: v for k, v in r.items() if k not in ("id", "score", "clip_score", "metadata")})
                for r in answer["results"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise UnexpectedAnswer(f"/search: the answer does not match the API ({exc})") from exc


class CallerState:
    """What both clients hold besides their httpx client: the defaults every call uses, ``GET /`` once read, whether
    the latest request got an answer (for a one-item call's 500, see ``finish``), and the shared Retry-After pause."""

    def __init__(self, url: str, model: str | None, concurrency: int, retry: RetryPolicy | None,
                 on_retry: Any) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.concurrency = max(1, concurrency)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._served: Served | None = None
        self._answered_before = False
        self._pause = Pause()


@dataclass
class Served:
    """``GET /``, read once per client: the limits and each served model's dimension."""

    root: dict[str, Any]
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        self.limits = Limits.from_root(self.root)

    def dim(self, model: str | None) -> int:
        for entry in self.root.get("models") or []:
            if model is None and entry.get("default") or model in (entry.get("id"), *(entry.get("aliases") or [])):
                return int(entry.get("dim") or 0)  # unknown while the model loads
        return int((self.root.get("model") or {}).get("dim") or 0)


# -- one request's retries, and one chunk's splitting: written once, driven by the sync and the async client ------



class Deadline:
    """A call's ``timeout``: the whole call (every request and retry of it) must end within it. None: no limit
    but the client's per-request timeout."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self._end is None else self._end - time.monotonic()

    def check(self, what: str) -> None:
        """Raise Timeout when nothing is left."""
        left = self.left()
        if left is not None and left <= 0:
            self.expire(what)

    def expire(self, what: str, cause: ClipserveError | None = None) -> None:
        """Raise Timeout now, naming the error the call was retrying, if any."""
        from clipserve_client.errors import Timeout

        last = f"; last: {cause.message}" if cause is not None else ""
        raise Timeout(f"{what}: the call's timeout of {self.seconds:g} s ran out{last}",
                      status=cause.status if cause else None, code="call_timeout")

    def capped(self, seconds: float) -> float:
        """A wait, cut to what is left of the call."""
        left = self.left()
        return seconds if left is None else max(0.0, min(seconds, left))


NO_DEADLINE = Deadline()


class Attempts:
    """The retry loop of one request as a state machine: each outcome gives the answer, a delay before the next
    try, or raises. ``retry_500=False`` while a chunk is being split after a 500 that outlived its retries. A retry
    that would end after the call's deadline is not waited for: the call raises Timeout instead."""

    def __init__(self, policy: RetryPolicy, retry_500: bool = True, on_retry: Any = None,
                 deadline: Deadline = NO_DEADLINE) -> None:
        self.policy, self.retry_500, self.on_retry, self.deadline = policy, retry_500, on_retry, deadline
        self.attempt = 0
        self.retry_after: float | None = None  # what the last answer asked for (429/503), in seconds

    def transport_error(self, exc: Exception, what: str) -> float:
        from clipserve_client.errors import ConnectionFailed, Timeout

        cls = Timeout if "Timeout" in type(exc).__name__ else ConnectionFailed
        return self._again(cls(f"{what}: {type(exc).__name__}: {exc}"), type(exc).__name__)

    def answered(self, status: int, body: Any, text: str, retry_after: str | None, what: str) -> dict[str, Any] | float:
        if status < 400:
            if not isinstance(body, dict):
                raise UnexpectedAnswer(f"{what}: HTTP {status} with a body that is not a JSON object", status=status)
            return body
        error = error_from_answer(status, body, text, parse_retry_after(retry_after))
        error.message = f"{what}: {error.message}"
        if status not in RETRY_STATUSES or (status == 500 and not self.retry_500):
            raise error
        return self._again(error, f"HTTP {status}")

    def _again(self, error: ClipserveError, reason: str) -> float:
        if self.attempt >= self.policy.max_retries:
            raise error
        delay = self.policy.delay(self.attempt, error.retry_after)
        left = self.deadline.left()
        if left is not None and delay >= left:  # the retry would not fit in the call's timeout
            self.deadline.expire(reason, error)
        self.retry_after = delay if error.retry_after is not None else None
        self.attempt += 1
        if self.on_retry is not None:
            self.on_retry(reason)
        return delay


class Pause:
    """When the service says "retry after N seconds" (429, 503), it means this client, not one request: every
    request the client sends waits until then. Chunks running side by side would otherwise each hit the limit
    on their own schedule, and under a rate limit some would be refused until their retries ran out."""

    def __init__(self) -> None:
        self._until = 0.0

    def hold(self, seconds: float | None) -> None:
        if seconds:
            self._until = max(self._until, time.monotonic() + seconds)

    def left(self) -> float:
        return max(0.0, self._until - time.monotonic())


Request = tuple[str, str, dict[str, Any], bool]  # method, path, body, retry 500


def run_chunk(op: Operation, positions: Sequence[int], state: CallState, retry_500: bool = True) -> Any:
    """A generator: yields each request to send and receives its answer (or has the error thrown into it).
    Refusals the items caused, and 500s that outlived their retries, halve the chunk to pin the item."""
    try:
        answer = yield (op.method, op.path, op.request(positions), retry_500)
    except ClipserveError as exc:
        details = getattr(exc, "details", None)
        if exc.code in ALL_FAILED_CODES and details:
            state.answered = True
            op.all_failed(positions, details)
            return
        if isinstance(exc, ServerError):
            state.server_failure = state.server_failure or exc
            retry_500 = False
        elif splittable(exc):
            state.answered = True
        else:
            raise
        if len(positions) == 1:
            op.fail(positions[0], exc.code or f"http_{exc.status}", exc.message)
            return
        middle = len(positions) // 2
        yield from run_chunk(op, positions[:middle], state, retry_500)
        yield from run_chunk(op, positions[middle:], state, retry_500)
        return
    state.answered = True
    op.accept(positions, answer)


def answered(status: int) -> bool:
    """The service worked on the request: a vector, or its verdict on the items."""
    return status == 200 or status in (400, 413, 422)


def check_score(texts: int, pairwise: bool, limits: Limits) -> None:
    """Every image is scored against all the texts in each request: they must fit one."""
    if not pairwise and texts > limits.max_items:
        raise InvalidInput(f"{texts} texts to score against: the service takes at most {limits.max_items} per "
                           "request (MAX_ITEMS); score the images in several calls of fewer labels", code="too_many")


def finish(state: CallState, single_item: bool, answered_before: bool) -> None:
    """Raise the call's 500 when the service answered none of it: it fails on everything, no item is at fault
    (for a call of one item, the request before it counts as an answer)."""
    if state.server_failure is not None and not state.answered and not (single_item and answered_before):
        raise state.server_failure


# -- the calls, as operations -------------------------------------------------------------------------------------

def base_fields(model: str | None, normalize: bool = True, truncate: bool = True) -> dict[str, Any]:
    base: dict[str, Any] = {"normalize": normalize, "encoding_format": "base64"}
    if not truncate:
        base["truncate"] = False
    if model is not None:
        base["model"] = model
    return base


def wire_images(images: Sequence[Any]) -> list[str | ItemError]:
    from clipserve_client.images import to_wire

    return [to_wire(i, image) for i, image in enumerate(images)]


def upsert_items(items: Sequence[dict[str, Any]]) -> list[dict[str, Any] | ItemError]:
    """Items for ``POST /index``: images read like any image input, vectors as lists."""
    from clipserve_client.images import to_wire

    out: list[dict[str, Any] | ItemError] = []
    for i, item in enumerate(items):
        item = dict(item)
        if item.get("image") is not None:
            wire = to_wire(i, item["image"])
            if isinstance(wire, ItemError):
                out.append(wire)
                continue
            item["image"] = wire
        if item.get("vector") is not None:
            item["vector"] = [float(v) for v in item["vector"]]
        out.append(item)
    return out


def search_body(text: str | None, image: Any, vector: Any, id: str | None, top_k: int,
                extra: dict[str, Any]) -> dict[str, Any]:
    from clipserve_client.images import to_wire

    given = [name for name, value in (("text", text), ("image", image), ("vector", vector), ("id", id))
             if value is not None]
    if len(given) != 1:
        raise ValueError(f"search takes exactly one of text, image, vector, id (got {', '.join(given) or 'none'})")
    body: dict[str, Any] = {"top_k": top_k, **{k: v for k, v in extra.items() if v is not None}}
    if text is not None:
        body["text"] = text
    elif image is not None:
        wire = to_wire(0, image)
        if isinstance(wire, ItemError):
            raise InvalidInput(f"image: {wire.code}: {wire.message}", code=wire.code, index=0)
        body["image"] = wire
    elif vector is not None:
        body["vector"] = [float(v) for v in vector]
    else:
        body["id"] = id
    return body


def delete_body(ids: Sequence[str] | None, filter: dict[str, Any] | None) -> dict[str, Any]:
    if (ids is None) == (filter is None):
        raise ValueError("delete takes ids or filter (one of them)")
    return {"ids": list(ids)} if ids is not None else {"filter": filter}


def progress_bar(enabled: bool, total: int, unit: str) -> Any:
    """tqdm when asked for (an optional dependency), else a bar that does nothing."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'clipserve-client[progress]'") from None
    return tqdm(total=total, unit=unit)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass
