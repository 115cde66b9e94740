"""The service every protocol speaks to: embed texts and images, score them, search and write the index.

One object, below every view and free of routing: the native API, the OpenAI-compatible routes,
search and whatever protocol comes next differ only in the shapes they read and write, so what they
ask of the model and the index (limits, deadlines, per-image errors, the batching engine, the
backend) is decided here once. A view hands it validated values and a ``Deadline``; it hands back
numpy arrays and plain records, and raises ``handler.errors.ApiError`` for the view's error shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import orjson

from engine import EmbeddingEngine, ModelState, TextResult, TextsTooLong, stages
from engine.models import ModelSet
from handler import observability, scoring
from handler.errors import (AllImagesFailed, AllItemsFailed, ImageFailed, IndexNotConfigured, InvalidRequest,
                            ThumbnailNotFound, Timeout)
from handler.schemas import RequestModels, build_request_models
from infra import tracing
from infra.settings import Settings
from inputs import ImageError, ImageLimits, draft_size_for, fetch_images, load_images
from models.prompts import label_vectors
from search.filters import parse_filter
from search.query import Hit, IndexInfo, Item, Query, SearchBackend
from search.service import SearchService, State

SERVICE = "clipserve"
NOT_CONFIGURED = ("this service has no search index: build one with `clipserve-batch index build --input FILE "
                  "--output DIR --local`, then start the service with INDEX_DIR=DIR (or QDRANT_URL=... for a "
                  "Qdrant collection); see the README's search section")


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered, and how to tell that its client has gone (None: cannot be told)."""

    at: float
    cancelled: Callable[[], bool] | None = None

    def left(self) -> float:
        """Seconds left; 504 when none are."""
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise Timeout("the request did not finish in time")
        return remaining


@dataclass(frozen=True)
class ImageBatch:
    """Images embedded with per-image failures: vectors of the good ones, their positions, the errors."""

    vectors: np.ndarray
    ok: list[int]
    errors: list[dict[str, Any]]
    count: int

    def placed(self, rows: Sequence[Any]) -> list:
        """``rows`` (one per good image) at their positions, None where an image failed."""
        return scoring.place(rows, self.ok, self.count)


@dataclass(frozen=True)
class Scores:
    pairwise: bool
    clip_score: list
    cosine: list
    probs: list | None
    probs_kind: str  # "softmax" (over the texts: CLIP) or "sigmoid" (per pair: SigLIP)
    errors: list[dict[str, Any]]
    truncated: list[int]


@dataclass(frozen=True)
class QuerySpec:
    """A search request as the service needs it: the query (one of four kinds) and its options."""

    kind: str                     # "text" | "image" | "vector" | "id"
    value: Any                    # the text, the image input, the vector (list of floats) or the id
    top_k: int
    score_threshold: float | None = None
    filter: dict[str, Any] | None = None
    include_metadata: bool = True
    include_vectors: bool = False
    model: str | None = None      # must be the index's model if given (None: the index's)


