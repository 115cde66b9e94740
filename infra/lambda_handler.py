"""AWS Lambda entry: the same Flask app as on Cloud Run, behind Function URL / API Gateway v2 events, and the
S3 -> SQS ingest path (an event source mapping's SQS batches, told apart by their shape: docs/ingest.md).

Terraform's ``image_config`` runs ``python -m awslambdaric`` with ``infra.lambda_handler.handler``.
apig-wsgi turns each event into a WSGI request and the response back into an event result:
base64 request bodies (multipart uploads) are decoded, and non-text responses are base64-encoded.

The model loads during Lambda's init phase, not on the first request: awslambdaric resolves
``handler`` before it asks for the first event, and resolving it builds the app, checks that
MODEL_VARIANT was baked and waits for the model. Init is capped at 10 s; a load that takes longer
(multilingual on a small memory size) is cut off and Lambda runs init again inside the first
invocation, where the function's timeout applies. That first request is then slow but succeeds;
give such functions more memory (= more vCPUs) or provisioned concurrency. A missing variant or
a bad setting fails init with the message (Runtime.Unknown / init error in the logs).

``handler`` is built on first attribute access (PEP 562) so tests can import ``build_handler``
without loading a model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Any, Callable

from apig_wsgi import make_lambda_handler
from flask import Flask

from infra.logs import configure_logging
from infra.preflight import check_model_baked
from infra.settings import Settings

log = logging.getLogger(__name__)

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


class ModelLoadFailed(RuntimeError):
    """The model did not load at init; the cause is chained and its message included."""


def build_app(settings: Settings) -> Flask:
    """The production app with its model loaded (raises if it cannot be)."""
    from handler.app import EXTENSION, create_app

    check_model_baked(settings)
    app = create_app(settings)
    api = app.extensions[EXTENSION]
    api.start()
    if not api.engine.wait_ready():
        error = api.engine.load_error
        raise ModelLoadFailed(f"model {settings.default_model} failed to load from {settings.model_dir}: "
                              f"{error!r}") from error
    if api.search is not None and api.search.part_of_health and not api.search.wait():
        raise ModelLoadFailed(f"search index {settings.index_dir} failed to open: {api.search.reason}")
    return app


def build_handler(settings: Settings | None = None, app: Flask | None = None) -> LambdaHandler:
    """A Lambda handler around ``app`` (default: the production app for ``settings`` / the env)."""
    if app is None:
        app = build_app(settings or Settings.from_env())
    # binary_support: decode base64 event bodies and base64-encode non-text responses.
    http = make_lambda_handler(app, binary_support=True)
    from handler.app import EXTENSION
    from handler.ingest import answer_sqs, is_sqs_event
    from infra import tracing

    ingestor = app.extensions[EXTENSION].ingestor

    def handler(event: Any, context: Any) -> Any:
        """SQS batches of S3 notifications go to ingest (answered with batchItemFailures), the rest to WSGI."""
        return answer_sqs(ingestor, event) if is_sqs_event(event) else http(event, context)

    if not tracing.enabled():
        return handler

    def traced(event: Any, context: Any) -> Any:
        """Lambda freezes the process between invocations, export thread included: send the spans now."""
        try:
            return handler(event, context)
        finally:
            tracing.flush(timeout_s=2.0)

    return traced


# variable the service reads <- variable naming the Secrets Manager secret that holds it
SECRETS = {"QDRANT_API_KEY": "QDRANT_API_KEY_SECRET_ARN", "REDIS_PASSWORD": "REDIS_PASSWORD_SECRET_ARN"}


def resolve_secrets(environ: MutableMapping[str, str] = os.environ) -> None:
    """QDRANT_API_KEY and REDIS_PASSWORD from Secrets Manager when their *_SECRET_ARN names one (Lambda has no
    secret references in its environment, and a secret must not sit in Terraform's state): read once, at init.
    A value set directly wins."""
    for name, arn_name in SECRETS.items():
        arn = environ.get(arn_name)
        if not arn or environ.get(name):
            continue
        import botocore.session

        region = arn.split(":")[3] if arn.count(":") >= 6 else None
        client = botocore.session.get_session().create_client("secretsmanager", region_name=region)
        environ[name] = client.get_secret_value(SecretId=arn)["SecretString"]


def __getattr__(name: str) -> Any:
    if name == "handler":
        resolve_secrets()
        settings = Settings.from_env()
        configure_logging(settings)  # JSON lines on stdout, like Cloud Run, instead of the runtime's text lines
        built = build_handler(settings)
        globals()["handler"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
