"""Fixtures for the HTTP tests: apps built by the production factory on the tiny bundles."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from api_helpers import serve_images
from engine import EmbeddingEngine
from handler.app import create_app, load_bundle_encoder
from infra.settings import Settings

READY_TIMEOUT_S = 120


def tiny_settings(model_dir: Path, **overrides: Any) -> Settings:
    base = Settings(model_dir=model_dir, max_items=8, max_text_chars=400, fetch_timeout_s=2.0,
                    fetch_connect_timeout_s=1.0, request_timeout_s=20.0, batch_max_wait_ms=2.0, precision="fp32",
                    runtime="torch")
    return dataclasses.replace(base, **overrides)


def ready(app):
    engine = app.extensions["clipserve"].engine
    engine.start()
    assert engine.wait_ready(READY_TIMEOUT_S), engine.load_error
    return app


@pytest.fixture(scope="session")
def apps(tiny_model_dir):
    """apps(variant, **settings) -> a ready app through the production loader; cached per arguments."""
    made: dict[tuple, Any] = {}

    def get(variant: str = "english", **overrides: Any):
        key = (variant, tuple(sorted(overrides.items())))
        if key not in made:
            made[key] = ready(create_app(tiny_settings(tiny_model_dir, model_variant=variant, **overrides)))
        return made[key]

    yield get
    for app in made.values():
        app.extensions["clipserve"].engine.shutdown()


@pytest.fixture
def app_with_encoder(tiny_model_dir):
    """app_with_encoder(wrap, **settings): the real tiny encoder wrapped by ``wrap`` (to make it fail or hang)."""
    made = []

    def build(wrap: Callable[[Any], Any], **overrides: Any):
        settings = tiny_settings(tiny_model_dir, **overrides)
        engine = EmbeddingEngine.from_settings(settings, lambda: wrap(load_bundle_encoder(settings)))
        app = ready(create_app(settings, engine))
        made.append(app)
        return app

    yield build
    for app in made:
        app.extensions["clipserve"].engine.shutdown(timeout=1)


@pytest.fixture
def image_server():
    with serve_images() as server:
        yield server


class Gate:
    """Wraps an encoder so that its model calls wait until ``release()``; ``entered`` is set on the first call."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self.info = encoder.info
        self.entered = threading.Event()
        self.opened = threading.Event()

    def prepare_image(self, image):
        return self._encoder.prepare_image(image)

    def prepare_text(self, text):
        return self._encoder.prepare_text(text)

    def encode_prepared_texts(self, items, normalize=True):
        self.entered.set()
        self.opened.wait(30)
        return self._encoder.encode_prepared_texts(items, normalize=normalize)

    def encode_images(self, images, normalize=True):
        self.entered.set()
        self.opened.wait(30)
        return self._encoder.encode_images(images, normalize=normalize)

    def release(self) -> None:
        self.opened.set()