class ClipService:
    """What the views call, with the settings, the models and the search backend they share.

    Every call that embeds takes ``model`` (a served variant, an alias, or None for the default) and holds that
    model for its duration (``ModelSet.use``: loaded, not evicted meanwhile)."""

    def __init__(self, settings: Settings, engine: ModelSet | EmbeddingEngine,
                 search: SearchService | None = None) -> None:
        self.settings = settings
        self.engine = engine if isinstance(engine, ModelSet) else ModelSet.around(engine, settings.default_model)
        self.search = search
        self.ingestor: Any = None  # ingest.Ingestor when INGEST_BUCKETS is set (its counts are in /stats)
        self.models: RequestModels = build_request_models(settings.max_items, settings.max_text_chars,
                                                          settings.search_max_top_k, settings.openai_max_inputs)
        self.image_limits = ImageLimits.from_settings(settings)
        stages.clock.count_elsewhere("images", lambda: self.image_limits.decoders.cpu_seconds)

    # lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading the model and opening the search index (once per process, in the background)."""
        self.engine.start()
        if self.search is not None:
            self.search.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        self.engine.shutdown(timeout)

    def deadline(self, cancelled: Callable[[], bool] | None = None) -> Deadline:
        return Deadline(time.monotonic() + self.settings.request_timeout_s, cancelled)

    # state -----------------------------------------------------------------------------------------

    def health_status(self) -> tuple[str, str | None]:
        """("ok" | "loading" | "failed" | "unhealthy", reason). A wedged or dead inference loop is unhealthy;
        an embedded search index is part of health (it loads beside the model), a search server is not."""
        search = self.search
        if search is not None and search.part_of_health and search.state is not State.READY:
            if search.state is State.FAILED:
                return "failed", f"the search index failed to open: {search.reason}"
            if self.engine.state is not ModelState.FAILED:
                return "loading", None
        state = self.engine.state
        if state is ModelState.FAILED:
            return "failed", "the model failed to load; see the service logs"
        if not self.engine.booted:  # the default model's first load; later ones (after an eviction) are on demand
            return "loading", None
        if getattr(self.engine, "device_error", None):
            return "unhealthy", f"the GPU failed: {self.engine.device_error}"
        loop = self.engine.loop_health()
        if not loop.running:
            return "unhealthy", "the inference loop is not running"
        if loop.stalled:
            if loop.busy_for_s >= loop.oldest_wait_s:
                return "unhealthy", f"a model call has been running for {loop.busy_for_s:.0f} s"
            return "unhealthy", f"queued work has waited {loop.oldest_wait_s:.0f} s without being picked up"
        return "ok", None

    def model_info(self) -> dict[str, Any] | None:
        """The default model's facts, or None before its first load."""
        info = self.engine.engine().known_info
        return info.as_dict() if info is not None else None

    def served_models(self) -> list[dict[str, Any]]:
        """Every served model, default first: name, state, aliases, and its facts once it has loaded (GET /)."""
        out = []
        for m in self.engine.describe():
            info = m["info"].as_dict() if m["info"] is not None else {}
            out.append({"id": m["name"], "default": m["default"], "state": m["state"], "aliases": m["aliases"],
                        **{k: info.get(k) for k in ("architecture", "dim", "context_length", "image_size",
                                                    "license", "score_kind", "precision", "runtime", "weights")}})
        return out

    def limits(self) -> dict[str, Any]:
        s = self.settings
        return {"max_items": s.max_items, "max_text_chars": s.max_text_chars, "max_body_bytes": s.max_body_bytes,
                "max_image_bytes": s.max_image_bytes, "max_image_pixels": s.max_image_pixels,
                "fetch_timeout_s": s.fetch_timeout_s, "fetch_max_redirects": s.fetch_max_redirects,
                "request_timeout_s": s.request_timeout_s, "search_max_top_k": s.search_max_top_k}

    def stats(self) -> dict[str, Any]:
        """The cache, queue and index parts of GET /stats."""
        counts = self.engine.cache_stats.snapshot()
        cache: dict[str, Any] = {}
        for level, kind in sorted({(lv, k) for lv, k, _ in counts}):
            hits, misses = counts.get((level, kind, "hit"), 0), counts.get((level, kind, "miss"), 0)
            cache.setdefault(level, {})[kind] = {"hits": hits, "misses": misses,
                                                 "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None}
        shared = self.engine.vectors.shared
        redis = {"state": shared.state, **({"failures": shared.failures, "last_error": shared.last_error}
                                           if hasattr(shared, "failures") else {})}
        index = None
        if self.search is not None:
            described = self.search.describe()
            index = {"state": described["state"], **described.get("index", {}),
                     **({"backend": described["backend"]} if "backend" in described else {})}
        loop = self.engine.loop_health() if self.engine.booted else None
        queue = None if loop is None else {"depth": loop.queue_depth, "oldest_wait_s": round(loop.oldest_wait_s, 3),
                                           "expected_wait_s": round(loop.expected_wait_s, 3),
                                           "model_calls": loop.batches_done, "failed_calls": loop.batches_failed}
        models = {m["name"]: {k: v for k, v in m.items() if k not in ("name", "info")} for m in self.engine.describe()}
        return {"cache": cache, "redis": redis, "index": index, "queue": queue, "models": models,
                "memory": self.engine.memory(), "ingest": None if self.ingestor is None else self.ingestor.stats()}

    def model_fields(self, model: str | None = None) -> dict[str, Any]:
        """The model a response's vectors came from, as every native answer names it."""
        info = self.engine.info_of(model)
        observability.annotate(model=info.variant)
        return {"model": {"variant": info.variant, "architecture": info.architecture}, "dim": info.dim}

    def model_name(self, model: str | None) -> str:
        """The served variant ``model`` names (400 unknown_model if none)."""
        return self.engine.resolve(model)

    @contextlib.contextmanager
    def using(self, model: str | None, deadline: Deadline) -> Iterator[EmbeddingEngine]:
        """The model's engine, loaded and held for the block (ModelSet.use); the request's log line names it."""
        name = self.engine.resolve(model)
        observability.annotate(model=name)
        with self.engine.use(name, deadline.left()) as engine:
            yield engine

    # embeddings ------------------------------------------------------------------------------------

    def embed_texts(self, texts: list[str], *, normalize: bool, deadline: Deadline, truncate: bool = True,
                    field: str = "texts", model: str | None = None) -> TextResult:
        """Embed texts through the engine; over-long texts with ``truncate=False`` are a 400 naming them."""
        observability.record_items(texts=len(texts))
        try:
            with self.using(model, deadline) as engine:
                return engine.embed_texts(texts, normalize=normalize, timeout=deadline.left(), truncate=truncate,
                                          cancelled=deadline.cancelled)
        except TextsTooLong as exc:
            names = ", ".join(f"{field}[{i}]" for i in exc.indices[:10]) + (", ..." if len(exc.indices) > 10 else "")
            raise InvalidRequest(f"{names}: longer than the model's context of {exc.context_length} tokens "
                                 "(send truncate=true to cut them)", param=f"{field}[{exc.indices[0]}]") from None

    def embed_images(self, images: list, *, normalize: bool, deadline: Deadline,
                     all_fail_ok: bool = False, model: str | None = None) -> ImageBatch:
        """Load, preprocess and embed, reporting failed images by position; 422 when none could be used
        (unless ``all_fail_ok``: a request that has texts too still has an answer)."""
        vectors, ok, errors = self.image_vectors(images, normalize=normalize, deadline=deadline, model=model)
        if not ok and not all_fail_ok:
            raise AllImagesFailed(f"none of the {len(images)} images could be used", details=errors)
        return ImageBatch(vectors, ok, errors, len(images))

    def embed_every_image(self, images: list, *, deadline: Deadline, label: Callable[[int], str],
                          model: str | None = None) -> np.ndarray:
        """Unit vectors of all ``images``, for answers that have no room for partial results: one failed image
        fails the request (400 image_failed), naming up to five by ``label(position)``."""
        vectors, _, errors = self.image_vectors(images, normalize=True, deadline=deadline, model=model)
        if errors:
            listed = "; ".join(f"{label(e['index'])}: {e['code']}: {e['message']}" for e in errors[:5])
            raise ImageFailed(listed + (f"; and {len(errors) - 5} more" if len(errors) > 5 else ""),
                              param=label(errors[0]["index"]))
        return vectors

    def image_vectors(self, images: list, *, normalize: bool, deadline: Deadline,
                      model: str | None = None) -> tuple[np.ndarray, list[int], list[dict[str, Any]]]:
        """(vectors of the images that could be used, their positions, per-image errors). Fetched, decoded and
        preprocessed in request threads; with a shared cache, images whose bytes it holds skip all but fetching."""
        with self.using(model, deadline) as engine:  # 503 before fetching anything while it loads
            return self._image_vectors(engine, images, normalize, deadline)

    def _image_vectors(self, engine: EmbeddingEngine, images: list, normalize: bool,
                       deadline: Deadline) -> tuple[np.ndarray, list[int], list[dict[str, Any]]]:
        dim = engine.info.dim
        vectors: dict[int, np.ndarray] = {}
        keys: dict[int, bytes] = {}
        if engine.vectors.enabled:
            loaded = self._load_uncached(engine, images, normalize, deadline, vectors, keys)
        else:
            loaded = self._load(engine, images, deadline)
        ok = [i for i, item in enumerate(loaded) if not isinstance(item, ImageError)]
        errors = [{"index": i, "code": item.code, "message": item.message}
                  for i, item in enumerate(loaded) if isinstance(item, ImageError)]
        observability.record_items(images=len(images))
        observability.record_image_errors(e["code"] for e in errors)
        todo = [i for i in ok if i not in vectors]
        if todo:
            encoded = engine.embed_images([loaded[i] for i in todo], normalize=normalize, timeout=deadline.left(),
                                          cancelled=deadline.cancelled)
            vectors.update(zip(todo, encoded))
            if keys:
                engine.store_images([keys[i] for i in todo], encoded)
        return (np.stack([vectors[i] for i in ok]).astype(np.float32, copy=False) if ok
                else np.zeros((0, dim), np.float32)), ok, errors

    def _load(self, engine: EmbeddingEngine, images: list, deadline: Deadline) -> list[Any]:
        """Model inputs (or ImageError) for ``images``: fetched, decoded and preprocessed in request threads."""
        info = engine.info
        with engine.preparing():
            return load_images(images, self.image_limits, then=engine.prepare_image, timeout_s=deadline.left(),
                               draft_size=draft_size_for(info.image_size, self.settings.exact_image_decode),
                               encoded=engine.prepare_encoded_image if info.image_decode == "gpu" else None)

    def _load_uncached(self, engine: EmbeddingEngine, images: list, normalize: bool, deadline: Deadline,
                       vectors: dict[int, np.ndarray], keys: dict[int, bytes]) -> list[Any]:
        """The bytes of every image first, one shared-cache lookup for all of them, then decoding only what it did
        not hold: fills ``vectors`` with the hits and ``keys`` with the misses' keys; returns per position an
        ImageError, a model input, or None for a hit."""
        with engine.preparing():
            loaded: list[Any] = fetch_images(images, self.image_limits, timeout_s=deadline.left())
        present = [i for i, data in enumerate(loaded) if not isinstance(data, ImageError)]
        found_keys, found = engine.cached_images([loaded[i] for i in present], normalize)
        for i, key, vector in zip(present, found_keys, found):
            if vector is None:
                keys[i] = key
            else:
                vectors[i] = vector
        misses = sorted(keys)
        for i, item in zip(misses, self._load(engine, [loaded[i] for i in misses], deadline) if misses else []):
            loaded[i] = item
        for i in vectors:
            loaded[i] = None
        return loaded

    # scores ----------------------------------------------------------------------------------------

    def score(self, *, texts: list[str] | None, text_vectors: list[list[float]] | None, images: list | None,
              image_vectors: list[list[float]] | None, pairwise: bool, truncate: bool, deadline: Deadline,
              model: str | None = None, templates: list[str] | None = None) -> Scores:
        """Every image against every text (or images[i] against texts[i]); either side may be given as vectors.
        ``templates``: the texts are labels, each embedded as the normalized mean over the templates (zero-shot)."""
        with self.using(model, deadline) as engine:
            info = engine.info
            if images is not None:
                embedded = self.embed_images(images, normalize=True, deadline=deadline, model=info.variant)
            else:
                given = given_vectors(image_vectors, info.dim, "image_embeddings")
                embedded = ImageBatch(given, list(range(len(given))), [], len(given))
            truncated: list[int] = []
            if texts is not None and templates:
                text_rows, truncated = label_vectors(texts, templates, lambda prompts: self.embed_texts(
                    prompts, normalize=True, deadline=deadline, truncate=truncate, model=info.variant))
            elif texts is not None:
                result = self.embed_texts(texts, normalize=True, deadline=deadline, truncate=truncate,
                                          model=info.variant)
                text_rows, truncated = result.embeddings, result.truncated
            else:
                text_rows = given_vectors(text_vectors, info.dim, "text_embeddings")
        sigmoid = info.score_kind == "sigmoid"
        if pairwise:
            cosine = scoring.cosine_pairwise(embedded.vectors, text_rows[embedded.ok])
        else:
            cosine = scoring.cosine_matrix(embedded.vectors, text_rows)
        # A softmax needs the other labels: pairwise there is none. A sigmoid scores each pair on its own.
        probs = None if pairwise and not sigmoid else embedded.placed(scoring.probabilities(cosine, info).tolist())
        return Scores(pairwise=pairwise, clip_score=embedded.placed(scoring.clip_score(cosine).tolist()),
                      cosine=embedded.placed(cosine.tolist()), probs=probs, probs_kind=info.score_kind,
                      errors=embedded.errors, truncated=truncated)

    # search ----------------------------------------------------------------------------------------

    def backend(self) -> SearchBackend:
        """The open search backend: 404 when none is configured, 503 while it opens or cannot be reached."""
        if self.search is None:
            raise IndexNotConfigured(NOT_CONFIGURED)
        return self.search.backend

    def thumbnail(self, item_id: str) -> tuple[bytes, str]:
        """An item's stored thumbnail (JPEG) and the version of the index it comes from."""
        backend = self.backend()
        data = backend.thumbnail(item_id)  # ItemNotFound for an unknown id
        info = backend.info()
        if data is None:
            raise ThumbnailNotFound(
                "this item has no thumbnail (its image was a URL, or could not be read at build time)" if
                info.thumbnails else f"index {info.name} {info.version} has no thumbnails: build it with "
                "`clipserve-batch index build --thumbnails`", param="id")
        return data, info.version

    def index_model(self, backend: SearchBackend, asked: str | None) -> str:
        """The served variant the index was built with: queries and writes are embedded with it. A request that
        names another model is a 400 naming the index's."""
        built_with = (backend.info().model or {}).get("variant") or self.engine.default
        if asked is not None and self.engine.resolve(asked) != built_with:
            raise InvalidRequest(f"model: this index was built with {built_with!r}, so it is searched and written with "
                                 f"that model; send model={built_with!r} or leave model out", param="model")
        return built_with

    def find(self, spec: QuerySpec, deadline: Deadline) -> tuple[list[Hit], dict[str, Any]]:
        """The nearest items to the query, best first, and the index that answered (its public description).
        With a shared cache the answer is kept for SEARCH_CACHE_TTL_S under a key of the query's content, the
        options, the model and the index (and a Qdrant collection's write generation)."""
        backend = self.backend()
        spec = dataclasses.replace(spec, model=self.index_model(backend, spec.model))
        if spec.kind == "image":  # the bytes once: the cache key is their digest, and a miss embeds them
            fetched = fetch_images([spec.value], self.image_limits, timeout_s=deadline.left())[0]
            if not isinstance(fetched, ImageError):
                spec = dataclasses.replace(spec, value=fetched)
        vectors = self.engine.engine(spec.model).vectors
        key = self._search_key(spec, backend, vectors)
        cached = vectors.get_answer(key) if key is not None else None
        if cached is not None:
            hits = [Hit(h["id"], h["score"], h.get("metadata"), None if h.get("vector") is None
                        else np.asarray(h["vector"], np.float32)) for h in cached["hits"]]
            observability.annotate(search_cache="hit")
            return hits, cached["index"]
        vector, exclude = self._query_vector(spec, backend, deadline)
        query = Query(vector=vector, top_k=spec.top_k, score_threshold=spec.score_threshold,
                      filter=None if spec.filter is None else parse_filter(spec.filter, backend.columns()),
                      include_metadata=spec.include_metadata, include_vectors=spec.include_vectors,
                      exclude_id=exclude)
        started = time.perf_counter()
        info = backend.info()
        with tracing.span("clipserve.search", **{"clipserve.search.backend": info.backend,
                                                 "clipserve.search.kind": spec.kind, "clipserve.search.top_k": spec.top_k,
                                                 "clipserve.search.filtered": spec.filter is not None}) as span:
            hits = backend.search(query)
            span.set_attribute("clipserve.search.results", len(hits))
        observability.record_search(spec.kind, time.perf_counter() - started, len(hits),
                                    filtered=spec.filter is not None)
        index = info.public()
        if key is not None:
            vectors.put_answer(key, {"hits": [{"id": h.id, "score": h.score, "metadata": h.metadata,
                                               "vector": h.vector} for h in hits], "index": index},
                               self.settings.search_cache_ttl_s)
        return hits, index

    def _search_key(self, spec: QuerySpec, backend: SearchBackend, vectors: Any) -> bytes | None:
        """The answer's cache key in the query model's ``vectors`` cache, or None when answers are not cached (no
        shared cache, TTL 0, an image that could not be fetched, or a Qdrant collection whose write generation cannot
        be read)."""
        if (not vectors.enabled or not self.settings.search_cache_ttl_s
                or (spec.kind == "image" and not isinstance(spec.value, bytes))):
            return None
        info = backend.info()
        index = "|".join(map(str, (info.backend, info.name, info.version, info.details.get("where", ""),
                                   info.details.get("created", ""))))
        generation = 0
        if backend.writable:
            generation = vectors.shared.generation(_generation_name(index))
            if generation is None:
                return None
        if spec.kind == "vector":
            value = np.asarray(spec.value, dtype=np.float64).tobytes()
        elif spec.kind == "image":
            value = spec.value
        else:
            value = str(spec.value).encode("utf-8", "surrogatepass")
        query = orjson.dumps({"index": index, "generation": generation, "kind": spec.kind, "top_k": spec.top_k,
                              "score_threshold": spec.score_threshold, "filter": spec.filter,
                              "metadata": spec.include_metadata, "vectors": spec.include_vectors},
                             option=orjson.OPT_SORT_KEYS)
        return vectors.key("search", True, hashlib.sha256(query + b"\0" + value).digest())

    def _invalidate_answers(self, backend: SearchBackend) -> None:
        """A write to a collection: its cached answers are never read again (the generation in their key moves)."""
        if self.engine.vectors.enabled:  # the one shared cache, whichever model's handle
            info = backend.info()
            index = "|".join(map(str, (info.backend, info.name, info.version, info.details.get("where", ""),
                                       info.details.get("created", ""))))
            self.engine.vectors.shared.bump(_generation_name(index))

    def _query_vector(self, spec: QuerySpec, backend: SearchBackend,
                      deadline: Deadline) -> tuple[np.ndarray, str | None]:
        """(unit query vector, id to leave out of the results)."""
        if spec.kind == "text":
            return self.embed_texts([spec.value], normalize=True, deadline=deadline, field="text",
                                    model=spec.model).embeddings[0], None
        if spec.kind == "image":
            return self.embed_every_image([spec.value], deadline=deadline, label=lambda _: "image",
                                          model=spec.model)[0], None
        if spec.kind == "id":
            return backend.vector_of(spec.value), spec.value
        return unit_vector(spec.value, backend.info().model.get("dim") or self._dim(spec.model), "vector"), None

    def _dim(self, model: str | None) -> int:
        return self.engine.info_of(model).dim

    # index writes ----------------------------------------------------------------------------------

    def writable_backend(self) -> SearchBackend:
        backend = self.backend()
        backend.check_writable()  # 405 for the read-only index, before reading or embedding anything
        return backend

    def write_items(self, items: list, files: list | None, deadline: Deadline,
                    model: str | None = None) -> tuple[list[str], list[dict]]:
        """Embed items with the collection's modality and model and upsert them: (ids written, per-item errors).
        An item that fails (its image, its vector, its metadata) is reported by position and not written."""
        backend = self.writable_backend()
        model = self.index_model(backend, model)
        if files is not None:
            if len(files) != len(items) or any(i.text or i.image or i.vector for i in items):
                raise InvalidRequest(f"multipart: one 'images' file part per item ({len(files)} files, "
                                     f"{len(items)} items), and items without text, image or vector")
        vectors, errors = self._embed_items(items, files, backend.info().modality, deadline, model)
        columns = backend.columns()
        new_columns: dict[str, str] = {}
        kept = []
        for i, item in enumerate(items):
            if i in errors:
                continue
            problem = _metadata_problem(item.metadata, columns, new_columns)
            if problem:
                errors[i] = ("invalid_metadata", problem)
            else:
                kept.append(Item(id=item.id, vector=vectors[i], metadata=item.metadata))
        if not kept:
            raise AllItemsFailed(f"none of the {len(items)} items could be written", details=_error_list(errors))
        if new_columns:
            backend.add_columns(new_columns)
        backend.upsert(kept)
        self._invalidate_answers(backend)
        observability.annotate(upserted=len(kept), item_errors=len(errors))
        return [item.id for item in kept], _error_list(errors)

    def _embed_items(self, items: list, files: list | None, modality: str, deadline: Deadline,
                     model: str) -> tuple[dict[int, np.ndarray], dict[int, tuple[str, str]]]:
        """Each item's unit vector, or its error (code, message): vectors as given, texts and images embedded."""
        dim = self._dim(model)
        vectors: dict[int, np.ndarray] = {}
        errors: dict[int, tuple[str, str]] = {}
        texts, images = [], []
        for i, item in enumerate(items):
            given = [k for k in ("text", "image", "vector") if getattr(item, k) is not None]
            if files is not None:
                images.append((i, files[i]))
            elif len(given) != 1:
                errors[i] = ("invalid_request", "give exactly one of text, image or vector")
            elif given[0] == "vector":
                try:
                    vectors[i] = unit_vector(item.vector, dim, f"items[{i}].vector")
                except InvalidRequest as exc:
                    errors[i] = ("invalid_request", exc.message)
            elif given[0] != modality:
                errors[i] = ("wrong_modality", f"this collection holds {modality} embeddings: send "
                                               f"{'an image' if modality == 'image' else 'a text'} or a vector")
            else:
                (texts if given[0] == "text" else images).append((i, getattr(item, given[0])))
        if texts:
            result = self.embed_texts([t for _, t in texts], normalize=True, deadline=deadline, field="items.text",
                                      model=model)
            vectors.update(zip((i for i, _ in texts), result.embeddings))
        if images:
            embedded, ok, image_errors = self.image_vectors([img for _, img in images], normalize=True,
                                                            deadline=deadline, model=model)
            for e in image_errors:
                errors[images[e["index"]][0]] = (e["code"], e["message"])
            vectors.update(zip((images[j][0] for j in ok), embedded))
        return vectors, errors

    def delete_items(self, *, ids: list[str] | None, filter: dict[str, Any] | None) -> tuple[int | None, IndexInfo]:
        backend = self.writable_backend()
        if ids is not None:
            deleted = backend.delete(ids=ids)
        else:
            deleted = backend.delete(filter=parse_filter(filter, backend.columns()))
        self._invalidate_answers(backend)
        observability.annotate(deleted=deleted)
        return deleted, backend.info()


def _generation_name(index: str) -> bytes:
    return b"clipserve:v1:generation:" + hashlib.sha256(index.encode()).hexdigest().encode()


def unit_vector(values: list[float], dim: int, field: str) -> np.ndarray:
    """A client's vector, checked (length, finite, not all zero) and normalized."""
    if len(values) != dim:
        raise InvalidRequest(f"{field}: has {len(values)} values, the model's dimension is {dim}", param=field)
    vector = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vector).all() or not vector.any():
        raise InvalidRequest(f"{field}: must be finite and not all zero", param=field)
    return scoring.unit_rows(vector[None, :])[0].astype(np.float32)


