"""The platforms' formats read into ObjectEvents, and the ordering rule, on their own (no server): each format
built as the providers publish it (the CloudEvents by the cloudevents SDK), each malformed shape refused with
a message that names what is wrong and never echoes the content."""

from __future__ import annotations

import base64
import json

import pytest

from ingest.events import MalformedEvent, from_cloudevent, from_pubsub_push, from_s3_notification
from ingest.ordering import Mark, decide, newest_per_object, version_key
from ingest_support import cloudevent, pubsub_push

RESOURCE = {"kind": "storage#object", "bucket": "pics", "name": "a b/c+d.jpg", "generation": "1700000000000001",
            "metageneration": "1", "contentType": "image/jpeg", "size": "1234", "md5Hash": "abc==",
            "timeCreated": "2026-12-06T10:00:00.000Z", "metadata": {"shop": "north", "n": 3}}


def test_a_pubsub_push_of_a_finalize_reads_the_object_resource():
    event = from_pubsub_push(pubsub_push(RESOURCE, message_id="42"))
    assert (event.action, event.scheme, event.bucket, event.name) == ("upsert", "gs", "pics", "a b/c+d.jpg")
    assert event.uri == "gs://pics/a b/c+d.jpg" and event.version == "1700000000000001"
    assert event.size == 1234 and event.etag == "abc==" and event.metadata == {"shop": "north", "n": "3"}
    assert event.created == pytest.approx(1796551200.0) and event.event_id == "42"


@pytest.mark.parametrize("kind, action", [("OBJECT_DELETE", "delete"), ("OBJECT_ARCHIVE", "delete"),
                                          ("OBJECT_METADATA_UPDATE", "ignore")])
def test_the_other_notification_types(kind, action):
    assert from_pubsub_push(pubsub_push(RESOURCE, kind)).action == action


def test_a_notification_without_payload_takes_its_attributes():
    event = from_pubsub_push(pubsub_push(RESOURCE, payload=False))
    assert (event.bucket, event.name, event.version, event.size) == ("pics", "a b/c+d.jpg", "1700000000000001", None)


@pytest.mark.parametrize("structured", [False, True])
def test_eventarc_cloudevents_in_both_modes(structured):
    headers, body = cloudevent(RESOURCE, "deleted", structured=structured)
    event = from_cloudevent(headers, body)
    assert (event.action, event.bucket, event.name, event.version) == ("delete", "pics", "a b/c+d.jpg",
                                                                       "1700000000000001")


