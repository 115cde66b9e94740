"""Writes on a backend that takes them (Qdrant, here in local mode): POST /index embeds with the collection's
modality and upserts, reporting per-item errors aligned with the input; re-sending an id replaces its item;
POST /index/delete by ids or filter. The FAISS index refuses both with 405; no backend is 404; API keys apply."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from handler.app import create_app
from infra.settings import Settings
from models.bundle import model_identity
from search import qdrant_index


def png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_collection(path, model_dir, modality: str, columns: dict[str, str]) -> None:
    client = qdrant_index.connect(path=path)
    try:
        qdrant_index.create_collection(client, "items", model=model_identity(model_dir, "english"),
                                       modality=modality, columns=columns, local=True)
    finally:
        client.close()


def app_for(model_dir, **settings):
    app = create_app(Settings(model_dir=model_dir, precision="fp32", runtime="torch", max_items=8, **settings))
    api = app.extensions["clipserve"]
    api.start()
    assert api.engine.wait_ready(120) and api.search.wait(30)
    return app


@pytest.fixture
def image_app(tiny_model_dir, tmp_path):
    make_collection(tmp_path / "q", tiny_model_dir, "image", {"shop": "str", "price": "float"})
    app = app_for(tiny_model_dir, qdrant_path=tmp_path / "q", qdrant_collection="items")
    yield app.test_client()
    app.extensions["clipserve"].search.close()
    app.extensions["clipserve"].shutdown(1)


def test_index_embeds_upserts_and_reports_per_item_errors(image_app):
    client = image_app
    items = [{"id": "a", "image": base64.b64encode(png(1)).decode(), "metadata": {"shop": "north", "price": 3}},
             {"id": "bad", "image": "data:image/png;base64,iVBORw0KGgo="},
             {"id": "t", "text": "a text for an image collection"},
             {"id": "v", "vector": [0.5] * 32, "metadata": {"shop": "south", "tags": ["x", "y"]}},
             {"id": "wrongtype", "vector": [0.1] * 32, "metadata": {"price": "cheap"}},
             {"id": "reserved", "vector": [0.1] * 32, "metadata": {"id": "x"}},
             {"id": "short", "vector": [0.1] * 3}]
    response = client.post("/index", json={"items": items})
    assert response.status_code == 200, response.json
    body = response.json
    assert body["upserted"] == 2 and body["ids"] == ["a", "v"] and body["index"]["count"] == 2
    assert [(e["index"], e["code"]) for e in body["errors"]] == [
        (1, "invalid_image"), (2, "wrong_modality"), (4, "invalid_metadata"), (5, "invalid_metadata"),
        (6, "invalid_request")]
    # what was written is what /embed/image gives, and a failed item is not there
    embedded = client.post("/embed/image", json={"images": [items[0]["image"]]}).json["embeddings"][0]
    hits = client.post("/search", json={"vector": embedded, "top_k": 5, "include_vectors": True}).json["results"]
    assert [h["id"] for h in hits] == ["a", "v"]
    np.testing.assert_allclose(hits[0]["vector"], embedded, atol=1e-6)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and hits[0]["metadata"] == {"shop": "north", "price": 3}
    assert client.post("/search", json={"id": "bad"}).status_code == 404
    # a key a write brought is filterable from then on
    tagged = client.post("/search", json={"vector": [0.5] * 32, "filter": {
        "must": [{"key": "shop", "match": {"value": "south"}}]}}).json["results"]
    assert [h["id"] for h in tagged] == ["v"] and tagged[0]["metadata"]["tags"] == ["x", "y"]


def test_resending_an_id_replaces_its_item_and_never_duplicates_it(image_app):
    client = image_app
    for price in (1, 2, 3):
        answer = client.post("/index", json={"items": [{"id": "same", "vector": [float(price)] + [0.1] * 31,
                                                        "metadata": {"price": price}}]})
        assert answer.status_code == 200 and answer.json["index"]["count"] == 1
    [hit] = client.post("/search", json={"vector": [1.0] * 32, "top_k": 5}).json["results"]
    assert hit["id"] == "same" and hit["metadata"] == {"price": 3}


def test_multipart_takes_one_file_per_item(image_app):
    client = image_app
    items = json.dumps([{"id": "f1", "metadata": {"shop": "east"}}, {"id": "f2"}])
    response = client.post("/index", data={"items": items, "images": [(io.BytesIO(png(5)), "a.png"),
                                                                       (io.BytesIO(b"not an image"), "b.png")]},
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    assert response.json["ids"] == ["f1"] and response.json["errors"][0]["index"] == 1
    mismatch = client.post("/index", data={"items": items, "images": [(io.BytesIO(png(5)), "a.png")]},
                           content_type="multipart/form-data")
    assert mismatch.status_code == 400 and "one 'images' file part per item" in mismatch.json["error"]["message"]


def test_all_items_failing_is_422_and_writes_nothing(image_app):
    response = image_app.post("/index", json={"items": [{"id": "x", "text": "no"}, {"id": "y", "vector": [0.0] * 32}]})
    assert response.status_code == 422 and response.json["error"]["code"] == "all_items_failed"
    assert [d["index"] for d in response.json["error"]["details"]] == [0, 1]
    assert image_app.get("/").json["search"]["index"]["count"] == 0


def test_delete_by_ids_and_by_filter(image_app):
    client = image_app
    items = [{"id": f"i{n}", "vector": list(np.random.default_rng(n).standard_normal(32)),
              "metadata": {"shop": "north" if n % 2 else "south", "price": n}} for n in range(6)]
    assert client.post("/index", json={"items": items}).json["upserted"] == 6
    gone = client.post("/index/delete", json={"ids": ["i0", "i1", "never"]})
    assert gone.status_code == 200 and gone.json["deleted"] == 2 and gone.json["index"]["count"] == 4
    by_filter = client.post("/index/delete", json={"filter": {"must": [{"key": "shop", "match": {"value": "north"}}]}})
    assert by_filter.json["deleted"] == 2 and by_filter.json["index"]["count"] == 2
    left = client.post("/search", json={"vector": [1.0] * 32, "top_k": 10}).json["results"]
    assert sorted(h["id"] for h in left) == ["i2", "i4"]
    bad = client.post("/index/delete", json={"ids": ["a"], "filter": {}})
    assert bad.status_code == 400
    unknown = client.post("/index/delete", json={"filter": {"must": [{"key": "nope", "match": {"value": 1}}]}})
    assert unknown.status_code == 400 and "unknown metadata key" in unknown.json["error"]["message"]


def test_a_text_collection_embeds_texts(tiny_model_dir, tmp_path):
    make_collection(tmp_path / "q", tiny_model_dir, "text", {})
    app = app_for(tiny_model_dir, qdrant_path=tmp_path / "q", qdrant_collection="items")
    try:
        client = app.test_client()
        written = client.post("/index", json={"items": [{"id": "cat", "text": "a photo of a cat"},
                                                        {"id": "img", "image": base64.b64encode(png(2)).decode()}]})
        assert written.json["ids"] == ["cat"] and written.json["errors"][0]["code"] == "wrong_modality"
        vector = client.post("/embed/text", json={"texts": ["a photo of a cat"]}).json["embeddings"][0]
        [hit] = client.post("/search", json={"text": "a photo of a cat"}).json["results"]
        assert hit["id"] == "cat" and hit["score"] == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(client.post("/search", json={"vector": vector}).json["results"][0]["score"], 1.0,
                                   atol=1e-5)
    finally:
        app.extensions["clipserve"].search.close()
        app.extensions["clipserve"].shutdown(1)


def test_the_read_only_index_refuses_writes_and_no_backend_is_404(tiny_model_dir, tmp_path):
    from search.build import write_index

    identity = model_identity(tiny_model_dir, "english")
    folder = write_index(tmp_path / "shop" / "v7", np.eye(3, 32, dtype=np.float32), [("a", {}), ("b", {}), ("c", {})],
                         columns={}, from_csv=False, model=identity, modality="image", name="shop")
    app = app_for(tiny_model_dir, index_dir=folder)
    client = app.test_client()
    for path, body in (("/index", {"items": [{"id": "x", "vector": [0.1] * 32}]}), ("/index/delete", {"ids": ["a"]})):
        response = client.post(path, json=body)
        assert response.status_code == 405 and response.json["error"]["code"] == "index_read_only"
        assert "shop version v7" in response.json["error"]["message"] and "index build" in response.json["error"]["message"]
    app.extensions["clipserve"].shutdown(1)
    plain = create_app(Settings(model_dir=tiny_model_dir, precision="fp32", runtime="torch")).test_client()
    for path in ("/index", "/index/delete", "/search"):
        response = plain.post(path, json={})
        assert response.status_code == 404 and response.json["error"]["code"] == "index_not_configured"


def test_writes_need_an_api_key_when_keys_are_set(tiny_model_dir, tmp_path):
    make_collection(tmp_path / "q", tiny_model_dir, "image", {})
    app = app_for(tiny_model_dir, qdrant_path=tmp_path / "q", qdrant_collection="items", api_keys="sekrit")
    try:
        client = app.test_client()
        body = {"items": [{"id": "x", "vector": [0.1] * 32}]}
        assert client.post("/index", json=body).status_code == 401
        assert client.post("/index/delete", json={"ids": ["x"]}).status_code == 401
        assert client.post("/index", json=body, headers={"Authorization": "Bearer sekrit"}).status_code == 200
    finally:
        app.extensions["clipserve"].search.close()
        app.extensions["clipserve"].shutdown(1)


def test_a_collection_for_another_model_or_none_at_all_stops_the_boot(tiny_model_dir, tmp_path):
    from search.errors import IndexUnusable

    with pytest.raises(IndexUnusable, match="does not exist"):
        create_app(Settings(model_dir=tiny_model_dir, qdrant_path=tmp_path / "empty", qdrant_collection="items"))
    client = qdrant_index.connect(path=tmp_path / "other")
    qdrant_index.create_collection(client, "items", model={**model_identity(tiny_model_dir, "english"),
                                                           "weights": "sha256:" + "0" * 64},
                                   modality="image", columns={}, local=True)
    client.close()
    with pytest.raises(IndexUnusable, match="created for another model.*weights"):
        create_app(Settings(model_dir=tiny_model_dir, qdrant_path=tmp_path / "other", qdrant_collection="items"))


def test_two_backends_at_once_is_a_boot_error(tiny_model_dir, tmp_path):
    from infra.settings import SettingsError

    with pytest.raises(SettingsError, match="INDEX_DIR and QDRANT_URL"):
        Settings.from_env({"INDEX_DIR": str(tmp_path), "QDRANT_URL": "http://127.0.0.1:6333"})


def test_a_killed_push_rerun_ends_with_every_id_exactly_once(tiny_model_dir, tmp_path):
    """SIGKILL partway through the upserts (batches of 5); the re-run continues from its progress file."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"r{i}", "text": f"row {i}", "n": i}) + "\n" for i in range(400)))
    command = [sys.executable, "-m", "batch", "index", "push", "--input", str(rows), "--qdrant-path",
               str(tmp_path / "q"), "--collection", "rows", "--local", "--model-dir", str(tiny_model_dir),
               "--push-batch-size", "5"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the push finished before it could be killed"
        found = list(tmp_path.glob(".rows.embeddings.jsonl.pushed-*.json"))
        if found and json.loads(found[0].read_text() or "{}").get("done", 0) >= 20:
            progress = found[0]
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert progress is not None
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["already_pushed"] >= 20 and summary["already_pushed"] + summary["upserted"] == 400
    client = qdrant_index.connect(path=tmp_path / "q")
    try:
        points, ids = client.scroll("rows", limit=1000, with_payload=True)[0], []
        ids = sorted(p.payload["id"] for p in points)
        assert ids == sorted(f"r{i}" for i in range(400))  # each once
        assert client.count("rows").count == 400
    finally:
        client.close()