def given_vectors(rows: list[list[float]], dim: int, field: str) -> np.ndarray:
    """Client-supplied embeddings, checked for the model's dimension and usable (finite, non-zero) values."""
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise InvalidRequest(f"{field}[{i}]: has {len(row)} values, the model's dimension is {dim}")
    vectors = np.asarray(rows, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1) | ~vectors.any(axis=1))
    if bad.size:
        raise InvalidRequest(f"{field}[{bad[0]}]: must be finite and not all zero")
    return vectors


def _metadata_problem(metadata: dict[str, Any], columns: dict[str, str], new: dict[str, str]) -> str | None:
    """Why this metadata cannot be written (None if it can); records keys the collection does not have yet."""
    from search.items_db import fits, value_kind
    from search.qdrant_index import ID_KEY

    if ID_KEY in metadata:
        return f"metadata.{ID_KEY}: reserved (the item's id is kept under it)"
    for key, value in metadata.items():
        kind = value_kind(value)
        if kind is None:
            continue
        column = columns.get(key) or new.get(key)
        if column is None:
            new[key] = kind
        elif not fits(kind, column):
            return f"metadata.{key}: a {kind} value; the collection's {key!r} holds {column} values"
    return None


def _error_list(errors: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"index": i, "code": code, "message": message} for i, (code, message) in sorted(errors.items())]
