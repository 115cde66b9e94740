"""The clients people already run, installed from PyPI, against the real gunicorn: OpenAI's client, LangChain's
OpenAIEmbeddings (with its defaults, which send token arrays, and with strings), LlamaIndex's OpenAILikeEmbedding,
Weaviate's multi2vec-clip protocol, and a Qdrant client over a clipserve-built collection. docs/clients.md's
snippets are run as written (their URL swapped for the test server's)."""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from api_helpers import b64, image_bytes
from docs_snippets import CLIENT_SNIPPETS, DOC_URL, DOCS, run_snippet, snippet
from servers import REPO, free_port

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
TEXTS = [f"document {i}: a photo of a {['cat', 'dog', 'red bicycle', 'lighthouse'][i % 4]} number {i}"
         for i in range(1500)]


@pytest.fixture(scope="module", autouse=True)
def tiktoken_offline(tmp_path_factory):
    """tiktoken (LangChain's default tokenizer) downloads cl100k_base on first use; no internet here, so its cache
    gets the same pinned file the service decodes with (tiktoken checks its sha256 on read)."""
    cache = tmp_path_factory.mktemp("tiktoken")
    data = importlib.resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
    (cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(data.read_bytes())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield
    if old is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR")
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """gunicorn with a model load made 3 s slow, so the readiness probe's 503 can be seen before its 204."""
    folder = tmp_path_factory.mktemp("clients")
    (folder / "slow_wsgi.py").write_text(
        "import time\nimport models.loader as loader\n_load = loader.load_encoder\n"
        "def slow(*a, **k):\n    time.sleep(3)\n    return _load(*a, **k)\n"
        "loader.load_encoder = slow\nfrom handler.wsgi import app  # noqa: E402\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "API_KEYS_FILE")}
    env.update({"MODEL_DIR": str(tiny_model_dir), "MODEL_VARIANT": "english", "PORT": str(port),
                "HTTP_THREADS": "8", "TORCH_THREADS": "1", "PYTHONPATH": f"{folder}:{REPO}"})
    log = open(folder / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py", "--bind",
                                f"127.0.0.1:{port}", "slow_wsgi:app"], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    readiness = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                readiness.append(requests.get(f"{url}/.well-known/ready", timeout=5).status_code)
            except requests.RequestException:
                time.sleep(0.05)
                continue
            if readiness[-1] == 204:
                break
            time.sleep(0.1)
        yield {"url": url, "readiness": readiness, "folder": folder}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()


def embed_text(url: str, texts: list[str]) -> np.ndarray:
    rows = []
    for start in range(0, len(texts), 64):
        r = requests.post(f"{url}/embed/text", json={"texts": texts[start:start + 64]}, timeout=60)
        assert r.status_code == 200, r.text
        rows += r.json()["embeddings"]
    return np.array(rows, np.float32)


def embed_image(url: str, images: list[str]) -> np.ndarray:
    r = requests.post(f"{url}/embed/image", json={"images": images}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"], np.float32)


# --- Weaviate's protocol -----------------------------------------------------------------------------------


def test_weaviate_readiness_is_503_while_the_model_loads_then_204(server):
    assert server["readiness"][0] == 503 and server["readiness"][-1] == 204, server["readiness"]
    live = requests.get(f"{server['url']}/.well-known/live", timeout=5)
    assert live.status_code == 204 and live.content == b""


def test_weaviate_vectorizes_texts_and_images_as_the_native_routes(server):
    url = server["url"]
    images = [b64(image_bytes("JPEG", color=(10, 200, 30))), b64(image_bytes("PNG", color=(0, 0, 250)))]
    both = requests.post(f"{url}/vectorize", json={"texts": ["This is plane", "Blue plane"], "images": images[:1]},
                         timeout=30)
    assert both.status_code == 200, both.text
    body = both.json()
    assert len(body["textVectors"]) == 2 and len(body["imageVectors"]) == 1
    np.testing.assert_array_equal(np.array(body["textVectors"], np.float32),
                                  embed_text(url, ["This is plane", "Blue plane"]))
    only_images = requests.post(f"{url}/vectorize", json={"images": images}, timeout=30).json()
    assert only_images["textVectors"] == [] and len(only_images["imageVectors"]) == 2
    np.testing.assert_array_equal(np.array(only_images["imageVectors"], np.float32), embed_image(url, images))


def test_weaviate_gets_errors_it_can_show(server):
    url = server["url"]
    bad = requests.post(f"{url}/vectorize", json={"texts": ["a"], "images": [b64(image_bytes()), "bm90IGFuIGltYWdl"]},
                        timeout=30)
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("images[1]: invalid_image:")  # Weaviate: "fail with status 400: <error>"
    assert requests.post(f"{url}/vectorize", data=b"{", headers={"Content-Type": "application/json"},
                         timeout=10).json()["code"] == "invalid_json"
    meta = requests.get(f"{url}/meta", timeout=10).json()
    assert meta["service"] == "clipserve" and meta["model"]["variant"] == "english" and meta["model"]["dim"] == 32


def test_the_weaviate_compose_file_points_the_module_at_clipserve():
    compose = yaml.safe_load(snippet("weaviate-compose"))
    env = compose["services"]["weaviate"]["environment"]
    assert env["ENABLE_MODULES"] == "multi2vec-clip" and env["CLIP_INFERENCE_API"] == "http://clipserve:8080"
    assert "clipserve" in compose["services"]


def test_weaviate_routes_with_api_keys_need_the_setting(apps):
    keyed = apps("english", api_keys="k1").test_client()
    assert keyed.get("/.well-known/ready").status_code == 204  # a probe, like /health
    assert keyed.post("/vectorize", json={"texts": ["a"]}).status_code == 401  # never silently open
    assert keyed.post("/embed/text", json={"texts": ["a"]}).status_code == 401
    opened = apps("english", api_keys="k1", weaviate_routes_open=True).test_client()
    assert opened.post("/vectorize", json={"texts": ["a"]}).status_code == 200
    assert opened.get("/meta").status_code == 200
    assert opened.post("/embed/text", json={"texts": ["a"]}).status_code == 401  # only Weaviate's routes


# --- OpenAI's protocol, through the frameworks' own clients ------------------------------------------------


def test_openai_client_takes_2048_inputs_and_names_the_limit_past_it(server):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{server['url']}/v1", api_key="unused", max_retries=0)
    texts = [f"item {i}" for i in range(2048)]
    result = client.embeddings.create(model="english", input=texts)
    assert len(result.data) == 2048 and [d.index for d in result.data] == list(range(2048))
    np.testing.assert_array_equal(np.array([d.embedding for d in result.data[:64]], np.float32),
                                  embed_text(server["url"], texts[:64]))
    with pytest.raises(BadRequestError, match="at most 2048 inputs per request, got 2049"):
        client.embeddings.create(model="english", input=texts + ["one more"])


def test_langchain_default_chunk_size_with_strings_embeds_1500_documents(server):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model="english", base_url=f"{server['url']}/v1", api_key="unused",
                                  check_embedding_ctx_length=False, max_retries=0)
    assert embeddings.chunk_size == 1000  # its default: 1,000 texts per request
    vectors = np.array(embeddings.embed_documents(TEXTS), np.float32)
    np.testing.assert_array_equal(vectors, embed_text(server["url"], TEXTS))
    np.testing.assert_array_equal(np.array(embeddings.embed_query("a cat"), np.float32),
                                  embed_text(server["url"], ["a cat"])[0])


def test_langchain_defaults_send_token_arrays_that_are_decoded(server):
    """No switch at all: LangChain tokenizes with tiktoken and sends ids; the vectors are the texts'."""
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model="english", base_url=f"{server['url']}/v1", api_key="unused", max_retries=0)
    assert embeddings.check_embedding_ctx_length  # the default mode: token arrays
    vectors = np.array(embeddings.embed_documents(TEXTS), np.float32)
    # LangChain re-normalizes each vector (it averages pieces of long texts), hence float tolerance
    np.testing.assert_allclose(vectors, embed_text(server["url"], TEXTS), atol=1e-6)


def test_llamaindex_openai_like_embeds_250_texts_in_batches_of_100(server):
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    model = OpenAILikeEmbedding(model_name="english", api_base=f"{server['url']}/v1", api_key="unused",
                                embed_batch_size=100)
    vectors = np.array(model.get_text_embedding_batch(TEXTS[:250]), np.float32)
    np.testing.assert_array_equal(vectors, embed_text(server["url"], TEXTS[:250]))


# --- docs/clients.md's snippets, as written -----------------------------------------------------------------


def test_the_openai_snippet(server):
    ns = run_snippet("openai", server["url"])
    np.testing.assert_array_equal(np.array(ns["vectors"], np.float32),
                                  embed_text(server["url"], ["a photo of a cat", "a dog"]))
    cat = ns["cat"]
    np.testing.assert_array_equal(np.array(ns["image_vectors"], np.float32), embed_image(server["url"], [cat]))


@pytest.mark.parametrize("name", ["langchain", "langchain-strings", "llamaindex"])
def test_the_framework_snippets(server, name):
    ns = run_snippet(name, server["url"])
    want = embed_text(server["url"], ["a photo of a cat", "a red bicycle by a wall", "a cat"])
    np.testing.assert_allclose(np.array(ns["doc_vectors"], np.float32), want[:2], atol=1e-6)
    if "query_vector" in ns:
        np.testing.assert_allclose(np.array(ns["query_vector"], np.float32), want[2], atol=1e-6)


def test_the_curl_snippet(server):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", snippet("curl")], env={**os.environ,
                            "URL": server["url"]}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"object":"embedding"' in result.stdout and '"index":0' in result.stdout  # /v1/embeddings
    assert '"id":"english"' in result.stdout  # /v1/models


def test_the_qdrant_snippet(server, tiny_model_dir, tmp_path, monkeypatch):
    from batch.cli import main

    rows = tmp_path / "items.csv"
    with rows.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i, text in enumerate(["a red bicycle", "a blue car", "a green tree"]):
            writer.writerow([f"sku-{i}", text])
    assert main(["index", "push", "--input", str(rows), "--qdrant-path", str(tmp_path / "qdrant-data"),
                 "--collection", "products", "--local", "--model-dir", str(tiny_model_dir)]) == 0
    monkeypatch.chdir(tmp_path)
    ns = run_snippet("qdrant", server["url"])
    assert ns["ids"][0] == "sku-0"  # the item pushed with the query's own text is nearest
    assert sorted(ns["ids"]) == ["sku-0", "sku-1", "sku-2"]
    ns["qdrant"].close()


def test_every_snippet_on_the_page_is_run_here_or_by_the_clients_tests():
    names = set(re.findall(r"<!-- snippet:([\w-]+) -->", DOCS.read_text()))
    tested = {"openai", "curl", "langchain", "langchain-strings", "llamaindex", "weaviate-compose", "qdrant"}
    assert names - tested == CLIENT_SNIPPETS  # the Python client's: tests/clients/test_client_docs.py
