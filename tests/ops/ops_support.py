"""Helpers for the ops tests: a minimal Flask app wired like the real one, and log capture."""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Iterator

from flask import Flask, request

from handler import auth, observability
from handler.errors import AllImagesFailed, register_error_handlers
from infra.logs import configure_logging
from infra.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def minimal_app(settings: Settings, engine: Any = None) -> Flask:
    """Observability and auth hooked in the same order as the service, around two toy views."""
    app = Flask("ops_test")
    register_error_handlers(app)
    observability.init_app(app, settings, engine)
    auth.init_app(app, settings)
    inner = logging.getLogger("ops_test.view")

    @app.post("/embed/text")
    def embed_text():  # noqa: ANN202
        texts = request.get_json()["texts"]
        observability.record_items(texts=len(texts))
        observability.record_batch(len(texts), 0.004)
        inner.info("encoding inside the view")
        return {"embeddings": [[0.0] for _ in texts]}

    @app.post("/embed/image")
    def embed_image():  # noqa: ANN202
        images = request.get_json()["images"]
        observability.record_items(images=len(images))
        observability.record_image_errors(["fetch_timeout"] + ["invalid_image"] * (len(images) - 1))
        raise AllImagesFailed(f"none of the {len(images)} images could be used")

    @app.get("/health")
    def health():  # noqa: ANN202
        return {"status": "ok"}

    return app


class LogCapture:
    """Routes the process's logging into a buffer through ``configure_logging``; restores the root logger after."""

    def __init__(self, settings: Settings) -> None:
        self.buffer = io.StringIO()
        root = logging.getLogger()
        self._saved = (list(root.handlers), root.level)
        configure_logging(settings, stream=self.buffer)

    def lines(self) -> list[dict[str, Any]]:
        """Every line parsed as JSON: a line that is not JSON fails the test right here."""
        return [json.loads(line) for line in self.buffer.getvalue().splitlines() if line.strip()]

    def request_lines(self) -> list[dict[str, Any]]:
        return [entry for entry in self.lines() if "route" in entry and "status" in entry]

    def close(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        handlers, level = self._saved
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def capture(settings: Settings) -> Iterator[LogCapture]:
    cap = LogCapture(settings)
    try:
        yield cap
    finally:
        cap.close()
