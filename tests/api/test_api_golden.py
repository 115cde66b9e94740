"""Every route's answers, byte for byte, against a recording (``golden/answers.json``).

Guards refactors of the HTTP layer: the recording was made before the views moved into
``handler/protocols/`` and must not change unless an answer is meant to. The model is the real
``Encoder`` around deterministic towers whose vectors are dyadic rationals of norm exactly 1, so
normalizing, cosines and search scores are exact on every CPU and the bytes do not depend on the
machine. Volatile values (temporary paths, the /v1/models timestamp) are masked before comparing.

Re-record after a deliberate change: ``CLIPSERVE_RECORD_GOLDEN=1 ./test.sh tests/api/test_api_golden.py``,
and say in the commit which answers changed and why.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine import EmbeddingEngine
from handler.app import create_app
from infra.settings import Settings
from models.encoder import Encoder, ModelInfo, PreparedText
from search import qdrant_index
from search.build import IndexOptions, write_index
from search.items_db import ColumnTypes
from search.service import SearchService

GOLDEN = Path(__file__).parent / "golden" / "answers.json"
RECORD = os.environ.get("CLIPSERVE_RECORD_GOLDEN") == "1"
DIM = 16
IMAGE_SIZE = 4
CONTEXT = 8
INFO = ModelInfo(variant="english", architecture="golden-arch", text_tower="golden-text", image_tower="golden-image",
                 dim=DIM, image_size=IMAGE_SIZE, context_length=CONTEXT, logit_scale=0.0,
                 weights="sha256:" + "cd" * 32)
IDENTITY = {"variant": INFO.variant, "architecture": INFO.architecture, "dim": DIM, "weights": INFO.weights}
# Entries in eighths whose squares sum to 64 and whose largest is a power of two: every vector has norm 1, scaling
# by the largest entry (handler.scoring.unit_rows) is exact, and every dot product is a multiple of 1/64, so sums
# come out the same in any order (BLAS kernels differ between CPUs).
_PATTERNS = [(4, 4, 4, 4), (4, 4, 4, 2, 2, 2, 2), (4, 4, 2, 2, 2, 2, 2, 2, 2, 2), (4, 4, 4, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1)]
HEADERS = ("Content-Type", "Allow", "Retry-After", "WWW-Authenticate", "X-Request-ID")
# Only status and headers recorded: counters and timings (tests/ops check them); the pages' HTML, which changes with
# every edit to them (tests/api/test_api_page.py and tests/ui check it).
VOLATILE = {"GET /stats", "GET /ui", "GET /docs"}


def dyadic_unit(seed: bytes, scale: float = 1.0) -> np.ndarray:
    """A float32 vector of norm ``scale`` picked by ``seed``: a pattern, permuted, with signs."""
    digest = hashlib.sha256(seed).digest()
    pattern = _PATTERNS[digest[0] % len(_PATTERNS)]
    order = np.argsort(np.frombuffer(digest[1:1 + DIM], np.uint8), kind="stable")
    vector = np.zeros(DIM, np.float32)
    for slot, value in zip(order, pattern):
        vector[slot] = value / 8 * (1 if digest[17 + slot % 15] % 2 else -1)
    return vector * np.float32(scale)


class TextTower:
    def prepare(self, text: str) -> PreparedText:
        words = text.split()
        ids = tuple(int.from_bytes(hashlib.sha256(w.encode("utf-8", "surrogatepass")).digest()[:2], "big")
                    for w in words)
        return PreparedText(ids=(1, *ids[:CONTEXT - 2], 2), truncated=len(words) > CONTEXT - 2)

    def encode(self, items: list[PreparedText]) -> np.ndarray:
        return np.stack([dyadic_unit(repr(item.ids).encode(), 2.0) for item in items])


class ImageTower:
    def prepare(self, image: Image.Image) -> np.ndarray:
        digest = hashlib.sha256(image.convert("RGB").tobytes() + repr(image.size).encode()).digest()
        return np.frombuffer(digest * 2, np.uint8)[:3 * IMAGE_SIZE * IMAGE_SIZE].reshape(3, IMAGE_SIZE, IMAGE_SIZE)

    def encode(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.stack([dyadic_unit(x.tobytes(), 4.0) for x in batch])


def png(seed: int, size: tuple[int, int] = (12, 10)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def settings(**overrides: Any) -> Settings:
    return Settings(model_dir=Path("/nonexistent"), max_items=8, max_text_chars=400, request_timeout_s=20.0,
                    batch_max_wait_ms=2.0, precision="fp32", runtime="torch", **overrides)


def make_app(search: SearchService | None = None, **overrides: Any):
    s = settings(**overrides)
    engine = EmbeddingEngine.from_settings(s, lambda: Encoder(INFO, TextTower(), ImageTower()))
    app = create_app(s, engine, search)
    api = app.extensions["clipserve"]
    api.start()
    assert engine.wait_ready(30), engine.load_error
    if search is not None:
        assert search.wait(30), search.reason
    return app


def faiss_service(root: Path) -> SearchService:
    from search.faiss_index import FaissIndex

    metadata = [{"title": f"item {i}", "shop": ["north", "south", "east"][i % 3], "price": i * 10}
                for i in range(12)]
    vectors = np.stack([dyadic_unit(f"item-{i}".encode()) for i in range(12)])
    types = ColumnTypes(["title", "shop", "price"], from_csv=False)
    for row in metadata:
        types.add(row)
    directory = write_index(root / "catalog" / "v1", vectors, zip([f"item-{i}" for i in range(12)], metadata),
                            columns=types.result(), from_csv=False, model=IDENTITY, modality="image",
                            name="catalog", options=IndexOptions("flat"))
    return SearchService(lambda: FaissIndex.open(directory), part_of_health=True)


def qdrant_service(root: Path) -> SearchService:
    path = str(root / "qdrant")
    client = qdrant_index.connect(path=path)
    qdrant_index.create_collection(client, "items", model=IDENTITY, modality="image",
                                   columns={"shop": "str", "price": "float"}, local=True)
    return SearchService(lambda: qdrant_index.QdrantIndex.open(client, "items", path, local=True),
                         part_of_health=False)


def multipart(fields: dict[str, Any], files: list[tuple[str, bytes]]) -> dict[str, Any]:
    data: dict[str, Any] = dict(fields)
    for name, content in files:
        data.setdefault(name, []).append((io.BytesIO(content), f"{name}.png", "image/png"))
    return {"data": data, "content_type": "multipart/form-data"}


RED = png(1)
GREEN = png(2)
BLUE = png(3, (20, 8))
V = [float(x) for x in dyadic_unit(b"query")]
W = [float(x) for x in dyadic_unit(b"other", 3.0)]


def native_cases() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", "/", {}),
        ("GET", "/health", {}),
        ("GET", "/stats", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/docs", {}),
        ("GET", "/ui", {}),
        ("GET", "/no/such/route", {}),
        ("GET", "/embed/text", {}),
        ("POST", "/embed/text", {"json": {"texts": ["a cat", "a dog", "a cat"]}}),
        ("POST", "/embed/text", {"json": {"texts": ["a cat"], "normalize": False, "encoding_format": "base64"}}),
        ("POST", "/embed/text", {"json": {"texts": ["one two three four five six seven eight"]}}),
        ("POST", "/embed/text", {"json": {"texts": ["one two three four five six seven eight"], "truncate": False}}),
        ("POST", "/embed/text", {"json": {"texts": ["x"] * 9}}),
        ("POST", "/embed/text", {"json": {"texts": []}}),
        ("POST", "/embed/text", {"json": {"texts": "not a list"}}),
        ("POST", "/embed/text", {"json": {"texts": ["a"], "normalize": 0}}),
        ("POST", "/embed/text", {"json": ["a list"]}),
        ("POST", "/embed/text", {"data": b"{not json", "content_type": "application/json"}),
        ("POST", "/embed/text", {"data": b"", "content_type": "application/json"}),
        ("POST", "/embed/text", {"data": b"texts=a", "content_type": "text/plain"}),
        ("POST", "/embed/text", {"json": {"texts": ["y" * 401]}}),
        ("POST", "/embed/text", {"json": {"texts": ["a"], "extra": 1}}),
        ("POST", "/embed/text", {"json": {"texts": ["a"]}, "headers": {"X-Request-ID": "golden-1"}}),
        ("POST", "/embed/image", {"json": {"images": [b64(RED), "data:image/png;base64," + b64(GREEN)]}}),
        ("POST", "/embed/image", {"json": {"images": [b64(RED), "data:image/png;base64,iVBORw0KGgo=", "!!"],
                                           "encoding_format": "base64"}}),
        ("POST", "/embed/image", {"json": {"images": ["data:image/png;base64,iVBORw0KGgo="]}}),
        ("POST", "/embed/image", {"json": {"images": ["ftp://example.com/x.png"]}}),
        ("POST", "/embed/image", multipart({"normalize": "false"}, [("images", RED), ("images", BLUE)])),
        ("POST", "/embed/image", multipart({}, [("pictures", RED)])),
        ("POST", "/embed/mixed", {"json": {"texts": ["a cat"], "images": [b64(BLUE)]}}),
        ("POST", "/embed/mixed", {"json": {"texts": ["a cat"], "images": ["data:image/png;base64,iVBORw0KGgo="]}}),
        ("POST", "/embed/mixed", multipart({"texts": ["a", "b"]}, [("images", GREEN)])),
        ("POST", "/embed/mixed", {"json": {}}),
        ("POST", "/score", {"json": {"texts": ["a cat", "a dog", "a car"], "images": [b64(RED), b64(GREEN)]}}),
        ("POST", "/score", {"json": {"texts": ["a cat", "a dog"], "images": [b64(RED), b64(GREEN)],
                                     "pairwise": True}}),
        ("POST", "/score", {"json": {"text_embeddings": [V, W], "image_embeddings": [W]}}),
        ("POST", "/score", {"json": {"text_embeddings": [[1.0, 2.0]], "images": [b64(RED)]}}),
        ("POST", "/score", {"json": {"texts": ["a"], "image_embeddings": [[0.0] * DIM]}}),
        ("POST", "/score", {"json": {"texts": ["a", "b"], "images": [b64(RED)], "pairwise": True}}),
        ("POST", "/score", multipart({"texts": ["a cat"]}, [("images", RED), ("images", BLUE)])),
        ("POST", "/v1/embeddings", {"json": {"model": "english", "input": "a cat"}}),
        ("POST", "/v1/embeddings", {"json": {"model": "golden-arch", "input": ["a cat", "a dog"],
                                             "encoding_format": "base64"}}),
        ("POST", "/v1/embeddings", {"json": {"model": "english", "modality": "image",
                                             "input": ["data:image/png;base64," + b64(RED)]}}),
        ("POST", "/v1/embeddings", {"json": {"model": "english", "modality": "image",
                                             "input": ["data:image/png;base64,iVBORw0KGgo="]}}),
        ("POST", "/v1/embeddings", {"json": {"model": "text-embedding-3-small", "input": "a cat"}}),
        ("POST", "/v1/embeddings", {"json": {"model": "english", "input": "a cat", "dimensions": 8}}),
        ("POST", "/v1/embeddings", {"json": {"model": "english", "input": [[1, 2, 3]]}}),
        ("POST", "/v1/embeddings", {"json": {"model": "english", "input": ["a"] * 65}}),
        ("POST", "/v1/embeddings", {"json": {"model": "english", "input": ["a"] * 2049}}),
        ("POST", "/v1/embeddings", {"json": {"input": "a cat"}}),
        ("POST", "/v1/embeddings", {"data": b"[", "content_type": "application/json"}),
        ("GET", "/v1/models", {}),
        ("GET", "/v1/nothing", {}),
        ("POST", "/search", {"json": {"text": "a cat"}}),
        ("GET", "/.well-known/live", {}),
        ("GET", "/.well-known/ready", {}),
        ("GET", "/meta", {}),
        ("POST", "/vectorize", {"json": {"texts": ["a cat", "a dog"], "images": [b64(RED)]}}),
        ("POST", "/vectorize", {"json": {"images": [b64(GREEN), b64(BLUE)]}}),
        ("POST", "/vectorize", {"json": {}}),
        ("POST", "/vectorize", {"json": {"texts": ["a"], "images": [b64(RED), "bm90IGFuIGltYWdl"]}}),
        ("POST", "/vectorize", {"json": {"texts": ["a"] * 9}}),
        ("POST", "/vectorize", {"json": {"texts": "a"}}),
    ]


def search_cases() -> list[tuple[str, str, dict[str, Any]]]:
    where_north = {"must": [{"key": "shop", "match": {"value": "north"}}]}
    return [
        ("GET", "/", {}),
        ("GET", "/health", {}),
        ("POST", "/search", {"json": {"text": "a cat", "top_k": 5}}),
        ("GET", "/items/item-1/thumbnail", {}),
        ("GET", "/items/no-such-item/thumbnail", {}),
        ("POST", "/search", {"json": {"image": b64(RED), "top_k": 3, "include_vectors": True}}),
        ("POST", "/search", multipart({"top_k": "4"}, [("image", GREEN)])),
        ("POST", "/search", {"json": {"vector": V, "top_k": 12, "score_threshold": 0.1}}),
        ("POST", "/search", {"json": {"id": "item-3", "top_k": 4, "include_metadata": False}}),
        ("POST", "/search", {"json": {"vector": V, "filter": where_north}}),
        ("POST", "/search", {"json": {"vector": V, "filter": {"must": [{"key": "price", "range": {"gte": 50}}],
                                                              "must_not": [{"key": "shop",
                                                                            "match": {"any": ["east"]}}]}}}),
        ("POST", "/search", {"json": {"vector": V, "filter": {"must": [{"key": "colour", "match": {"value": 1}}]}}}),
        ("POST", "/search", {"json": {"id": "nope"}}),
        ("POST", "/search", {"json": {"vector": [1.0, 2.0]}}),
        ("POST", "/search", {"json": {"text": "a", "image": b64(RED)}}),
        ("POST", "/search", {"json": {"image": "data:image/png;base64,iVBORw0KGgo="}}),
        ("POST", "/search", {"json": {"text": "a", "top_k": 0}}),
        ("POST", "/index", {"json": {"items": [{"id": "x", "vector": V}]}}),
        ("POST", "/index/delete", {"json": {"ids": ["item-1"]}}),
    ]


def write_cases() -> list[tuple[str, str, dict[str, Any]]]:
    items = [{"id": "a", "image": b64(RED), "metadata": {"shop": "north", "price": 3}},
             {"id": "bad", "image": "data:image/png;base64,iVBORw0KGgo="},
             {"id": "t", "text": "a text"},
             {"id": "v", "vector": V, "metadata": {"shop": "south", "tags": ["x"]}},
             {"id": "w", "vector": W, "metadata": {"price": "cheap"}},
             {"id": "r", "vector": W, "metadata": {"id": "x"}},
             {"id": "s", "vector": [0.5] * 3}]
    return [
        ("POST", "/index", {"json": {"items": items}}),
        ("POST", "/index", multipart({"items": json.dumps([{"id": "m1"}, {"id": "m2", "metadata": {"shop": "x"}}])},
                                     [("images", GREEN), ("images", BLUE)])),
        ("POST", "/index", {"json": {"items": [{"id": "only-bad", "image": "!!"}]}}),
        ("POST", "/search", {"json": {"vector": V, "top_k": 10}}),
        ("POST", "/search", {"json": {"id": "m2", "filter": {"must": [{"key": "shop", "match": {"value": "x"}}]}}}),
        ("POST", "/index/delete", {"json": {"ids": ["a", "zz"]}}),
        ("POST", "/index/delete", {"json": {"filter": {"must": [{"key": "shop", "match": {"value": "south"}}]}}}),
        ("POST", "/index/delete", {"json": {}}),
        ("POST", "/search", {"json": {"vector": V, "top_k": 10}}),
    ]


def keyed_cases() -> list[tuple[str, str, dict[str, Any]]]:
    good = {"Authorization": "Bearer golden-key"}
    return [
        ("GET", "/health", {}),
        ("GET", "/", {}),
        ("POST", "/embed/text", {"json": {"texts": ["a"]}, "headers": {"Authorization": "Bearer wrong"}}),
        ("POST", "/embed/text", {"json": {"texts": ["a"]}, "headers": good}),
        ("POST", "/v1/embeddings", {"json": {"model": "english", "input": "a"}}),
        ("GET", "/v1/models", {"headers": good}),
        ("GET", "/.well-known/ready", {}),
        ("POST", "/vectorize", {"json": {"texts": ["a"]}}),
    ]


def answer(client: Any, method: str, path: str, kwargs: dict[str, Any], masks: list[tuple[str, str]]) -> dict:
    response = client.open(path, method=method, **kwargs)
    body = response.get_data()
    text = body.decode("utf-8") if f"{method} {path}" not in VOLATILE else "<volatile>"
    for old, new in masks:
        text = text.replace(old, new)
    text = re.sub(r'"created":\d+', '"created":0', text)
    text = re.sub(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"', '"<time>"', text)  # when an index was made
    headers = {name: response.headers[name] for name in HEADERS if name in response.headers}
    if "Allow" in headers:  # built from a set: its order changes from run to run
        headers["Allow"] = ", ".join(sorted(headers["Allow"].split(", ")))
    if "X-Request-ID" in headers and "X-Request-ID" not in kwargs.get("headers", {}):
        headers["X-Request-ID"] = "<generated>"
    return {"request": f"{method} {path}", "status": response.status_code, "headers": headers, "body": text}


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict[str, list[dict]]:
    root = tmp_path_factory.mktemp("golden")
    masks = [(str(root), "<TMP>")]
    made = []

    def run(app: Any, cases: list) -> list[dict]:
        made.append(app)
        client = app.test_client()
        return [answer(client, method, path, dict(kwargs), masks) for method, path, kwargs in cases]

    keyed = dict(api_keys="golden-key")
    try:
        return {"native": run(make_app(), native_cases()),
                "search": run(make_app(faiss_service(root)), search_cases()),
                "writes": run(make_app(qdrant_service(root)), write_cases()),
                "keyed": run(make_app(**keyed), keyed_cases())}
    finally:
        for app in made:
            api = app.extensions["clipserve"]
            if api.search is not None:
                api.search.close()
            api.shutdown(1)


def test_every_answer_is_the_recorded_one(answers):
    if RECORD:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(GOLDEN.read_text())
    assert sorted(recorded) == sorted(answers)
    for group, got in answers.items():
        want = recorded[group]
        assert [a["request"] for a in got] == [a["request"] for a in want], group
        for i, (a, b) in enumerate(zip(got, want)):
            assert a == b, f"{group}[{i}] {a['request']} changed"


def test_the_recording_covers_every_route(answers):
    """A route added later without a recorded answer fails here, so the recording keeps up with the API."""
    spec = next(a for a in answers["native"] if a["request"] == "GET /openapi.json")
    routes = {f"{m.upper()} {p}" for p, ops in json.loads(spec["body"])["paths"].items() for m in ops}
    recorded = {a["request"] for group in answers.values() for a in group}
    missing = [r for r in routes if not any(re.fullmatch(re.sub(r"\\{\w+\\}", "[^ ]+", re.escape(r)), a)
                                            for a in recorded)]
    assert not missing, sorted(missing)
