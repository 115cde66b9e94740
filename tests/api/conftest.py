"""Fixtures for the HTTP tests: apps built by the production factory on the tiny bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from api_helpers import serve_images
from app_helpers import ready, tiny_settings
from engine import EmbeddingEngine
from handler.app import create_app, load_bundle_encoder

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
