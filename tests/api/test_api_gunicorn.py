"""End to end: the README's gunicorn command on a free loopback port with a tiny bundle, called with ``requests``."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from api_helpers import b64, free_port, image_bytes, serve_images

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120
# The command from the README's quick start.
COMMAND = ["gunicorn", "-c", "infra/gunicorn.conf.py", "handler.wsgi:app"]


def gunicorn_command() -> list[str]:
    script = Path(sys.executable).with_name("gunicorn")
    return [str(script), *COMMAND[1:]] if script.exists() else [sys.executable, "-m", *COMMAND]


@pytest.fixture(scope="module")
def images():
    with serve_images() as server:
        yield server


@pytest.fixture(scope="module")
def service(tiny_model_dir, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("gunicorn") / "server.log"
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "MODEL_VARIANT": "english", "HOST": "127.0.0.1",
           "PORT": str(port), "ALLOW_PRIVATE_URLS": "true", "HTTP_THREADS": "4", "MAX_ITEMS": "16"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(gunicorn_command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        first_answer = wait_until_ready(base, process, log_path)
        yield {"base": base, "process": process, "first_answer": first_answer, "log": log_path}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_until_ready(base: str, process: subprocess.Popen, log_path: Path) -> int:
    """Poll /health until 200; return the status of the first answer (503 while loading, or 200)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    first: int | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            status = requests.get(f"{base}/health", timeout=5).status_code
        except requests.RequestException:  # not listening yet, or too busy importing torch to answer
            time.sleep(0.1)
            continue
        first = first if first is not None else status
        if status == 200:
            return first
        assert status == 503
        time.sleep(0.1)
    pytest.fail(f"not ready within {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def vectors(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def expected_images(encoder, blobs):
    return encoder.encode_images([encoder.prepare_image(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def test_command_is_the_one_in_the_readme():
    assert " ".join(COMMAND) in (ROOT / "README.md").read_text()


def test_port_opens_at_once_and_health_is_503_until_the_model_is_loaded(tiny_model_dir, tmp_path):
    """The README's command with a loader made slow (3 s): /health answers 503 "loading" meanwhile, then 200."""
    port = free_port()
    slow_app = tmp_path / "slow_wsgi.py"
    slow_app.write_text("import time\nimport models.loader as loader\n_load = loader.load_encoder\n"
                        "def slow(*a, **k):\n    time.sleep(3)\n    return _load(*a, **k)\n"
                        "loader.load_encoder = slow\nfrom handler.wsgi import app  # noqa: E402\n")
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "MODEL_VARIANT": "english", "HOST": "127.0.0.1",
           "PORT": str(port), "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*gunicorn_command()[:-1], "slow_wsgi:app"], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()[-2000:]
            try:
                first = requests.get(f"{base}/health", timeout=5)
                break
            except requests.RequestException:
                time.sleep(0.05)
        assert first.status_code == 503 and first.json() == {"status": "loading"}
        loading = requests.post(f"{base}/embed/text", json={"texts": ["a"]}, timeout=5)
        assert loading.status_code == 503 and loading.json()["error"]["code"] == "model_loading"
        assert wait_until_ready(base, process, log_path) == 503
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def test_health_and_meta_endpoints(service):
    base = service["base"]
    assert requests.get(f"{base}/health", timeout=5).json() == {"status": "ok"}
    info = requests.get(f"{base}/", timeout=5).json()
    assert info["status"] == "ok" and info["model"]["variant"] == "english" and info["limits"]["max_items"] == 16
    doc = requests.get(f"{base}/openapi.json", timeout=5).json()
    assert "/embed/image" in doc["paths"]
    docs = requests.get(f"{base}/docs", timeout=5)
    assert docs.status_code == 200 and docs.headers["Content-Type"].startswith("text/html")


def test_embed_text(service, english_encoder):
    texts = ["a photo of a cat", "a dog"]
    body = requests.post(f"{service['base']}/embed/text", json={"texts": texts}, timeout=30).json()
    assert np.array_equal(vectors(body["embeddings"]), english_encoder.encode_text(texts).embeddings)
    raw = requests.post(f"{service['base']}/embed/text",
                        json={"texts": texts, "normalize": False, "encoding_format": "base64"}, timeout=30).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(v), "<f4") for v in raw["embeddings"]])
    assert np.array_equal(decoded, english_encoder.encode_text(texts, normalize=False).embeddings)


def test_embed_image_by_url_and_base64(service, images, english_encoder):
    body = requests.post(f"{service['base']}/embed/image", timeout=30, json={
        "images": [f"{images.base}/img.png", b64(images.jpg), f"{images.base}/status?code=404"]}).json()
    assert np.array_equal(vectors(body["embeddings"][:2]), expected_images(english_encoder, [images.png, images.jpg]))
    assert body["embeddings"][2] is None and body["errors"][0]["index"] == 2
    assert body["errors"][0]["code"] == "fetch_failed"
    assert any(hit.startswith("/img.png") for hit in images.hits)


def test_embed_image_multipart(service, english_encoder):
    cat, dog = image_bytes("PNG"), image_bytes("JPEG", color=(0, 90, 200))
    files = [("images", ("cat.png", cat, "image/png")), ("images", ("dog.jpg", dog, "image/jpeg"))]
    response = requests.post(f"{service['base']}/embed/image", files=files, timeout=30)
    assert response.status_code == 200, response.text
    assert np.array_equal(vectors(response.json()["embeddings"]), expected_images(english_encoder, [cat, dog]))


def test_embed_mixed_and_score(service, english_encoder):
    base, png = service["base"], image_bytes("PNG")
    mixed = requests.post(f"{base}/embed/mixed", json={"texts": ["a cat"], "images": [b64(png)]}, timeout=30).json()
    assert np.array_equal(vectors(mixed["text_embeddings"]), english_encoder.encode_text(["a cat"]).embeddings)
    assert np.array_equal(vectors(mixed["image_embeddings"]), expected_images(english_encoder, [png]))
    score = requests.post(f"{base}/score", json={"texts": ["a cat", "a dog"], "images": [b64(png)]}, timeout=30).json()
    text = vectors(mixed["text_embeddings"])[0]
    image = vectors(mixed["image_embeddings"])[0]
    assert np.isclose(score["cosine"][0][0], float(text @ image) / np.linalg.norm(text) / np.linalg.norm(image),
                      atol=1e-5)
    assert np.isclose(sum(score["probs"][0]), 1.0)
    files = [("images", ("cat.png", png, "image/png"))]
    multipart = requests.post(f"{base}/score", files=files, data={"texts": ["a cat", "a dog"]}, timeout=30).json()
    assert np.allclose(multipart["cosine"], score["cosine"], atol=1e-6)


def test_errors_are_json(service):
    base = service["base"]
    for response, status, code in [
        (requests.get(f"{base}/nope", timeout=5), 404, "not_found"),
        (requests.get(f"{base}/embed/text", timeout=5), 405, "method_not_allowed"),
        (requests.post(f"{base}/embed/text", data="texts=a", timeout=5), 415, "unsupported_media_type"),
        (requests.post(f"{base}/embed/text", data="{", headers={"Content-Type": "application/json"}, timeout=5),
         400, "invalid_json"),
        (requests.post(f"{base}/embed/image", json={"images": ["nope!"]}, timeout=5), 422, "all_images_failed"),
    ]:
        assert response.status_code == status
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"]["code"] == code


def test_concurrent_requests_get_their_own_vectors(service, english_encoder):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"text number {i}" for i in range(24)]
    expected = {t: english_encoder.encode_text([t]).embeddings[0] for t in texts}

    def call(text):
        body = requests.post(f"{service['base']}/embed/text", json={"texts": [text]}, timeout=30).json()
        return text, vectors(body["embeddings"][0])

    with ThreadPoolExecutor(8) as pool:
        for text, got in pool.map(call, texts):
            # Batched with other requests' texts, so equal to float tolerance rather than bit for bit.
            assert np.allclose(got, expected[text], atol=1e-5), text
