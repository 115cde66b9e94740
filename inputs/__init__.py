"""Image inputs: IMAGE strings or uploaded bytes -> decoded RGB ``PIL.Image``, with byte/pixel limits and safe URL fetching.

No HTTP framework and no torch here; ``load_images`` takes an optional ``then`` step (the model's
``prepare_image``) so that preprocessing also runs in the loading threads, not on the inference thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence, TypeVar
from urllib.parse import urlsplit

from PIL import Image

from inputs.decode import decode_image, draft_size_for, image_header
from inputs.errors import CODES, FETCH_TIMEOUT, INVALID_IMAGE, ImageError
from inputs.fetch import FetchLimits, fetch_url
from inputs.source import ImageSource, parse_image_string

__all__ = ["CODES", "ImageError", "ImageLimits", "FetchLimits", "load_image", "load_images", "fetch_images",
           "decode_image",
           "draft_size_for", "fetch_url", "parse_image_string", "ImageSource"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# Extra time, past the fetch deadline, that decoding and preprocessing may take before we stop waiting.
_DECODE_GRACE_S = 5.0


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    fetch: FetchLimits = FetchLimits()
    concurrency: int = 8
    # Decodes + preprocessings at once across every request using these limits. A 40 MP image takes about
    # 300 MB while it is decoded and resized: unbounded, a few requests of large images exhaust the memory.
    decode_concurrency: int = 2
    decoders: "DecodeWorkers" = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoders", DecodeWorkers(self.decode_concurrency))

    @classmethod
    def from_settings(cls, settings) -> "ImageLimits":  # noqa: ANN001 - infra.settings.Settings
        return cls(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                   concurrency=settings.fetch_concurrency, decode_concurrency=settings.decode_concurrency,
                   fetch=FetchLimits(connect_timeout_s=settings.fetch_connect_timeout_s,
                                     total_timeout_s=settings.fetch_timeout_s,
                                     max_redirects=settings.fetch_max_redirects,
                                     max_bytes=settings.max_image_bytes,
                                     allow_private=settings.allow_private_urls))


class DecodeWorkers:
    """The threads that decode and preprocess images: at most ``size`` at once in the process, at the lowest
    CPU priority.

    Why threads of their own: the bound keeps memory in check (see ImageLimits), and the priority keeps
    decoding from slowing the model down. torch's intra-op threads meet at a barrier after every op, so a
    decode that takes a core from one of them stalls the whole forward pass while the other core idles
    (measured on the 2-core VM: 30 decodes/s beside a batch-4 bf16 loop cut it from about 50 to 21-35
    images/s). At nice 19 the kernel runs decodes in the model's gaps instead (33-43 images/s with the
    same 30 decodes/s); they still get their share of a busy CPU, so they cannot starve.
    """

    def __init__(self, size: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=size, thread_name_prefix="clipserve-decode",
                                                           initializer=_lowest_cpu_priority)
        self._cpu_lock = threading.Lock()
        self.cpu_seconds = 0.0  # CPU the decode threads spent (the benchmark's per-image accounting)

    def run(self, fn: Callable[..., T], *args: object, timeout: float | None = None) -> T:
        """``fn(*args)`` on a decode thread (in the caller's context: its trace span is the parent); raises
        TimeoutError if it has not finished in ``timeout`` seconds."""
        return self._pool.submit(contextvars.copy_context().run, self._timed, fn, *args).result(timeout)

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        started = time.thread_time()
        try:
            with _span("clipserve.image.decode"):
                return fn(*args)
        finally:
            spent = time.thread_time() - started
            with self._cpu_lock:
                self.cpu_seconds += spent


def _lowest_cpu_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
    except (AttributeError, OSError):
        pass  # not Linux, or not permitted: decode at normal priority


def load_image(source: str | bytes, limits: ImageLimits, draft_size: int | None = None) -> Image.Image:
    """One IMAGE string (URL, data URI, base64) or raw uploaded bytes -> RGB image. Raises ImageError.
    ``draft_size``: see ``decode_image``."""
    data = load_bytes(source, limits)
    return limits.decoders.run(_decode, data, limits.max_pixels, draft_size, None, None)


def load_bytes(source: str | bytes, limits: ImageLimits) -> bytes:
    """The encoded image: uploaded bytes, inline base64, or downloaded from its URL. Raises ImageError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > limits.max_bytes:
            raise ImageError("too_large", f"the image is larger than {limits.max_bytes} bytes")
        return data
    parsed: ImageSource = parse_image_string(source, max_bytes=limits.max_bytes)
    if parsed.url is None:
        return parsed.data
    with _span("clipserve.image.fetch", **{"server.address": urlsplit(parsed.url).hostname or ""}) as span:
        try:
            return fetch_url(parsed.url, limits.fetch)
        except ImageError as exc:
            if span is not None:
                span.set_attribute("clipserve.image_error", exc.code)
            raise


# Given an image's bytes, format and mode (its header checked), a model input made from the bytes themselves, or
# None to have them decoded here: the GPU's JPEG decoder (models/device_jpeg.py).
TakeEncoded = Callable[[bytes, str, str], T | None]


def load_images(sources: Sequence[str | bytes], limits: ImageLimits,
                then: Callable[[Image.Image], T] | None = None,
                timeout_s: float | None = None, draft_size: int | None = None,
                encoded: TakeEncoded | None = None) -> list[T | Image.Image | ImageError]:
    """Load every source (URLs concurrently, at most ``limits.concurrency`` at once); one result per source.

    A failure is returned in place as an ImageError, so the caller keeps the indices aligned.
    The whole step is bounded (``timeout_s``, by default enough for every wave of fetches plus a
    grace period): whatever is not done by then is reported as fetch_timeout, so a worker thread
    stuck in DNS cannot hold the request. ``draft_size``: see ``decode_image``. ``encoded``: see TakeEncoded.
    """
    timeout_s = _bounded(sources, limits, timeout_s)

    def one(source: str | bytes) -> T | Image.Image | ImageError:
        data = load_bytes(source, limits)  # fetching is not memory-heavy: it runs outside the decode threads
        return limits.decoders.run(_decode, data, limits.max_pixels, draft_size, then, encoded, timeout=timeout_s)

    return _each(sources, one, limits, timeout_s)


def fetch_images(sources: Sequence[str | bytes], limits: ImageLimits,
                 timeout_s: float | None = None) -> list[bytes | ImageError]:
    """The encoded bytes of every source (uploads as they are, base64 decoded, URLs fetched concurrently), not
    decoded: what a cache keyed by the image's content looks up before any decoding."""
    return _each(sources, lambda source: load_bytes(source, limits), limits, _bounded(sources, limits, timeout_s))


def _bounded(sources: Sequence[str | bytes], limits: ImageLimits, timeout_s: float | None) -> float:
    if timeout_s is not None:
        return timeout_s
    workers = max(1, min(limits.concurrency, len(sources)))
    return -(-len(sources) // workers) * limits.fetch.total_timeout_s + _DECODE_GRACE_S


def _each(sources: Sequence[str | bytes], fn: Callable[[str | bytes], T], limits: ImageLimits,
          timeout_s: float) -> list[T | ImageError]:
    """``fn`` on every source, on up to ``limits.concurrency`` threads when any is a URL, within ``timeout_s``."""

    def one(source: str | bytes) -> T | ImageError:
        try:
            return fn(source)
        except ImageError as exc:
            return exc
        except TimeoutError:
            return ImageError(FETCH_TIMEOUT, "the image did not load in time")

    if len(sources) <= 1 and not any(isinstance(s, str) and "://" in s[:16] for s in sources):
        return [one(s) for s in sources]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(limits.concurrency, len(sources))),
                                                 thread_name_prefix="clipserve-fetch")
    try:
        futures = [pool.submit(contextvars.copy_context().run, one, s) for s in sources]
        concurrent.futures.wait(futures, timeout=timeout_s)
        return [f.result() if f.done() else ImageError(FETCH_TIMEOUT, "the image did not load in time")
                for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _no_span(name: str, **attributes: Any) -> ContextManager[Any]:
    return contextlib.nullcontext()


_span: Callable[..., ContextManager[Any]] = _no_span


def set_span_factory(factory: Callable[..., ContextManager[Any]] | None) -> None:
    """How image fetches and decodes open spans (infra/tracing.py's when tracing is on; none by default).
    Attributes are the URL's host only: never its path, query or the image."""
    global _span
    _span = factory or _no_span


def _decode(data: bytes, max_pixels: int, draft_size: int | None, then: Callable[[Image.Image], T] | None,
            encoded: TakeEncoded | None) -> T | Image.Image | ImageError:
    if encoded is not None:
        taken = encoded(data, *image_header(data, max_pixels=max_pixels))
        if taken is not None:
            return taken
    image = decode_image(data, max_pixels=max_pixels, draft_size=draft_size)
    return image if then is None else _prepare(image, then)


def _prepare(image: Image.Image, then: Callable[[Image.Image], T]) -> T | ImageError:
    try:
        return then(image)
    except Exception:  # noqa: BLE001 - a decoded image the model cannot preprocess is still the input's fault
        log.warning("preprocessing a decoded %sx%s image failed", *image.size, exc_info=True)
        return ImageError(INVALID_IMAGE, "the image could not be preprocessed")