def test_s3_records_decode_keys_and_keep_sequencers():
    body = json.dumps({"Records": [
        {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "eventTime": "2026-12-06T10:00:00.000Z",
         "s3": {"bucket": {"name": "photos"}, "object": {"key": "a+b/c%2Bd.jpg", "size": 5, "eTag": "e1",
                                                         "sequencer": "0055aed6dcd90281e5"}}},
        {"eventSource": "aws:s3", "eventName": "ObjectRemoved:DeleteMarkerCreated",
         "s3": {"bucket": {"name": "photos"}, "object": {"key": "x.jpg"}}}]})
    created, removed = from_s3_notification(body)
    assert created.uri == "s3://photos/a b/c+d.jpg" and created.version == "0055AED6DCD90281E5"
    assert (created.size, created.etag, created.action) == (5, "e1", "upsert")
    assert (removed.action, removed.version) == ("delete", "")
    assert from_s3_notification(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []


@pytest.mark.parametrize("body, says", [
    ({"nope": 1}, "not a Pub/Sub push envelope"),
    ({"message": {"attributes": {"eventType": "SOMETHING"}}}, "is not one of"),
    ({"message": {"attributes": {}}}, "not a Cloud Storage notification"),
    ({"message": {"data": "%%%", "attributes": {"eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1"}}},
     "not base64"),
    ({"message": {"data": base64.b64encode(b"[1]").decode(), "attributes": {"eventType": "OBJECT_FINALIZE"}}},
     "expected the object resource"),
    ({"message": {"attributes": {"eventType": "OBJECT_FINALIZE", "payloadFormat": "NONE"}}}, "must name its bucket"),
    ({"message": {"attributes": {"eventType": "OBJECT_FINALIZE", "payloadFormat": "NONE", "bucketId": "b",
                                 "objectId": "o", "objectGeneration": "12ab"}}}, "generation must be a number"),
])
def test_malformed_pushes_are_refused_with_a_reason(body, says):
    with pytest.raises(MalformedEvent, match=says):
        from_pubsub_push(body)


@pytest.mark.parametrize("body, says", [
    ("{", "not JSON"), ("[]", "not an S3 event notification"), ('{"Records": []}', "not an S3 event notification"),
    ('{"Records": [{"eventSource": "aws:sqs"}]}', "eventSource aws:s3"),
    ('{"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}, "object": {}}}]}', "s3.object.key"),
    ('{"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}, "object": {"key": "k", '
     '"sequencer": "xyz"}}}]}', "hexadecimal"),
])
def test_malformed_s3_bodies_are_refused_with_a_reason(body, says):
    with pytest.raises(MalformedEvent, match=says):
        from_s3_notification(body)


def test_a_cloudevent_of_another_kind_or_version_is_refused():
    headers, body = cloudevent(RESOURCE)
    with pytest.raises(MalformedEvent, match="CloudEvent 1.0"):
        from_cloudevent({**headers, "ce-specversion": "0.3"}, body)
    with pytest.raises(MalformedEvent, match="not JSON"):
        from_cloudevent(headers, b"{")


def event(action, version, etag=""):
    return from_pubsub_push(pubsub_push({**RESOURCE, "generation": version, "md5Hash": etag},
                                        {"upsert": "OBJECT_FINALIZE", "delete": "OBJECT_DELETE"}[action]))


@pytest.mark.parametrize("action, version, mark, verdict", [
    ("upsert", "5", None, "apply"),
    ("upsert", "5", Mark("5", "present"), "apply"),        # a redelivery rewrites the same point
    ("upsert", "4", Mark("5", "present"), "stale"),
    ("upsert", "6", Mark("5", "deleted"), "apply"),        # a new upload after a delete
    ("upsert", "5", Mark("5", "deleted"), "stale"),        # the delete of this very generation came first
    ("delete", "5", Mark("5", "present"), "apply"),
    ("delete", "4", Mark("5", "present"), "stale"),        # an overwrite's delete of the old generation
    ("delete", "5", None, "apply"),                        # a tombstone for a create still to come
    ("upsert", "5", Mark("5", "failed", etag="e"), "already_dead_lettered"),
    ("upsert", "6", Mark("5", "failed", etag="e"), "apply"),
])
def test_newest_event_wins_and_a_delete_outranks_a_create(action, version, mark, verdict):
    assert decide(event(action, version, etag="e"), mark) == verdict


def test_without_versions_the_bucket_decides():
    created, removed = from_s3_notification(json.dumps({"Records": [
        {"eventSource": "aws:s3", "eventName": n, "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}
        for n in ("ObjectCreated:Put", "ObjectRemoved:Delete")]}))
    assert decide(created, Mark("ABC", "deleted")) == "apply"  # reads the object as it is now
    assert decide(removed, None) == decide(removed, Mark("", "present")) == "ask_bucket"


def test_sequencers_compare_as_hex_padded_to_one_length():
    assert version_key("FF") < version_key("0100") and version_key("00FF") == version_key("FF")
    assert version_key("9") < version_key("10")  # generations: numbers, not strings


def test_a_batch_keeps_the_newest_event_of_each_object():
    older, newer, other = event("upsert", "5"), event("delete", "7"), from_pubsub_push(
        pubsub_push({**RESOURCE, "name": "other.jpg"}))
    chosen, superseded = newest_per_object([newer, other, older])
    assert chosen == [newer, other] and superseded == [older]
