"""Bucket events for Cloud Run: ``POST /ingest/gcs`` takes a Pub/Sub push of a Cloud Storage notification or
an Eventarc CloudEvent (binary or structured), authenticated by the push's OIDC token instead of an API key.

The status is the acknowledgement: 200 acknowledges (done, skipped, dead-lettered); 503 ``ingest_unavailable``
asks the platform to redeliver with its backoff; 422 ``all_items_failed`` (a permanent failure with no
INGEST_DEAD_LETTER) and 400 (a malformed envelope) are redelivered until the subscription's dead-letter policy
takes them. The S3 path (SQS records on Lambda) is ``handler.ingest.answer_sqs``.
"""

from __future__ import annotations

import json
import logging

from flask import Response, jsonify, request

from handler import observability
from handler.errors import AllItemsFailed, IngestUnavailable, InvalidRequest
from handler.oidc import PushTokenVerifier
from handler.openapi import RouteDoc
from handler.protocols.common import Protocol, Route
from handler.schemas import IngestResponse
from handler.service import ClipService
from ingest.events import MalformedEvent, from_cloudevent, from_pubsub_push
from ingest.ingestor import Delivery, Ingestor, Outcome

PATH = "/ingest/gcs"
log = logging.getLogger("clipserve.ingest")


class IngestApi(Protocol):
    name = "ingest"

    def __init__(self, service: ClipService, ingestor: Ingestor, verifier: PushTokenVerifier) -> None:
        super().__init__(service)
        self.ingestor = ingestor
        self.verifier = verifier

    def routes(self) -> list[Route]:
        return [Route(RouteDoc(PATH, "POST", "Index a Cloud Storage object event (Pub/Sub push or Eventarc "
                               "CloudEvent; OIDC token of INGEST_PUSH_SERVICE_ACCOUNT).", IngestResponse,
                               errors=("invalid_request", "unauthorized", "forbidden", "all_items_failed",
                                       "ingest_unavailable")), self.gcs)]

    def open_paths(self) -> set[str]:
        return {PATH}  # the OIDC token, not an API key, guards it

    def gcs(self) -> Response:
        self.verifier.verify(request.headers.get("Authorization", ""))
        body = request.get_data(cache=False)
        try:
            if request.headers.get("ce-type") or request.mimetype == "application/cloudevents+json":
                event = from_cloudevent(request.headers, body)
                message = json.loads(body) if body else {}
            else:
                envelope = json.loads(body)
                event = from_pubsub_push(envelope)
                message = envelope["message"]
        except (MalformedEvent, ValueError) as exc:
            log.warning("ingest: malformed event refused (%s)", exc)
            raise InvalidRequest(str(exc) if isinstance(exc, MalformedEvent) else "the body is not JSON") from None
        [outcome] = self.ingestor.handle([Delivery([event], message)])
        return answer(outcome)


def answer(outcome: Outcome) -> Response:
    observability.annotate(ingest=outcome.result, ingest_reason=outcome.reason)
    if outcome.acknowledged:
        return jsonify({"result": outcome.result, "reason": outcome.reason})
    if outcome.transient:
        raise IngestUnavailable(f"the event could not be indexed now ({outcome.reason}); it will be retried",
                                headers={"Retry-After": "10"})
    raise AllItemsFailed(f"the object cannot be indexed ({outcome.reason}); without INGEST_DEAD_LETTER the "
                         "subscription's dead-letter policy takes the message")
