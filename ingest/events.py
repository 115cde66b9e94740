"""The platforms' event formats, read into one ``ObjectEvent``: what happened to which object, at which version.

Cloud Storage reaches Cloud Run two ways: a Pub/Sub push (``{"message": {"data", "attributes", "messageId"},
"subscription"}``, the notification's attributes naming the event) and Eventarc's CloudEvents
(``google.cloud.storage.object.v1.*``, binary or structured mode). S3 reaches Lambda as SQS records whose body
is an S3 notification (``{"Records": [{"eventName", "s3": {...}}]}``) or S3's test event. Anything else is a
``MalformedEvent``: the caller answers it clearly and never retries it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Action = Literal["upsert", "delete", "ignore"]

# Cloud Storage notification eventType (Pub/Sub attributes) -> action
_GCS_TYPES: dict[str, Action] = {"OBJECT_FINALIZE": "upsert", "OBJECT_DELETE": "delete", "OBJECT_ARCHIVE": "delete",
                                 "OBJECT_METADATA_UPDATE": "ignore"}
# Eventarc's CloudEvents type -> action
_CE_TYPES: dict[str, Action] = {"google.cloud.storage.object.v1.finalized": "upsert",
                                "google.cloud.storage.object.v1.deleted": "delete",
                                "google.cloud.storage.object.v1.archived": "delete",
                                "google.cloud.storage.object.v1.metadataUpdated": "ignore"}


class MalformedEvent(ValueError):
    """Not an event this service understands; the message says what is wrong (never the event's content)."""


@dataclass(frozen=True)
class ObjectEvent:
    """One object's change. ``version`` orders events of the same object (GCS generation as a number, S3
    sequencer as hex; "" when the event has none); ``created`` is when the object was written (for the lag)."""

    action: Action
    scheme: Literal["gs", "s3"]
    bucket: str
    name: str
    version: str = ""
    created: float | None = None
    size: int | None = None
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    etag: str = ""  # the content's fingerprint (S3 eTag, GCS md5Hash): a dead-lettered content is not retried
    event_id: str = ""
    kind: str = ""  # the platform's own event name, for logs

    @property
    def uri(self) -> str:
        """The item id: bucket + object name, so every delivery of any event for the object names one point."""
        return object_uri(self.scheme, self.bucket, self.name)


def object_uri(scheme: str, bucket: str, name: str) -> str:
    return f"{scheme}://{bucket}/{name}"


def from_pubsub_push(envelope: Any) -> ObjectEvent:
    """A Pub/Sub push request's JSON body carrying a Cloud Storage notification."""
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict):
        raise MalformedEvent("not a Pub/Sub push envelope: expected {\"message\": {...}, \"subscription\": ...}")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise MalformedEvent("message.attributes: expected an object")
    kind = attributes.get("eventType")
    if kind not in _GCS_TYPES:
        raise MalformedEvent("message.attributes.eventType: not a Cloud Storage notification event type"
                             if kind is None else f"message.attributes.eventType {str(kind)[:40]!r} is not one "
                             f"of {', '.join(_GCS_TYPES)}")
    resource = _pubsub_data(message.get("data"), attributes.get("payloadFormat"))
    bucket = attributes.get("bucketId") or resource.get("bucket")
    name = attributes.get("objectId") or resource.get("name")
    generation = attributes.get("objectGeneration") or resource.get("generation")
    return _gcs_event(_GCS_TYPES[kind], bucket, name, generation, resource, str(message.get("messageId", "")), kind)


