"""``AsyncClient``: the same calls as ``Client``, for asyncio code (web backends, many calls at once)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from clipserve_client import _core
from clipserve_client._core import Attempts, CallState, Operation, RetryPolicy, Served
from clipserve_client._sync import DEFAULT_TIMEOUT_S, _json, http_options
from clipserve_client.images import ImageInput
from clipserve_client.results import Embeddings, Hit, MixedEmbeddings, Scores, Written, ZeroShot


class AsyncClient(_core.CallerState):
    """``Client``'s interface with ``await``: ``async with AsyncClient(url) as clip: await clip.embed_text([...])``.
    Chunks of one call run ``concurrency`` at a time on the event loop. See ``Client`` for every argument."""

    def __init__(self, url: str, *, api_key: str | None = None, auth: httpx.Auth | None = None,
                 model: str | None = None, timeout: float = DEFAULT_TIMEOUT_S, connect_timeout: float = 10.0,
                 concurrency: int = 4, retry: RetryPolicy | None = None, headers: dict[str, str] | None = None,
                 on_retry: Callable[[str], None] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, model, concurrency, retry, on_retry)
        self._http = httpx.AsyncClient(**http_options(url, api_key, auth, headers, timeout, connect_timeout,
                                                      self.concurrency), transport=transport)
        self._served_lock = asyncio.Lock()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the service ----------------------------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        return dict(await self._request("GET", "/"))

    async def models(self) -> list[dict[str, Any]]:
        return list((await self._service()).root.get("models") or [])

    async def health(self) -> str:
        response = await self._http.get("/health")
        try:
            return str(response.json()["status"])
        except (ValueError, KeyError, TypeError):
            response.raise_for_status()
            raise

    # -- embeddings -----------------------------------------------------------------------------------------

    async def embed_text(self, texts: Sequence[str], *, model: str | None = None, normalize: bool = True,
                         truncate: bool = True, progress: bool = False, timeout: float | None = None) -> Embeddings:
        op = _core.EmbedOperation("texts", list(texts), _core.base_fields(model or self.model, normalize, truncate))
        await self._run(op, progress, "text", _core.Deadline(timeout))
        return op.result((await self._service()).dim(model or self.model))

    async def embed_image(self, images: Sequence[ImageInput], *, model: str | None = None, normalize: bool = True,
                          progress: bool = False, timeout: float | None = None) -> Embeddings:
        op = _core.EmbedOperation("images", _core.wire_images(images),
                                  _core.base_fields(model or self.model, normalize))
        await self._run(op, progress, "image", _core.Deadline(timeout))
        return op.result((await self._service()).dim(model or self.model))

    async def embed_mixed(self, texts: Sequence[str] = (), images: Sequence[ImageInput] = (), *,
                          model: str | None = None, normalize: bool = True, truncate: bool = True,
                          progress: bool = False, timeout: float | None = None) -> MixedEmbeddings:
        op = _core.MixedOperation(list(texts), _core.wire_images(images),
                                  _core.base_fields(model or self.model, normalize, truncate))
        await self._run(op, progress, "item", _core.Deadline(timeout))
        return op.result((await self._service()).dim(model or self.model))

    # -- scores -----------------------------------------------------------------------------------------------

    async def score(self, texts: Sequence[str], images: Sequence[ImageInput], *, pairwise: bool = False,
                    templates: str | Sequence[str] | None = None, model: str | None = None,
                    progress: bool = False, timeout: float | None = None) -> Scores:
        base: dict[str, Any] = {"model": model or self.model} if (model or self.model) else {}
        if templates is not None:
            base["templates"] = templates if isinstance(templates, str) else list(templates)
        _core.check_score(len(texts), pairwise, (await self._service()).limits)
        op = _core.ScoreOperation(list(texts), _core.wire_images(images), pairwise, base)
        await self._run(op, progress, "image", _core.Deadline(timeout))
        return op.result()

    async def zero_shot(self, images: Sequence[ImageInput], labels: Sequence[str], *,
                        templates: str | Sequence[str] | None = None, model: str | None = None,
                        progress: bool = False, timeout: float | None = None) -> ZeroShot:
        scores = await self.score(list(labels), images, templates=templates, model=model, progress=progress,
                                  timeout=timeout)
        return _core.zero_shot_from(scores, list(labels))

    # -- search and the live index --------------------------------------------------------------------------

    async def search(self, text: str | None = None, *, image: ImageInput | None = None,
                     vector: Sequence[float] | None = None, id: str | None = None, top_k: int = 10,
                     filter: dict[str, Any] | None = None, score_threshold: float | None = None,
                     include_metadata: bool = True, timeout: float | None = None,
                     **extra: Any) -> list[Hit]:
        body = _core.search_body(text, image, vector, id, top_k, {"filter": filter, "score_threshold": score_threshold,
                                                                 "include_metadata": include_metadata, **extra})
        return _core.hits_from(await self._request("POST", "/search", body, deadline=_core.Deadline(timeout)))

    async def upsert(self, items: Sequence[dict[str, Any]], *, progress: bool = False,
               timeout: float | None = None) -> Written:
        op = _core.UpsertOperation(_core.upsert_items(items))
        await self._run(op, progress, "item", _core.Deadline(timeout))
        return op.result()

    async def delete(self, ids: Sequence[str] | None = None, *, filter: dict[str, Any] | None = None,
               timeout: float | None = None) -> int:
        return int((await self._request("POST", "/index/delete", _core.delete_body(ids, filter),
                                     deadline=_core.Deadline(timeout)))["deleted"])

    # -- plumbing ---------------------------------------------------------------------------------------------

    async def _service(self) -> Served:
        async with self._served_lock:
            if self._served is None:
                self._served = Served(await self._request("GET", "/"))
            return self._served

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                       retry_500: bool = True, deadline: _core.Deadline = _core.NO_DEADLINE) -> Any:
        attempts = Attempts(self.retry, retry_500, self.on_retry, deadline)
        what = f"{method} {path}"
        while True:
            await asyncio.sleep(deadline.capped(self._pause.left()))
            deadline.check(what)
            left = deadline.left()
            try:
                response = await self._http.request(method, path, json=body,
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
            await asyncio.sleep(delay)

    async def _run(self, op: Operation, progress: bool, unit: str, deadline: _core.Deadline) -> None:
        sizes = op.sizes()
        groups = _core.chunks(sizes, (await self._service()).limits)
        state, answered_before = CallState(), self._answered_before
        bar = _core.progress_bar(progress, len(sizes), unit)
        gate = asyncio.Semaphore(self.concurrency)

        async def run(positions: list[int]) -> None:
            async with gate:
                await self._drive(_core.run_chunk(op, positions, state), deadline)
            bar.update(len(positions))

        tasks = [asyncio.ensure_future(run(group)) for group in groups]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # the first failure stops the call
                task.cancel()
            raise
        finally:
            bar.close()
        _core.finish(state, len(sizes) == 1, answered_before)

    async def _drive(self, steps: Any, deadline: _core.Deadline) -> None:
        try:
            method, path, body, retry_500 = next(steps)
            while True:
                try:
                    answer = await self._request(method, path, body, retry_500, deadline)
                except _core.ClipserveError as exc:
                    self._answered_before = _core.answered(exc.status or 0)
                    method, path, body, retry_500 = steps.throw(exc)
                else:
                    self._answered_before = True
                    method, path, body, retry_500 = steps.send(answer)
        except StopIteration:
            return
