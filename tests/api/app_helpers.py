"""Apps built by the production factory on the tiny bundles, for tests/api (imported by name: a module called
``conftest`` would be whichever conftest.py pytest loaded last)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

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