def from_cloudevent(headers: Mapping[str, str], body: bytes) -> ObjectEvent:
    """An Eventarc delivery: binary mode (``ce-*`` headers, the object resource as the body) or structured
    mode (``application/cloudevents+json``, the resource in ``data``)."""
    headers = {k.lower(): v for k, v in headers.items()}
    content_type = headers.get("content-type", "")
    if content_type.startswith("application/cloudevents+json"):
        document = _json(body, "the CloudEvent")
        if not isinstance(document, dict):
            raise MalformedEvent("a structured CloudEvent must be a JSON object")
        attrs = {k: document.get(k) for k in ("type", "source", "subject", "id", "specversion")}
        data = document.get("data")
    else:
        attrs = {k: headers.get(f"ce-{k}") for k in ("type", "source", "subject", "id", "specversion")}
        data = _json(body, "the CloudEvent's data") if body else {}
    if attrs["specversion"] != "1.0":
        raise MalformedEvent("not a CloudEvent 1.0 (ce-specversion)")
    kind = attrs["type"]
    if kind not in _CE_TYPES:
        raise MalformedEvent(f"CloudEvent type {str(kind)[:60]!r} is not a Cloud Storage object event")
    resource = data if isinstance(data, dict) else {}
    source = str(attrs["source"] or "")
    bucket = resource.get("bucket") or source.rpartition("/buckets/")[2] or None
    subject = str(attrs["subject"] or "")
    name = resource.get("name") or (subject[len("objects/"):] if subject.startswith("objects/") else None)
    return _gcs_event(_CE_TYPES[kind], bucket, name, resource.get("generation"), resource, str(attrs["id"] or ""),
                      kind)


def from_s3_notification(body: str) -> list[ObjectEvent]:
    """An SQS message body from an S3 event notification: its records (S3's setup test event: none)."""
    document = _json(body, "the SQS message body")
    if isinstance(document, dict) and document.get("Event") == "s3:TestEvent":
        return []
    records = document.get("Records") if isinstance(document, dict) else None
    if not isinstance(records, list) or not records:
        raise MalformedEvent("not an S3 event notification: expected {\"Records\": [...]}")
    return [_s3_event(record) for record in records]


def _s3_event(record: Any) -> ObjectEvent:
    if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
        raise MalformedEvent("an S3 notification record must have eventSource aws:s3")
    kind = str(record.get("eventName", ""))
    action: Action = ("upsert" if kind.startswith("ObjectCreated:") else
                      "delete" if kind.startswith("ObjectRemoved:") else "ignore")
    s3 = record.get("s3") if isinstance(record.get("s3"), dict) else {}
    bucket = (s3.get("bucket") or {}).get("name")
    obj = s3.get("object") or {}
    key = obj.get("key")
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise MalformedEvent("an S3 notification record must name s3.bucket.name and s3.object.key")
    sequencer = str(obj.get("sequencer") or "")
    if sequencer and not all(c in "0123456789abcdefABCDEF" for c in sequencer):
        raise MalformedEvent("s3.object.sequencer must be hexadecimal")
    size = obj.get("size")
    return ObjectEvent(action=action, scheme="s3", bucket=bucket, name=urllib.parse.unquote_plus(key),
                       version=sequencer.upper(), created=_timestamp(record.get("eventTime")),
                       size=size if isinstance(size, int) else None, etag=str(obj.get("eTag") or ""), kind=kind)


def _gcs_event(action: Action, bucket: Any, name: Any, generation: Any, resource: Mapping[str, Any], event_id: str,
               kind: str) -> ObjectEvent:
    if not isinstance(bucket, str) or not bucket or not isinstance(name, str) or not name:
        raise MalformedEvent("a Cloud Storage event must name its bucket and object")
    version = str(generation or "")
    if version and not version.isdigit():
        raise MalformedEvent("the object's generation must be a number")
    size = resource.get("size")
    metadata = resource.get("metadata") if isinstance(resource.get("metadata"), dict) else {}
    return ObjectEvent(action=action, scheme="gs", bucket=bucket, name=name, version=version,
                       created=_timestamp(resource.get("timeCreated") or resource.get("updated")),
                       size=int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None,
                       content_type=resource.get("contentType"), metadata={str(k): str(v) for k, v in metadata.items()},
                       etag=str(resource.get("md5Hash") or ""), event_id=event_id, kind=kind)


def _pubsub_data(data: Any, payload_format: Any) -> dict[str, Any]:
    """The object resource a JSON_API_V1 notification carries ({} with payloadFormat NONE)."""
    if payload_format == "NONE" or data in (None, ""):
        return {}
    if not isinstance(data, str):
        raise MalformedEvent("message.data: expected base64 text")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEvent("message.data: not base64") from None
    resource = _json(raw, "message.data")
    if not isinstance(resource, dict):
        raise MalformedEvent("message.data: expected the object resource (a JSON object)")
    return resource


def _json(raw: str | bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MalformedEvent(f"{what} is not JSON") from None


def _timestamp(value: Any) -> float | None:
    """An RFC 3339 time as seconds since the epoch (None if absent or unreadable)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
