"""POST /search through the real gunicorn, against both backends (the FAISS index folder, and a Qdrant collection in
qdrant-client's local mode reached by the same code path as a server): every query kind against brute force over
the stored vectors (so both backends give the same ids and scores), filters, every bad query's status and code,
and an index that does not fit the model stopping the boot."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from batch.cli import main
from search.faiss_index import FaissIndex
from servers import REPO, GunicornServer, gunicorn

IMAGES = 30


def png_bytes(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def index_dir(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search_api")
    src = root / "items.csv"
    with src.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "title", "shop", "price"])
        for i in range(IMAGES):
            writer.writerow([f"img{i}", base64.b64encode(png_bytes(i)).decode(), f"picture {i}",
                             ["north", "south", "east"][i % 3], i * 10])
    out = root / "catalog" / "v1"
    assert main(["index", "build", "--input", str(src), "--output", str(out), "--local", "--model-dir",
                 str(tiny_model_dir), "--metadata-columns", "title,shop,price"]) == 0
    return out


@pytest.fixture(scope="module")
def stored(index_dir):
    """(ids, vectors, metadata) as the index holds them: what brute force runs over."""
    index = FaissIndex.open(index_dir)
    try:
        rows = index.items.records(list(range(index.count)), with_metadata=True)
        ids = [rows[r][0] for r in range(index.count)]
        return ids, index.index.reconstruct_n(0, index.count), [rows[r][1] for r in range(index.count)]
    finally:
        index.close()


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def qdrant_dir(tiny_model_dir, index_dir, tmp_path_factory) -> Path:
    """The same items pushed into a local-mode Qdrant collection, from the FAISS build's own embed output."""
    path = tmp_path_factory.mktemp("qdrant") / "data"
    assert main(["index", "push", "--input", str(index_dir.with_name("v1.embeddings.jsonl")), "--metadata",
                 str(index_dir.parent.parent / "items.csv"), "--metadata-columns", "title,shop,price",
                 "--qdrant-path", str(path), "--collection", "catalog", "--local", "--model-dir",
                 str(tiny_model_dir)]) == 0
    return path


