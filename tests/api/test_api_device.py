"""GPU serving, as far as a CPU can check it: DEVICE=auto picks the CPU here, DEVICE=cuda without a GPU stops the
boot with the reason, a CUDA out-of-memory in a batch is retried in smaller pieces (one item each), and a CUDA error
that leaves the context unusable turns /health unhealthy. The GPU itself is checked by bench/bench_gpu.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jpegs import exact, photo, png, with_device_jpeg
from models.device import DeviceUnavailable, resolve_device

REPO = Path(__file__).resolve().parents[2]


ON_GPU = torch.cuda.is_available()
NO_GPU_ONLY = pytest.mark.skipif(ON_GPU, reason="checks the machine without a GPU")


@NO_GPU_ONLY
def test_auto_picks_the_cpu_and_cuda_without_a_gpu_says_why(monkeypatch):
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceUnavailable, match="DEVICE=cuda, but torch .* sees no GPU"):
        resolve_device("cuda")


@NO_GPU_ONLY
def test_the_service_does_not_start_on_cuda_without_a_gpu(tiny_model_dir):
    from handler.app import create_app
    from infra.settings import Settings, SettingsError

    with pytest.raises(DeviceUnavailable, match="deploy.sh cloudrun --gpu"):
        create_app(Settings(model_dir=tiny_model_dir, device="cuda"))
    with pytest.raises(DeviceUnavailable, match="IMAGE_DECODE=gpu decodes JPEGs on the GPU"):
        create_app(Settings(model_dir=tiny_model_dir, image_decode="gpu"))
    with pytest.raises(SettingsError, match="IMAGE_DECODE=gpu .* needs DEVICE=cuda or auto"):
        Settings.from_env({"IMAGE_DECODE": "gpu", "DEVICE": "cpu"})
    for variables, message in (({"DEVICE": "cuda"}, "sees no GPU"), ({"IMAGE_DECODE": "gpu"}, "IMAGE_DECODE=gpu")):
        env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), **variables}
        out = subprocess.run([sys.executable, "-m", "infra.preflight"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 78 and message in out.stderr, out.stderr


def test_get_root_reports_the_device(apps):
    model = apps("english").test_client().get("/").json["model"]
    if ON_GPU:
        assert model["device"] == "cuda" and model["gpu"] and model["image_decode"] == "gpu"
    else:
        assert model["device"] == "cpu" and model["gpu"] is None and model["image_decode"] == "cpu"


class FlakyGpu:
    """The tiny encoder with a GPU's failure modes: out of memory above `fits` items, or a dead context."""

    def __init__(self, encoder, fits: int | None = None, dead: bool = False) -> None:
        self._encoder, self.info, self.fits, self.dead = encoder, encoder.info, fits, dead
        self.calls: list[int] = []

    def prepare_text(self, text):
        return self._encoder.prepare_text(text)

    def prepare_image(self, image):
        return self._encoder.prepare_image(image)

    def encode_prepared_texts(self, items, normalize=True):
        self._fail(len(items))
        return self._encoder.encode_prepared_texts(items, normalize=normalize)

    def encode_images(self, images, normalize=True):
        self._fail(len(images))
        return self._encoder.encode_images(images, normalize=normalize)

    def _fail(self, n: int) -> None:
        self.calls.append(n)
        if self.dead:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if self.fits is not None and n > self.fits:
            raise type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_an_out_of_memory_batch_is_retried_item_by_item(app_with_encoder, english_encoder):
    wrapped = {}

    def wrap(encoder):
        wrapped["gpu"] = FlakyGpu(encoder, fits=1)
        return wrapped["gpu"]

    app = app_with_encoder(wrap, batch_max_wait_ms=200)
    texts = ["a cat", "a dog", "a red car", "a house"]
    response = app.test_client().post("/embed/text", json={"texts": texts})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json["embeddings"], english_encoder.encode_text(texts).embeddings, atol=1e-6)
    assert wrapped["gpu"].calls[0] == 4 and wrapped["gpu"].calls[1:] == [1, 1, 1, 1]
    assert app.test_client().get("/health").status_code == 200  # an OOM leaves the instance healthy


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (bench/bench_gpu.py runs it)")
def test_a_real_cuda_out_of_memory_is_retried_and_leaves_the_instance_healthy(app_with_encoder, english_encoder):
    class Greedy(FlakyGpu):
        def _fail(self, n):
            self.calls.append(n)
            if n > 1:
                torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # a petabyte: torch.OutOfMemoryError

    wrapped = {}
    app = app_with_encoder(lambda encoder: wrapped.setdefault("gpu", Greedy(encoder)), batch_max_wait_ms=200)
    assert app.test_client().get("/").json["model"]["device"] == "cuda"
    texts = ["a cat", "a dog", "a red car"]
    response = app.test_client().post("/embed/text", json={"texts": texts})
    assert response.status_code == 200 and wrapped["gpu"].calls == [3, 1, 1, 1]
    np.testing.assert_allclose(response.json["embeddings"], english_encoder.encode_text(texts).embeddings, atol=1e-4)
    assert app.test_client().get("/health").status_code == 200


def test_a_dead_cuda_context_makes_health_unhealthy(app_with_encoder):
    app = app_with_encoder(lambda encoder: FlakyGpu(encoder, dead=True))
    client = app.test_client()
    assert client.post("/embed/text", json={"texts": ["a cat"]}).status_code == 500
    health = client.get("/health")
    assert health.status_code == 503 and health.json["status"] == "unhealthy"
    assert "the GPU failed" in health.json["reason"]


def test_embed_image_with_the_device_jpeg_path_reports_the_bad_image_alone(app_with_encoder, english_encoder,
                                                                           tiny_model_dir):
    preprocess = json.loads((tiny_model_dir / "english" / "manifest.json").read_text())["preprocess"]
    app = app_with_encoder(lambda encoder: with_device_jpeg(encoder, preprocess))
    good, other = photo(seed=10), photo(1200, 900, seed=11)
    images = [good, good[:5000], png(), other]
    response = app.test_client().post("/embed/image", json={"images": [base64.b64encode(i).decode() for i in images]})
    assert response.status_code == 200, response.json
    body = response.json
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(1, "invalid_image")]
    assert body["embeddings"][1] is None
    for i in (0, 2, 3):
        assert float(np.asarray(body["embeddings"][i]) @ exact(english_encoder, images[i])) >= 0.999
    assert app.test_client().get("/").json["model"]["image_decode"] == "gpu"
