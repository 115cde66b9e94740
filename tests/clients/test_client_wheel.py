"""The client as its users get it: the wheel built by `python -m build`, installed into a fresh venv (no torch, no
Flask, no server code), every method run sync and async against the real gunicorn on tiny bundles
(tests/clients/remote_suite.py), and the answers checked here against the service's own /embed/* answers."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from servers import REPO, GunicornServer, free_port, gunicorn

CLIENT = REPO / "clients" / "python"
SUITE = Path(__file__).with_name("remote_suite.py")
PICTURES = 50
BAD_INDEX = 137
LONG = 10_000


@pytest.fixture(scope="session")
def client_python(tmp_path_factory) -> Path:
    """The python of a fresh venv holding the client's wheel with its optional extras (PIL images, progress)."""
    root = tmp_path_factory.mktemp("client-wheel")
    source = shutil.copytree(CLIENT, root / "source", ignore=shutil.ignore_patterns("build", "dist", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"),
                    str(source)], check=True, capture_output=True, timeout=300)  # built from a copy: no build/ here
    wheel = next((root / "dist").glob("clipserve_client-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[progress,images]"],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def test_the_wheel_brings_httpx_and_numpy_and_never_the_server(client_python):
    listed = subprocess.run([str(client_python), "-m", "pip", "list", "--format", "json"], capture_output=True,
                            text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"clipserve-client", "httpx", "numpy"} <= names
    assert not names & {"torch", "flask", "gunicorn", "open-clip-torch", "clipserve"}
    typed = subprocess.run([str(client_python), "-c", "import clipserve_client, pathlib; "
                            "print((pathlib.Path(clipserve_client.__file__).parent / 'py.typed').exists())"],
                           capture_output=True, text=True, check=True).stdout
    assert typed.strip() == "True"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("client-inputs")
    rng = np.random.default_rng(7)
    for k in range(PICTURES):
        pixels = (rng.random((24 + k % 5, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img-{k:02d}.png")
    return folder


@pytest.fixture(scope="module")
def image_url(inputs):
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(inputs), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_suite(python: Path, phase: str, url: str, inputs: Path, out: Path, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.Popen([str(python), str(SUITE), phase, url, str(inputs), str(out)], cwd=out, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def reference_images(url: str, inputs: Path) -> np.ndarray:
    files = sorted(inputs.glob("img-*.png"))
    body = {"images": [base64.b64encode(p.read_bytes()).decode() for p in files], "encoding_format": "float"}
    answer = requests.post(f"{url}/embed/image", json=body, timeout=60).json()
    return np.asarray(answer["embeddings"], np.float32)


def reference_texts(url: str, texts: list[str]) -> np.ndarray:
    """/embed/text's vectors, 64 at a time (waiting out RATE_LIMIT's 429s)."""
    rows: list = []
    while len(rows) < len(texts):
        response = requests.post(f"{url}/embed/text", json={"texts": texts[len(rows):len(rows) + 64]}, timeout=60)
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", 1)))
            continue
        rows += response.json()["embeddings"]
    return np.asarray(rows, np.float32)


def test_every_method_sync_and_async_from_the_wheel(client_python, inputs, image_url, live_index, tiny_model_dir,
                                                    tmp_path):
    texts = [f"a photo of thing number {i}" for i in range(300)]
    (inputs / "spec.json").write_text(json.dumps({"texts": texts, "image_url": image_url, "bad_index": BAD_INDEX,
                                                  "long_texts": []}))
    folder, collection = live_index
    with gunicorn(tiny_model_dir, tmp_path / "server.log", ALLOW_PRIVATE_URLS="true", QDRANT_PATH=str(folder),
                  QDRANT_COLLECTION=collection) as server:
        suite = run_suite(client_python, "methods", server.url, inputs, tmp_path)
        stdout, stderr = suite.communicate(timeout=600)
        assert suite.returncode == 0, stderr[-4000:]
        text_ref, image_ref = reference_texts(server.url, texts), reference_images(server.url, inputs)
        labels = reference_texts(server.url, ["a red square", "a blue circle"])
    got = np.load(tmp_path / "methods.npz")
    report = json.loads((tmp_path / "methods.json").read_text())
    assert report["health"] == report["async_health"] == "ok"
    assert report["models"] == report["async_models"] == ["english"] and report["info_model"] == "english"
    # vectors equal the service's own /embed/* answers, in order, sync and async alike
    np.testing.assert_allclose(got["texts"], text_ref, atol=1e-6)
    np.testing.assert_allclose(got["async_texts"], got["texts"], atol=1e-6)
    expected = image_ref[report["which"]]
    good = np.arange(500) != BAD_INDEX
    np.testing.assert_allclose(got["images"][good], expected[good], atol=1e-6)
    np.testing.assert_allclose(got["async_images"], got["images"], atol=1e-6)
    # the planted bad image is reported at its index; every other image of the 500 succeeded
    assert report["image_errors"] == report["async_image_errors"] == [[BAD_INDEX, "invalid_image"]]
    assert np.isnan(got["images"][BAD_INDEX]).all()
    np.testing.assert_allclose(got["mixed_texts"], text_ref[:5], atol=1e-6)
    np.testing.assert_allclose(got["mixed_images"], expected[:5], atol=1e-6)
    np.testing.assert_allclose(got["async_mixed_images"], got["mixed_images"], atol=1e-6)
    cosine = expected[:10] @ labels.T
    np.testing.assert_allclose(got["score_cosine"], cosine, atol=1e-5)
    np.testing.assert_allclose(got["async_score_cosine"], got["score_cosine"], atol=1e-6)
    assert got["score_probs"].shape == (10, 2) and np.allclose(got["score_probs"].sum(axis=1), 1)
    assert got["zero_shot_probs"].shape == (10, 2)
    assert report["zero_shot_best"] == [["red", "blue"][int(np.argmax(row))] for row in got["zero_shot_probs"]]
    np.testing.assert_allclose(got["async_zero_shot_probs"], got["zero_shot_probs"], atol=1e-6)
    # the live index: a text written, an image refused by a text collection (its own error), found, deleted
    assert report["upserted"] == 1 and report["upsert_errors"] == [[1, "wrong_modality"]]
    assert report["search_text"][0] == "new-1" and report["async_search_text"][0] == "new-3"
    assert report["search_vector"][0] in ("a", "b", "new-1")
    assert report["deleted"] == 1 and report["async_deleted"] == 1 and "new-1" not in report["search_after_delete"]
    assert report["unknown_model"] == "unknown_model"
    # the service-class names
    np.testing.assert_allclose(got["compat_text"], text_ref[0], atol=1e-6)
    np.testing.assert_allclose(got["compat_batch_images"], expected[:3], atol=1e-6)
    assert report["compat_similarity"] == pytest.approx(float(text_ref[0] @ expected[0]), abs=1e-5)
    assert report["compat_info"] == "english"


def test_10000_texts_survive_429s_and_a_restart_and_come_back_in_order(client_python, inputs, tiny_model_dir,
                                                                      tmp_path):
    texts = [f"caption {i}: {'a dog' if i % 3 else 'a cat'} on a {['sofa', 'boat', 'hill'][i % 3]}"
             for i in range(LONG)]
    (inputs / "spec.json").write_text(json.dumps({"texts": [], "image_url": "", "bad_index": 0, "long_texts": texts}))
    port = free_port()
    env = {"RATE_LIMIT": "25/second", "TEXT_CACHE_SIZE": "0"}
    server = GunicornServer(tiny_model_dir, tmp_path / "first.log", port=port, **env)
    try:
        server.wait_healthy()
        suite = run_suite(client_python, "long", server.url, inputs, tmp_path)
        assert suite.stdout.readline().strip() == "started"
        time.sleep(2.0)  # requests in flight, some of them rate-limited
        server.stop()    # connections drop mid-run; the client retries until the service is back
        server = GunicornServer(tiny_model_dir, tmp_path / "second.log", port=port, **env)
        stdout, stderr = suite.communicate(timeout=600)
        assert suite.returncode == 0, stderr[-4000:]
        expected = reference_texts(server.url, texts)
    finally:
        server.stop()
    got = np.load(tmp_path / "long.npy")
    report = json.loads((tmp_path / "long.json").read_text())
    assert report["errors"] == 0 and got.shape == (LONG, expected.shape[1])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    retries = report["retries"]
    assert retries.get("HTTP 429", 0) >= 1, retries                      # rate-limited, waited out
    dropped = sum(n for reason, n in retries.items() if not reason.startswith("HTTP 4"))
    assert dropped >= 1, retries                                         # the restart: connections or 503s
