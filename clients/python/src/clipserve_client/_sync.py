"""``Client``: the service from synchronous code (scripts, notebooks, batch jobs)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from clipserve_client import _core
from clipserve_client._core import Attempts, CallState, Operation, RetryPolicy, Served
from clipserve_client.auth import BearerToken
from clipserve_client.images import ImageInput
from clipserve_client.results import Embeddings, Hit, MixedEmbeddings, Scores, Written, ZeroShot

DEFAULT_TIMEOUT_S = 120.0


def http_options(url: str, api_key: str | None, auth: httpx.Auth | None, headers: dict[str, str] | None,
                 timeout: float, connect_timeout: float, concurrency: int) -> dict[str, Any]:
    """What both clients give httpx: the base URL, credentials, timeouts and a pool sized to the concurrency."""
    if api_key is not None and auth is not None:
        raise ValueError("api_key and auth both set the Authorization header; give one")
    return {"base_url": url.rstrip("/"), "headers": headers or {},
            "auth": auth if auth is not None else (BearerToken(api_key) if api_key else None),
            "timeout": httpx.Timeout(timeout, connect=connect_timeout),
            "limits": httpx.Limits(max_connections=max(concurrency, 1) * 2, max_keepalive_connections=concurrency)}


class Client(_core.CallerState):
    """A clipserve deployment, called over HTTPS. Thread-safe; use it as a context manager or ``close()`` it.

    ``Client("https://clip.example.com", api_key=...)``. Every call takes lists of any length: they are cut into
    requests within the service's limits (``GET /``, read once), sent ``concurrency`` at a time, and put back in
    order. 429/5xx and dropped connections are retried (``retry``); one bad item comes back as that item's error.
    ``model``: the served model every call uses unless it names another (None: the deployment's default).
    ``on_retry(reason)`` is told each retry ("HTTP 503", "ConnectError", ...). ``transport``: an httpx transport
    (the in-process service uses one; tests may too).
    """

    def __init__(self, url: str, *, api_key: str | None = None, auth: httpx.Auth | None = None,
                 model: str | None = None, timeout: float = DEFAULT_TIMEOUT_S, connect_timeout: float = 10.0,
                 concurrency: int = 4, retry: RetryPolicy | None = None, headers: dict[str, str] | None = None,
                 on_retry: Callable[[str], None] | None = None, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url, model, concurrency, retry, on_retry)
        self._http = httpx.Client(**http_options(url, api_key, auth, headers, timeout, connect_timeout,
                                                 self.concurrency), transport=transport)
        self._served_lock = threading.Lock()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the service ----------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``GET /``: the default model, every served model, the limits, the version."""
        return dict(self._request("GET", "/"))

    def models(self) -> list[dict[str, Any]]:
        """The served models: id, state, aliases, dim, context length, image size, license, score kind."""
        return list(self._service().root.get("models") or [])

    def health(self) -> str:
        """``ok``, ``loading``, ``failed`` or ``unhealthy`` (no exception for the 503 of a loading model)."""
        response = self._http.get("/health")
        try:
            return str(response.json()["status"])
        except (ValueError, KeyError, TypeError):
            response.raise_for_status()
            raise

    # -- embeddings -----------------------------------------------------------------------------------------

    def embed_text(self, texts: Sequence[str], *, model: str | None = None, normalize: bool = True,
                   truncate: bool = True, progress: bool = False, timeout: float | None = None) -> Embeddings:
        """One float32 row per text, in order. ``truncate=False``: a text over the context is that item's error."""
        op = _core.EmbedOperation("texts", list(texts), _core.base_fields(model or self.model, normalize, truncate))
        self._run(op, progress, "text", _core.Deadline(timeout))
        return op.result(self._service().dim(model or self.model))

    def embed_image(self, images: Sequence[ImageInput], *, model: str | None = None, normalize: bool = True,
                    progress: bool = False, timeout: float | None = None) -> Embeddings:
        """One row per image: paths, ``Path``, bytes, file objects, PIL images, http(s) URLs, data URIs, mixed.
        An image that fails (missing, corrupt, unreachable) is NaN with its error; the others succeed."""
        op = _core.EmbedOperation("images", _core.wire_images(images),
                                  _core.base_fields(model or self.model, normalize))
        self._run(op, progress, "image", _core.Deadline(timeout))
        return op.result(self._service().dim(model or self.model))

    def embed_mixed(self, texts: Sequence[str] = (), images: Sequence[ImageInput] = (), *, model: str | None = None,
                    normalize: bool = True, truncate: bool = True, progress: bool = False,
                    timeout: float | None = None) -> MixedEmbeddings:
        """Texts and images by the same model (``/embed/mixed``), comparable by cosine."""
        op = _core.MixedOperation(list(texts), _core.wire_images(images),
                                  _core.base_fields(model or self.model, normalize, truncate))
        self._run(op, progress, "item", _core.Deadline(timeout))
        return op.result(self._service().dim(model or self.model))

    # -- scores -----------------------------------------------------------------------------------------------

    def score(self, texts: Sequence[str], images: Sequence[ImageInput], *, pairwise: bool = False,
              templates: str | Sequence[str] | None = None, model: str | None = None,
              progress: bool = False, timeout: float | None = None) -> Scores:
        """Every image against every text (rows: images), or ``pairwise`` images[i] against texts[i]."""
        base: dict[str, Any] = {"model": model or self.model} if (model or self.model) else {}
        if templates is not None:
            base["templates"] = templates if isinstance(templates, str) else list(templates)
        _core.check_score(len(texts), pairwise, self._service().limits)
        op = _core.ScoreOperation(list(texts), _core.wire_images(images), pairwise, base)
        self._run(op, progress, "image", _core.Deadline(timeout))
        return op.result()

    def zero_shot(self, images: Sequence[ImageInput], labels: Sequence[str], *,
                  templates: str | Sequence[str] | None = None, model: str | None = None,
                  progress: bool = False, timeout: float | None = None) -> ZeroShot:
        """Each image's probabilities over ``labels`` and its best label. ``templates``: prompts such as
        ``"a photo of a {}."`` or a named set (``openai_imagenet``), averaged per label by the service."""
        scores = self.score(list(labels), images, templates=templates, model=model, progress=progress,
                                  timeout=timeout)
        return _core.zero_shot_from(scores, list(labels))

    # -- search and the live index --------------------------------------------------------------------------

    def search(self, text: str | None = None, *, image: ImageInput | None = None, vector: Sequence[float] | None = None,
               id: str | None = None, top_k: int = 10, filter: dict[str, Any] | None = None,
               score_threshold: float | None = None, include_metadata: bool = True, timeout: float | None = None,
               **extra: Any) -> list[Hit]:
        """The indexed items nearest to one query (a text, an image, a vector or an indexed item's id)."""
        body = _core.search_body(text, image, vector, id, top_k, {"filter": filter, "score_threshold": score_threshold,
                                                                 "include_metadata": include_metadata, **extra})
        return _core.hits_from(self._request("POST", "/search", body, deadline=_core.Deadline(timeout)))

    def upsert(self, items: Sequence[dict[str, Any]], *, progress: bool = False,
               timeout: float | None = None) -> Written:
        """Write items (``{"id", "text" | "image" | "vector", "metadata"}``) to the live (Qdrant) index; an id sent
        again replaces its item. Items not written come back as errors at their index."""
        op = _core.UpsertOperation(_core.upsert_items(items))
        self._run(op, progress, "item", _core.Deadline(timeout))
        return op.result()

    def delete(self, ids: Sequence[str] | None = None, *, filter: dict[str, Any] | None = None,
               timeout: float | None = None) -> int:
        """Delete items by id or by filter; returns how many existed."""
        return int(self._request("POST", "/index/delete", _core.delete_body(ids, filter),
                                     deadline=_core.Deadline(timeout))["deleted"])

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _service(self) -> Served:
        with self._served_lock:
            if self._served is None:
                self._served = Served(self._request("GET", "/"))
            return self._served

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, retry_500: bool = True,
                 deadline: _core.Deadline = _core.NO_DEADLINE) -> Any:
        attempts = Attempts(self.retry, retry_500, self.on_retry, deadline)
        what = f"{method} {path}"
        while True:
            time.sleep(deadline.capped(self._pause.left()))
            deadline.check(what)
            left = deadline.left()
            try:
                response = self._http.request(method, path, json=body,
                                                  timeout=httpx.USE_CLIENT_DEFAULT if left is None else left)
            except httpx.TransportError as exc:
                delay = attempts.transport_error(exc, what)
            else:
                outcome = attempts.answered(response.status_code, _json(response), response.text,
                                            response.headers.get("Retry-After"), what)
                if isinstance(outcome, dict):
                    return outcome
                delay = outcome
                self._pause.hold(attempts.retry_after)
            time.sleep(delay)

    def _run(self, op: Operation, progress: bool, unit: str, deadline: _core.Deadline) -> None:
        sizes = op.sizes()
        groups = _core.chunks(sizes, self._service().limits)
        state, answered_before = CallState(), self._answered_before
        bar = _core.progress_bar(progress, len(sizes), unit)

        def run(positions: list[int]) -> None:
            self._drive(_core.run_chunk(op, positions, state), deadline)
            bar.update(len(positions))

        try:
            if len(groups) <= 1 or self.concurrency == 1:
                for group in groups:
                    run(group)
            else:
                with concurrent.futures.ThreadPoolExecutor(min(self.concurrency, len(groups))) as pool:
                    futures = [pool.submit(run, group) for group in groups]
                    done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
                    for future in futures:  # the first failure stops the call; what is queued is dropped
                        if future.done() and future.exception() is not None:
                            for other in futures:
                                other.cancel()
                            raise future.exception()  # type: ignore[misc]
        finally:
            bar.close()
        _core.finish(state, len(sizes) == 1, answered_before)

    def _drive(self, steps: Any, deadline: _core.Deadline) -> None:
        try:
            method, path, body, retry_500 = next(steps)
            while True:
                try:
                    answer = self._request(method, path, body, retry_500, deadline)
                except _core.ClipserveError as exc:
                    self._answered_before = _core.answered(exc.status or 0)
                    method, path, body, retry_500 = steps.throw(exc)
                else:
                    self._answered_before = True
                    method, path, body, retry_500 = steps.send(answer)
        except StopIteration:
            return


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
