"""infra/lambda_handler.py fed Lambda Function URL events (payload format 2.0), as AWS sends them.

The app behind the handler is the production one on a tiny bundle; embeddings are compared with
the encoder loaded from the same bundle.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from flask import Response
from PIL import Image
from urllib3 import encode_multipart_formdata

from infra.lambda_handler import build_app, build_handler
from infra.preflight import VariantNotBaked
from infra.settings import Settings

MAX_BODY = 256 * 1024


def function_url_event(method: str, path: str, body: bytes | str | None = None, *,
                       content_type: str | None = None, base64_body: bool = False,
                       query: str = "") -> dict[str, Any]:
    """A Function URL (payload 2.0) event, shaped like the ones Lambda delivers."""
    headers = {"host": "abc123.lambda-url.us-east-1.on.aws", "user-agent": "curl/8.5.0",
               "x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.7", "x-forwarded-port": "443"}
    if content_type:
        headers["content-type"] = content_type
    if isinstance(body, str):
        body = body.encode()
    event: dict[str, Any] = {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous", "apiId": "abc123", "domainName": headers["host"], "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7",
                     "userAgent": "curl/8.5.0"},
            "requestId": "9d1c2f3e-0000-4000-8000-000000000000", "routeKey": "$default", "stage": "$default",
            "time": "23/Nov/2026:19:00:00 +0000", "timeEpoch": 1795460400000,
        },
        "isBase64Encoded": base64_body,
    }
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if base64_body else body.decode()
    return event


def response_json(result: dict[str, Any]) -> Any:
    body = result.get("body", "")
    if result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body)


def png_bytes(color: tuple[int, int, int], size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def settings(tiny_model_dir) -> Settings:
    return Settings(model_dir=tiny_model_dir, precision="fp32", runtime="torch", model_variant="english", max_body_bytes=MAX_BODY,
                    request_timeout_s=30.0, batch_max_wait_ms=1.0)


@pytest.fixture(scope="module")
def app(settings):
    app = build_app(settings)
    yield app
    app.extensions["clipserve"].engine.shutdown()


@pytest.fixture(scope="module")
def handler(app):
    return build_handler(app=app)


def test_model_is_loaded_when_the_handler_is_built(app):
    """Init-phase loading: the first invocation must not wait for the model."""
    assert app.extensions["clipserve"].engine.wait_ready(timeout=0)


def test_health_is_ok(handler):
    result = handler(function_url_event("GET", "/health"), None)
    assert result["statusCode"] == 200
    assert response_json(result)["status"] == "ok"


def test_json_body_text_embeddings_match_the_encoder(handler, english_encoder):
    texts = ["a photo of a cat", "ein Hund"]
    event = function_url_event("POST", "/embed/text", json.dumps({"texts": texts}), content_type="application/json")
    result = handler(event, None)
    assert result["statusCode"] == 200, result
    assert {k.lower(): v for k, v in result["headers"].items()}["content-type"].startswith("application/json")
    embeddings = np.array(response_json(result)["embeddings"], dtype=np.float32)
    expected = english_encoder.encode_text(texts, normalize=True).embeddings
    assert embeddings.shape == (2, english_encoder.info.dim)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


def test_base64_json_body_gives_the_same_answer(handler):
    payload = json.dumps({"texts": ["a photo of a cat"]})
    plain = handler(function_url_event("POST", "/embed/text", payload, content_type="application/json"), None)
    encoded = handler(function_url_event("POST", "/embed/text", payload, content_type="application/json",
                                         base64_body=True), None)
    assert encoded["statusCode"] == 200
    assert response_json(encoded)["embeddings"] == response_json(plain)["embeddings"]


def test_multipart_upload_arrives_intact(handler, english_encoder):
    """Function URLs base64-encode binary bodies; the PNG must reach the model byte for byte."""
    images = [png_bytes((200, 30, 30)), png_bytes((20, 20, 220))]
    body, content_type = encode_multipart_formdata(
        [("images", ("red.png", images[0], "image/png")), ("images", ("blue.png", images[1], "image/png"))])
    result = handler(function_url_event("POST", "/embed/image", body, content_type=content_type,
                                        base64_body=True), None)
    assert result["statusCode"] == 200, result
    got = np.array(response_json(result)["embeddings"], dtype=np.float32)
    prepared = [english_encoder.prepare_image(Image.open(io.BytesIO(data)).convert("RGB")) for data in images]
    expected = english_encoder.encode_images(prepared, normalize=True)
    assert got.shape == (2, english_encoder.info.dim)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_unknown_path_is_a_json_404(handler):
    result = handler(function_url_event("GET", "/no/such/endpoint"), None)
    assert result["statusCode"] == 404
    assert "code" in response_json(result)["error"]


def test_oversize_body_is_refused_with_413(handler):
    big = json.dumps({"texts": ["x" * 100] * (MAX_BODY // 100 + 10)})
    result = handler(function_url_event("POST", "/embed/text", big, content_type="application/json",
                                        base64_body=True), None)
    assert result["statusCode"] == 413
    assert response_json(result)["error"]["code"] == "payload_too_large"


def test_binary_responses_are_base64_encoded(settings):
    """A non-text response must travel base64-encoded, or Lambda would mangle it."""
    from handler.app import create_app

    app = create_app(settings)
    payload = bytes(range(256))
    app.add_url_rule("/test-binary", "test_binary",
                     lambda: Response(payload, mimetype="application/octet-stream"))
    result = build_handler(app=app)(function_url_event("GET", "/test-binary"), None)
    assert result["isBase64Encoded"] is True
    assert base64.b64decode(result["body"]) == payload
    app.extensions["clipserve"].engine.shutdown()


def test_a_variant_that_was_not_baked_fails_init_naming_what_was(tmp_path, tiny_model_dir):
    import shutil

    shutil.copytree(tiny_model_dir / "english", tmp_path / "english")
    settings = Settings(model_dir=tmp_path, model_variant="multilingual")
    with pytest.raises(VariantNotBaked, match="holds english"):
        build_handler(settings)


def test_the_qdrant_key_comes_from_secrets_manager_at_init(monkeypatch):
    """QDRANT_API_KEY_SECRET_ARN names the secret; init reads it into QDRANT_API_KEY (never in the function's config)."""
    import boto3
    from moto import mock_aws

    from infra.lambda_handler import resolve_secrets

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        arn = boto3.client("secretsmanager", region_name="eu-west-1").create_secret(
            Name="qdrant-key", SecretString="q-secret-123")["ARN"]
        environ = {"QDRANT_API_KEY_SECRET_ARN": arn}
        resolve_secrets(environ)
        assert environ["QDRANT_API_KEY"] == "q-secret-123"
        redis_arn = boto3.client("secretsmanager", region_name="eu-west-1").create_secret(
            Name="redis-auth", SecretString="r-secret-456")["ARN"]
        both = {"REDIS_PASSWORD_SECRET_ARN": redis_arn}
        resolve_secrets(both)
        assert both["REDIS_PASSWORD"] == "r-secret-456"
        kept = {"QDRANT_API_KEY_SECRET_ARN": arn, "QDRANT_API_KEY": "given"}
        resolve_secrets(kept)  # an explicit key wins
        assert kept["QDRANT_API_KEY"] == "given"
    untouched: dict[str, str] = {}
    resolve_secrets(untouched)
    assert untouched == {}