@pytest.fixture(scope="module", params=["faiss", "qdrant"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def server(backend, tiny_model_dir, index_dir, tmp_path_factory, request):
    where = {"INDEX_DIR": str(index_dir)} if backend == "faiss" else {
        "QDRANT_PATH": str(request.getfixturevalue("qdrant_dir")), "QDRANT_COLLECTION": "catalog"}
    before = snapshot(index_dir)
    with gunicorn(tiny_model_dir, tmp_path_factory.mktemp("log") / "gunicorn.log", METRICS_ENABLED="true",
                  SEARCH_MAX_TOP_K="50", **where) as running:
        running.backend = backend
        yield running
    assert snapshot(index_dir) == before, "the service wrote to the index folder"


def search(server, timeout=30, **body):
    return requests.post(server.url + "/search", json=body, timeout=timeout)


def expected_top(stored, query: np.ndarray, k: int, keep=lambda m: True, exclude: str | None = None):
    ids, vectors, metadata = stored
    scores = vectors.astype(np.float64) @ (query / np.linalg.norm(query))
    order = [i for i in np.lexsort((np.arange(len(ids)), -scores)) if keep(metadata[i]) and ids[i] != exclude]
    return [ids[i] for i in order[:k]], [float(scores[i]) for i in order[:k]]


def assert_results(response, expected):
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    ids, scores = expected
    assert [r["id"] for r in results] == ids
    np.testing.assert_allclose([r["score"] for r in results], scores, atol=1e-5)
    for r in results:
        assert r["clip_score"] == pytest.approx(max(100 * r["score"], 0), abs=1e-3)


def test_every_query_kind_equals_brute_force(server, stored):
    ids, vectors, metadata = stored
    text = requests.post(server.url + "/embed/text", json={"texts": ["a red picture"]}, timeout=30).json()
    query = np.asarray(text["embeddings"][0], np.float32)
    assert_results(search(server, text="a red picture", top_k=5), expected_top(stored, query, 5))
    assert_results(search(server, vector=(query * 3).tolist(), top_k=5), expected_top(stored, query, 5))

    image = png_bytes(1000)
    embedded = requests.post(server.url + "/embed/image", json={"images": [base64.b64encode(image).decode()]},
                             timeout=30).json()["embeddings"][0]
    expected = expected_top(stored, np.asarray(embedded, np.float32), 4)
    assert_results(search(server, image=base64.b64encode(image).decode(), top_k=4), expected)
    multipart = requests.post(server.url + "/search", files={"image": ("q.png", image, "image/png")},
                              data={"top_k": "4", "include_metadata": "false"}, timeout=30)
    assert_results(multipart, expected)
    assert all("metadata" not in r for r in multipart.json()["results"])

    own = vectors[ids.index("img7")]
    by_id = search(server, id="img7", top_k=3, include_vectors=True)
    assert_results(by_id, expected_top(stored, own, 3, exclude="img7"))
    for r in by_id.json()["results"]:
        np.testing.assert_allclose(r["vector"], vectors[ids.index(r["id"])], atol=1e-6)


def test_answer_shape_names_the_index_and_model(server):
    body = search(server, text="a picture", top_k=2).json()
    version = body["index"].pop("version")
    assert body["index"] == {"name": "catalog", "count": IMAGES, "modality": "image", "model": "english"}
    assert version == "v1" if server.backend == "faiss" else version.startswith("20")  # Qdrant: created at
    assert body["model"]["variant"] == "english" and body["dim"] == 32
    assert set(body["results"][0]) == {"id", "score", "clip_score", "metadata"}
    assert set(body["results"][0]["metadata"]) == {"title", "shop", "price"}
    info = requests.get(server.url + "/", timeout=10).json()["search"]
    assert info["state"] == "ready" and info["backend"] == server.backend
    assert info["index"] == {**body["index"], "version": version}
    assert "POST /search" in requests.get(server.url + "/", timeout=10).json()["endpoints"]


@pytest.mark.parametrize("raw, keep", [
    ({"must": [{"key": "shop", "match": {"value": "south"}}]}, lambda m: m["shop"] == "south"),
    ({"must": [{"key": "shop", "match": {"any": ["north", "east"]}}]}, lambda m: m["shop"] in ("north", "east")),
    ({"must": [{"key": "price", "range": {"gte": 50, "lt": 200}}]}, lambda m: 50 <= m["price"] < 200),
    ({"must_not": [{"key": "shop", "match": {"value": "north"}}]}, lambda m: m["shop"] != "north"),
])
def test_filters_return_the_matching_items_brute_force_finds(server, stored, raw, keep):
    ids, vectors, metadata = stored
    query = vectors[0] + vectors[1]
    response = search(server, vector=query.tolist(), top_k=8, filter=raw)
    assert_results(response, expected_top(stored, query, 8, keep))
    assert all(keep(r["metadata"]) for r in response.json()["results"])


def test_vectors_of_any_scale_are_queries_and_non_finite_ones_are_not(server, stored):
    ids, vectors, _ = stored
    huge = search(server, vector=[1e308] * 32, top_k=3)
    assert_results(huge, expected_top(stored, np.ones(32), 3))
    for bad in ("1e309", "NaN"):  # the JSON parser reads both; validation names the field
        body = '{"vector": [' + ", ".join(["0.5"] * 31 + [bad]) + "]}"
        response = requests.post(server.url + "/search", data=body, headers={"Content-Type": "application/json"},
                                 timeout=30)
        assert response.status_code == 400 and response.json()["error"]["message"].startswith("vector: must be finite")
    form = requests.post(server.url + "/search", files={"vector": (None, "[0.5, NaN]")}, timeout=30)
    assert form.status_code == 400 and form.json()["error"]["code"] == "invalid_request"


def test_a_threshold_and_a_filter_that_matches_nothing(server, stored):
    ids, vectors, _ = stored
    query = vectors[2]
    _, scores = expected_top(stored, query, IMAGES)
    cut = (scores[3] + scores[4]) / 2
    assert_results(search(server, vector=query.tolist(), top_k=20, score_threshold=cut),
                   expected_top(stored, query, 4))
    nothing = search(server, vector=query.tolist(), filter={"must": [{"key": "shop", "match": {"value": "west"}}]})
    assert nothing.status_code == 200 and nothing.json()["results"] == []


@pytest.mark.parametrize("body, status, code, param", [
    ({}, 400, "invalid_request", None),
    ({"text": "a", "vector": [0.1] * 32}, 400, "invalid_request", None),
    ({"vector": [0.1] * 31}, 400, "invalid_request", "vector"),
    ({"vector": [0.0] * 32}, 400, "invalid_request", "vector"),
    ({"text": "a", "top_k": 51}, 400, "invalid_request", "top_k"),
    ({"text": "a", "top_k": 0}, 400, "invalid_request", "top_k"),
    ({"text": "a", "filter": {"must": [{"key": "colour", "match": {"value": "x"}}]}}, 400, "invalid_request",
     "filter.must[0].key"),
    ({"text": "a", "filter": {"must": [{"key": "price", "between": [1, 2]}]}}, 400, "invalid_request",
     "filter.must[0]"),
    ({"text": "a", "filter": {"must": [{"key": "price", "range": {"gt": "cheap"}}]}}, 400, "invalid_request",
     "filter.must[0].range.gt"),
    ({"text": "a", "filter": {"must": [{"key": "shop", "match": {"value": 3}}]}}, 400, "invalid_request",
     "filter.must[0].match.value"),
    ({"image": "data:image/png;base64,iVBORw0KGgo="}, 400, "image_failed", "image"),
    ({"id": "no-such-item"}, 404, "item_not_found", "id"),
    ({"text": "a", "score_threshold": 2}, 400, "invalid_request", "score_threshold"),
])
def test_bad_queries_get_their_status_and_code(server, body, status, code, param):
    response = search(server, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if param is not None:
        assert param in error["message"]


def test_search_latency_and_result_count_are_logged_and_measured(server):
    search(server, text="a picture", top_k=3)
    lines = [e for e in server.log_entries() if e.get("route") == "/search" and e.get("status") == 200]
    assert lines and lines[-1]["results"] == 3 and lines[-1]["search_ms"] >= 0 and lines[-1]["search_kind"] == "text"
    assert "a picture" not in server.log_text()  # never the query
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert 'clipserve_search_duration_seconds_count{kind="text"}' in metrics
    assert "clipserve_search_results_count" in metrics


def boot_failure(tiny_model_dir, index_dir, tmp_path, **env) -> str:
    """Start gunicorn and return what it said as it refused to start."""
    server = GunicornServer(tiny_model_dir, tmp_path / "refused.log", INDEX_DIR=str(index_dir), **env)
    try:
        server.proc.wait(timeout=60)
    finally:
        server.stop()
    assert server.proc.returncode != 0
    return server.log_text()


def test_an_index_built_with_other_weights_stops_the_boot(tiny_model_dir, index_dir, tmp_path):
    from models.tiny import make_bundle

    other = tmp_path / "models"
    make_bundle("english", other, size="tiny", seed=1, onnx=False)
    said = boot_failure(other, index_dir, tmp_path)
    assert "built with another model" in said and "weights: index 'sha256:" in said


def preflight(model_dir: Path, index_dir: Path, **env: str) -> subprocess.CompletedProcess:
    import os

    environ = {**os.environ, "MODEL_DIR": str(model_dir), "INDEX_DIR": str(index_dir), **env}
    return subprocess.run([sys.executable, "-m", "infra.preflight"], cwd=REPO, env=environ, capture_output=True,
                          text=True, timeout=60)


def test_the_container_refuses_another_variant_an_edited_file_or_an_unknown_format(tiny_model_dir, index_dir,
                                                                                     tmp_path):
    import shutil

    other = preflight(tiny_model_dir, index_dir, MODEL_VARIANT="multilingual")
    assert other.returncode == 78 and "variant: index 'english', service 'multilingual'" in other.stderr
    edited = tmp_path / "edited" / "v1"
    shutil.copytree(index_dir, edited)
    with (edited / "items.sqlite").open("ab") as f:
        f.write(b"\0")
    said = preflight(tiny_model_dir, edited)
    assert said.returncode == 78 and "items.sqlite has" in said.stderr and "manifest says" in said.stderr
    manifest = json.loads((index_dir / "manifest.json").read_text())
    future = tmp_path / "future" / "v1"
    shutil.copytree(index_dir, future)
    (future / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    said = preflight(tiny_model_dir, future)
    assert said.returncode == 78 and "format version 99" in said.stderr
    assert preflight(tiny_model_dir, index_dir).returncode == 0
