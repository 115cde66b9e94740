"""Schemathesis drives every documented operation from /openapi.json against the app on a tiny bundle:
no 5xx, and every response matches the documented status codes, content types and schemas.

Bounded: a fixed number of examples per operation, so the whole module stays around a minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

from handler.app import create_app
from infra.settings import Settings

EXAMPLES_PER_OPERATION = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_app(tiny_model_dir):
    settings = Settings(model_dir=tiny_model_dir, max_items=4, max_text_chars=200, request_timeout_s=10, precision="fp32", runtime="torch",
                        fetch_connect_timeout_s=0.3, fetch_timeout_s=0.5, max_body_bytes=256 * 1024)
    app = create_app(settings)
    engine = app.extensions["clipserve"].engine
    engine.start()
    assert engine.wait_ready(120), engine.load_error
    yield app
    engine.shutdown()


def _operations(app) -> list:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_documents_every_api_route(fuzz_app):
    labels = {op.label for op in _operations(fuzz_app)}
    assert {"POST /embed/text", "POST /embed/image", "POST /embed/mixed", "POST /score", "GET /health",
            "POST /v1/embeddings", "GET /v1/models"} <= labels


POSITIVE_OPERATIONS = ["POST /embed/text", "POST /embed/image", "POST /embed/mixed", "POST /score", "GET /",
                       "GET /health", "POST /v1/embeddings", "GET /v1/models"]
NEGATIVE_OPERATIONS = ["POST /embed/text", "POST /embed/image", "POST /embed/mixed", "POST /score",
                       "POST /v1/embeddings"]


@pytest.mark.parametrize("mode, label", [(GenerationMode.POSITIVE, op) for op in POSITIVE_OPERATIONS]
                         + [(GenerationMode.NEGATIVE, op) for op in NEGATIVE_OPERATIONS])
def test_operation_conforms_to_its_schema(fuzz_app, mode, label):
    """Valid requests (positive) and schema-violating ones (negative, which must be refused with a 4xx)."""
    # schemathesis' lazy pytest fixture does not run on pytest 9, so the hypothesis loop is driven here.
    [operation] = [op for op in _operations(fuzz_app) if op.label == label]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        # Refusal of schema-violating data is checked for JSON bodies only: in multipart every field is a
        # string, so a "wrong type" cannot be expressed and the server rightly reads it as text.
        rejects = mode is GenerationMode.NEGATIVE and case.media_type == "application/json"
        case.call_and_validate(checks=CHECKS + ([negative_data_rejection] if rejects else []))

    check()
