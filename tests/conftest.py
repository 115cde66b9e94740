"""Session fixtures shared by every test area: tiny random model bundles and encoders loaded from them.

Bundles are made once per session by the same code as `python -m models.tiny` (real baked
layout, random weights, a few MB) and loaded through the production `load_encoder`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import models  # noqa: F401  (offline env vars before anything imports huggingface_hub)

# Tests compare the service's vectors exactly with the fp32 encoder's; servers they start inherit this.
# bf16 has its own tests (tests/models/test_model_precision.py), which ask for it explicitly.
os.environ["PRECISION"] = "fp32"
# Likewise on torch: the ONNX runtime has its own tests (tests/models/test_model_onnx.py), which ask for it.
os.environ["RUNTIME"] = "torch"

TINY_SEED = 0
# CI sets this: a test that needs a system tool (redis-server, chromium, promtool) fails instead of skipping.
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the whole session; ``redis`` hands it out emptied."""
    from servers import RedisServer, need_tool

    server = RedisServer(need_tool("redis-server"), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server):
    redis_server.reset()
    yield redis_server
    redis_server.resume()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODEL_DIR holding tiny `english/` and `multilingual/` bundles. Treat as read-only."""
    from models.tiny import make_bundle

    out = tmp_path_factory.mktemp("tiny_models")
    for variant in ("english", "multilingual"):
        make_bundle(variant, out, size="tiny", seed=TINY_SEED)
    return out


SIGLIP_VARIANTS = ("siglip2-b32", "siglip2-b16", "siglip2-so400m")


@pytest.fixture(scope="session")
def siglip_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODEL_DIR holding tiny bundles of the three SigLIP 2 variants (tiny timm towers, a tiny Gemma-style
    tokenizer), their ONNX graphs exported and checked. Treat as read-only."""
    from models.tiny import make_bundle

    out = tmp_path_factory.mktemp("siglip_models")
    for variant in SIGLIP_VARIANTS:
        make_bundle(variant, out, size="tiny", seed=TINY_SEED)
    return out


@pytest.fixture(scope="session")
def english_encoder(tiny_model_dir: Path):
    from models.loader import load_encoder

    return load_encoder("english", tiny_model_dir)


@pytest.fixture(scope="session")
def multilingual_encoder(tiny_model_dir: Path):
    from models.loader import load_encoder

    return load_encoder("multilingual", tiny_model_dir)


@pytest.fixture(scope="session")
def real_size_model_dir(tmp_path_factory):
    """english (0.6 GB) and multilingual (2.7 GB) with random weights, their ONNX graphs exported and checked
    as bake does; made in a child process, once per session (slow tests only)."""
    out = tmp_path_factory.mktemp("real_models")
    for variant in ("english", "multilingual"):
        subprocess.run([sys.executable, "-m", "models.tiny", "--variant", variant, "--size", "real", "--out", str(out)],
                       cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True, timeout=1500)
    return out
