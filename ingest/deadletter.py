"""Where a message that can never succeed goes, once: a corrupt image, one over the size limit, metadata the
collection cannot hold. Forwarded by the service itself and then acknowledged, so the platform does not
redeliver it until its own attempts run out; a transient failure is never sent here, it is retried.

``INGEST_DEAD_LETTER`` names the destination: a Pub/Sub topic (``projects/P/topics/T``, published through the
REST API with the service's credentials; PUBSUB_EMULATOR_HOST is honoured) or an SQS queue URL (boto3).
Unset: the failure is answered as a failure, and the subscription's or queue's own dead-letter policy moves
the message after its maximum attempts.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Protocol


class DeadLetterFailed(Exception):
    """The destination did not take the message: the caller answers a transient failure (retried)."""


class DeadLetter(Protocol):
    configured: bool

    def send(self, message: Any, code: str, reason: str) -> None: ...


class NoDeadLetter:
    configured = False

    def send(self, message: Any, code: str, reason: str) -> None:
        raise DeadLetterFailed("no INGEST_DEAD_LETTER")


class PubSubDeadLetter:
    """``message``: the received Pub/Sub message (``data`` + ``attributes``) or a CloudEvent's object resource."""

    configured = True

    def __init__(self, topic: str, session: Any = None) -> None:
        self.topic = topic
        self._session = session

    def send(self, message: Any, code: str, reason: str) -> None:
        data = message.get("data", "") if isinstance(message, dict) and "attributes" in message else \
            base64.b64encode(json.dumps(message).encode()).decode()
        attributes = dict(message.get("attributes") or {}) if isinstance(message, dict) else {}
        attributes.update({"clipserveError": code, "clipserveReason": reason[:1024]})
        body = {"messages": [{"data": data, "attributes": attributes}]}
        try:
            response = self._post(f"{self._base()}/v1/{self.topic}:publish", body)
        except Exception as exc:  # noqa: BLE001 - transport errors of either session kind
            raise DeadLetterFailed(f"publishing to the dead-letter topic failed ({type(exc).__name__})") from None
        if response.status_code >= 300:
            raise DeadLetterFailed(f"the dead-letter topic answered {response.status_code}")

    def _base(self) -> str:
        emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
        return f"http://{emulator}" if emulator else "https://pubsub.googleapis.com"

    def _post(self, url: str, body: dict[str, Any]) -> Any:
        if self._session is None:
            if os.environ.get("PUBSUB_EMULATOR_HOST"):
                import requests

                self._session = requests.Session()
            else:
                import google.auth
                from google.auth.transport.requests import AuthorizedSession

                credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/pubsub"])
                self._session = AuthorizedSession(credentials)
        return self._session.post(url, json=body, timeout=10)


class SqsDeadLetter:
    """``message``: the SQS record's body (the S3 notification as received)."""

    configured = True

    def __init__(self, queue_url: str, client: Any = None) -> None:
        self.queue_url = queue_url
        self._client = client

    def send(self, message: Any, code: str, reason: str) -> None:
        if self._client is None:
            import boto3

            self._client = boto3.client("sqs")
        body = message if isinstance(message, str) else json.dumps(message)
        try:
            self._client.send_message(QueueUrl=self.queue_url, MessageBody=body, MessageAttributes={
                "clipserveError": {"DataType": "String", "StringValue": code},
                "clipserveReason": {"DataType": "String", "StringValue": reason[:1024] or code}})
        except Exception as exc:  # noqa: BLE001 - botocore's errors, all meaning "not sent"
            raise DeadLetterFailed(f"sending to the dead-letter queue failed ({type(exc).__name__})") from None


def dead_letter_for(destination: str | None) -> DeadLetter:
    """INGEST_DEAD_LETTER as a destination (validated in infra.settings)."""
    if not destination:
        return NoDeadLetter()
    if destination.startswith("projects/"):
        return PubSubDeadLetter(destination)
    return SqsDeadLetter(destination)
