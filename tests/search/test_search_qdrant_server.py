"""The search contract against a real Qdrant server, when there is one: set QDRANT_URL (and QDRANT_API_KEY for
Qdrant Cloud), e.g. `docker run -p 6333:6333 qdrant/qdrant` on a machine with Docker, then
`QDRANT_URL=http://127.0.0.1:6333 ./test.sh tests/search/test_search_qdrant_server.py`. Skipped otherwise (no
Qdrant server can run on the build machines). Each run uses a fresh collection and deletes it afterwards.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from batch.cli import main
from handler.app import create_app
from infra.settings import Settings
from search import qdrant_index

URL = os.environ.get("QDRANT_URL")
pytestmark = pytest.mark.skipif(not URL, reason="set QDRANT_URL to run the contract against a Qdrant server")
N = 200


@pytest.fixture(scope="module")
def collection(tiny_model_dir, tmp_path_factory):
    name = f"clipserve-test-{uuid.uuid4().hex[:8]}"
    rows = tmp_path_factory.mktemp("qserver") / "rows.jsonl"
    rng = np.random.default_rng(0)
    rows.write_text("".join(f'{{"id": "r{i}", "text": "item number {i}", "shop": "{["a", "b"][i % 2]}", '
                            f'"price": {float(rng.integers(0, 100))}}}\n' for i in range(N)))
    assert main(["index", "push", "--input", str(rows), "--qdrant-url", URL, "--collection", name, "--local",
                 "--model-dir", str(tiny_model_dir)]) == 0
    yield name, rows.with_name("rows.embeddings.jsonl")
    client = qdrant_index.connect(url=URL, api_key=os.environ.get("QDRANT_API_KEY"))
    client.delete_collection(name)
    client.close()


@pytest.fixture(scope="module")
def client(tiny_model_dir, collection):
    app = create_app(Settings(model_dir=tiny_model_dir, precision="fp32", runtime="torch", qdrant_url=URL,
                              qdrant_api_key=os.environ.get("QDRANT_API_KEY"), qdrant_collection=collection[0]))
    app.extensions["clipserve"].start()
    assert app.extensions["clipserve"].engine.wait_ready(120)
    yield app.test_client()
    app.extensions["clipserve"].shutdown(1)


def stored(embeddings_path):
    import json

    records = [json.loads(line) for line in embeddings_path.read_text().splitlines()]
    vectors = np.asarray([r["text_embedding"] for r in records], np.float64)
    return [r["id"] for r in records], vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_search_equals_brute_force_on_the_server(client, collection):
    ids, vectors = stored(collection[1])
    query = vectors[3] + vectors[9]
    scores = vectors @ (query / np.linalg.norm(query))
    expected = [ids[i] for i in np.argsort(-scores)[:10]]
    results = client.post("/search", json={"vector": query.tolist(), "top_k": 10}).json["results"]
    # a server's HNSW is approximate: at 200 points it finds them all
    assert [r["id"] for r in results] == expected
    np.testing.assert_allclose([r["score"] for r in results], np.sort(scores)[::-1][:10], atol=1e-4)
    filtered = client.post("/search", json={"vector": query.tolist(), "top_k": 5,
                                            "filter": {"must": [{"key": "shop", "match": {"value": "b"}}]}}).json
    assert all(r["metadata"]["shop"] == "b" for r in filtered["results"]) and len(filtered["results"]) == 5


def test_writes_and_deletes_on_the_server(client):
    written = client.post("/index", json={"items": [{"id": "new", "text": "a brand new item", "metadata": {"shop": "c"}}]})
    assert written.status_code == 200 and written.json["upserted"] == 1
    again = client.post("/index", json={"items": [{"id": "new", "text": "a brand new item", "metadata": {"shop": "d"}}]})
    assert again.json["index"]["count"] == N + 1
    [hit] = client.post("/search", json={"text": "a brand new item", "top_k": 1,
                                         "filter": {"must": [{"key": "shop", "match": {"value": "d"}}]}}).json["results"]
    assert hit["id"] == "new"
    assert client.post("/index/delete", json={"ids": ["new"]}).json["deleted"] == 1
