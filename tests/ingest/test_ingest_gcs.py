"""Cloud Storage -> Pub/Sub push (or Eventarc) -> the real gunicorn -> the Qdrant collection.

Objects live in a Cloud Storage emulator (gcp-storage-emulator) that the service reads with google-cloud-storage;
the pushes are the published formats (Pub/Sub push envelopes, CloudEvents from the cloudevents SDK) with OIDC
tokens signed by a test issuer whose certificates the service fetches as it would Google's. Qdrant runs in
local mode inside the one worker, so the index is read back over HTTP (/search, /stats), as a user would.
"""

from __future__ import annotations

import concurrent.futures
import random

import numpy as np
import pytest
import requests

from ingest_support import (AUDIENCE, PUSH_ACCOUNT, cloudevent, corrupt_jpeg, jpeg, make_collection, object_resource,
                            pubsub_push)
from servers import gunicorn

N = 200
MAX_IMAGE_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def bucket(gcs):
    return gcs.client().create_bucket("pics")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, gcs, oidc, module_pubsub):
    folder = tmp_path_factory.mktemp("gcs_ingest")
    make_collection(folder / "q", tiny_model_dir)
    env = {**gcs.env, **oidc.settings(), "RUNTIME": "torch", "PRECISION": "fp32", "QDRANT_PATH": str(folder / "q"),
           "QDRANT_COLLECTION": "items", "INGEST_BUCKETS": "gs://pics", "INGEST_PATH_KEYS": "shop",
           "INGEST_DEAD_LETTER": "projects/proj/topics/clipserve-dead", "PUBSUB_EMULATOR_HOST": module_pubsub.host,
           "MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES), "METRICS_ENABLED": "true", "LOG_FORMAT": "json",
           "HTTP_THREADS": "16"}
    with gunicorn(tiny_model_dir, folder / "server.log", **env) as srv:
        yield srv


@pytest.fixture(scope="module")
def module_pubsub():
    from ingest_support import PubSubRecorder

    recorder = PubSubRecorder()
    yield recorder
    recorder.shutdown()


def push(server, oidc, body=None, *, headers=None, data=None, token=None):
    auth = {"Authorization": f"Bearer {token or oidc.token()}"} if token != "" else {}
    return requests.post(f"{server.url}/ingest/gcs", json=body, data=data, headers={**auth, **(headers or {})},
                         timeout=60)


def deliver(server, oidc, resource, kind="OBJECT_FINALIZE", form="pubsub"):
    """One delivery in the form asked: a Pub/Sub push, or an Eventarc CloudEvent (binary or structured)."""
    if form == "pubsub":
        return push(server, oidc, pubsub_push(resource, kind))
    ce_kind = {"OBJECT_FINALIZE": "finalized", "OBJECT_DELETE": "deleted", "OBJECT_ARCHIVE": "archived"}[kind]
    headers, body = cloudevent(resource, ce_kind, structured=form == "structured")
    return push(server, oidc, headers=headers, data=body)


def upload(bucket, name, data, **metadata):
    blob = bucket.blob(name)
    blob.metadata = metadata or None
    blob.upload_from_string(data, content_type="image/jpeg")
    return object_resource(bucket.get_blob(name))


def vector_of(server, data):
    import base64

    answer = requests.post(f"{server.url}/embed/image", json={"images": [base64.b64encode(data).decode()]}, timeout=60)
    return answer.json()["embeddings"][0]


def nearest(server, vector, top_k=1, **extra):
    answer = requests.post(f"{server.url}/search", json={"vector": vector, "top_k": top_k, **extra}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["results"]


def count(server):
    return requests.get(f"{server.url}/stats", timeout=10).json()["index"]["count"]


def present(server, uri):
    return requests.post(f"{server.url}/search", json={"id": uri, "top_k": 1}, timeout=30).status_code == 200


def test_200_uploads_are_searchable_each_exactly_once(server, oidc, bucket):
    before = count(server)
    images = {f"shop-{i % 4}/img{i:03d}.jpg": jpeg(i) for i in range(N)}
    resources = [upload(bucket, name, data, colour=["red", "blue"][i % 2]) for i, (name, data) in
                 enumerate(images.items())]
    forms = ["pubsub", "binary", "structured"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda ir: deliver(server, oidc, ir[1], form=forms[ir[0] % 3]), enumerate(resources)))
    assert [a.status_code for a in answers] == [200] * N
    assert {a.json()["result"] for a in answers} == {"upserted"}
    assert count(server) == before + N
    # every delivery again (at least once means twice sometimes): the same points, rewritten
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        again = list(pool.map(lambda r: deliver(server, oidc, r), resources))
    assert {a.status_code for a in again} == {200} and count(server) == before + N
    for name in random.Random(0).sample(sorted(images), 5):
        [hit] = nearest(server, vector_of(server, images[name]))
        assert hit["id"] == f"gs://pics/{name}" and hit["score"] > 0.999
        assert hit["metadata"]["shop"] == name.split("/")[0] and hit["metadata"]["colour"] in ("red", "blue")
        assert hit["metadata"]["bucket"] == "pics" and hit["metadata"]["object"] == name
    ids = [h["id"] for h in nearest(server, vector_of(server, images["shop-0/img000.jpg"]), top_k=1000,
                                    filter={"must": [{"key": "bucket", "match": {"value": "pics"}}]})]
    assert len(ids) == len(set(ids)) and {f"gs://pics/{n}" for n in images} <= set(ids)


def scenario(bucket, prefix):
    """x: written twice (the first generation overwritten, so its delete event comes too); y: created and
    deleted. The index must end with x's second content and without y, whatever order the events come in."""
    x1 = upload(bucket, f"{prefix}/x.jpg", jpeg(1001))
    x2 = upload(bucket, f"{prefix}/x.jpg", jpeg(1002))
    y = upload(bucket, f"{prefix}/y.jpg", jpeg(1003))
    bucket.blob(f"{prefix}/y.jpg").delete()
    events = [(x1, "OBJECT_FINALIZE"), (x2, "OBJECT_FINALIZE"), (x1, "OBJECT_DELETE"), (y, "OBJECT_FINALIZE"),
              (y, "OBJECT_DELETE")]
    return events, jpeg(1002)


@pytest.mark.parametrize("order", ["in_order", "reversed_twice", "shuffled_twice"])
def test_the_same_events_twice_and_out_of_order_leave_the_same_index(server, oidc, bucket, order):
    prefix = f"order-{order}"
    events, x_now = scenario(bucket, prefix)
    if order == "reversed_twice":
        events = events[::-1] * 2
    elif order == "shuffled_twice":
        events = events * 2
        random.Random(7).shuffle(events)
    for resource, kind in events:
        assert deliver(server, oidc, resource, kind).status_code == 200
    [hit] = nearest(server, vector_of(server, x_now), filter={"must": [{"key": "folder", "match": {"value": prefix}}]})
    assert hit["id"] == f"gs://pics/{prefix}/x.jpg" and hit["score"] > 0.999
    assert not present(server, f"gs://pics/{prefix}/y.jpg")


def test_a_delete_wins_over_a_late_create_of_an_older_generation(server, oidc, bucket):
    old = upload(bucket, "late/z.jpg", jpeg(2001))
    new = upload(bucket, "late/z.jpg", jpeg(2002))
    bucket.blob("late/z.jpg").delete()
    assert deliver(server, oidc, new, "OBJECT_DELETE", form="binary").json()["result"] == "deleted"
    assert deliver(server, oidc, old).json() == {"result": "skipped", "reason": "stale"}
    assert deliver(server, oidc, new).json() == {"result": "skipped", "reason": "stale"}  # same generation: deleted
    assert not present(server, "gs://pics/late/z.jpg")


def test_a_corrupt_image_is_dead_lettered_once(server, oidc, bucket, module_pubsub):
    resource = upload(bucket, "bad/corrupt.jpg", corrupt_jpeg())
    first = deliver(server, oidc, resource)
    again = deliver(server, oidc, resource)  # Pub/Sub redelivers what it believes unanswered
    assert first.status_code == again.status_code == 200
    assert first.json() == {"result": "dead_lettered", "reason": "invalid_image"}
    assert again.json() == {"result": "dead_lettered", "reason": "already_dead_lettered"}
    dead = [m for m in module_pubsub.published if m["messages"][0]["attributes"].get("objectId") == "bad/corrupt.jpg"]
    assert len(dead) == 1 and dead[0]["path"] == "/v1/projects/proj/topics/clipserve-dead:publish"
    assert dead[0]["messages"][0]["attributes"]["clipserveError"] == "invalid_image"
    assert not present(server, "gs://pics/bad/corrupt.jpg")
    # a fixed upload of the same name is a new generation: indexed
    assert deliver(server, oidc, upload(bucket, "bad/corrupt.jpg", jpeg(3))).json()["result"] == "upserted"


def test_an_oversized_object_is_dead_lettered_without_being_read(server, oidc, bucket, module_pubsub):
    big = np.random.default_rng(5).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    assert len(buf.getvalue()) > MAX_IMAGE_BYTES
    answer = deliver(server, oidc, upload(bucket, "bad/huge.png", buf.getvalue()))
    assert answer.json() == {"result": "dead_lettered", "reason": "too_large"}


@pytest.mark.parametrize("case, status", [
    ("missing", 401), ("wrong_audience", 401), ("expired", 401), ("foreign_key", 401), ("not_google", 401),
    ("other_account", 403), ("unverified", 403)])
def test_a_wrong_or_missing_oidc_token_is_refused(server, oidc, bucket, case, status):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    token = {"missing": "", "wrong_audience": oidc.token(audience=AUDIENCE + "/other"),
             "expired": oidc.token(expires_in=-600), "foreign_key": oidc.token(key_pem=other_key),
             "not_google": oidc.token(issuer="https://evil.example"),
             "other_account": oidc.token(email="someone@proj.iam.gserviceaccount.com"),
             "unverified": oidc.token(email=PUSH_ACCOUNT, verified=False)}[case]
    resource = upload(bucket, f"auth/{case}.jpg", jpeg(4))
    answer = push(server, oidc, pubsub_push(resource), token=token)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == ("unauthorized" if status == 401 else "forbidden")
    assert not present(server, f"gs://pics/auth/{case}.jpg")
    # an API key is no way in either: the push route takes only the OIDC token
    assert push(server, oidc, pubsub_push(resource), headers={"Authorization": "Bearer some-api-key"},
                token="").status_code == 401


def test_bad_input_gets_a_clear_answer_and_a_log_line(server, oidc, bucket):
    resource = upload(bucket, "odd/readme.jpg", b"plain text, named like a picture")
    assert deliver(server, oidc, resource).json() == {"result": "skipped", "reason": "not_an_image"}
    foreign = {**upload(bucket, "odd/elsewhere.jpg", jpeg(6)), "bucket": "someone-elses"}
    assert deliver(server, oidc, foreign).json() == {"result": "skipped", "reason": "foreign_bucket"}
    metadata_only = pubsub_push(resource, "OBJECT_METADATA_UPDATE")
    assert push(server, oidc, metadata_only).json() == {"result": "skipped", "reason": "event_type"}
    for body, data in [(None, b"{not json"), ({"message": "x"}, None), ({"message": {"attributes": {}}}, None),
                       ({"message": {"data": "***", "attributes": pubsub_push(resource)["message"]["attributes"]}},
                        None)]:
        answer = push(server, oidc, body, data=data, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_request"
    headers, body = cloudevent(resource)
    answer = push(server, oidc, headers={**headers, "ce-type": "com.example.other"}, data=body)
    assert answer.status_code == 400 and "not a Cloud Storage object event" in answer.json()["error"]["message"]
    log = server.log_text()
    assert "ingest: object is not an image, skipped" in log and "ingest: malformed event refused" in log
    assert "odd/readme" not in log and "someone-elses" not in log  # object names are the users' data


def test_stats_and_metrics_count_events_and_the_lag(server, oidc, bucket):
    assert deliver(server, oidc, upload(bucket, "stats/one.jpg", jpeg(7))).status_code == 200
    stats = requests.get(f"{server.url}/stats", timeout=10).json()["ingest"]
    assert stats["events"]["received"] >= 1 and stats["events"]["upserted"] >= 1
    assert stats["lag_s"]["count"] >= 1 and 0 <= stats["lag_s"]["p50"] < 60
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'clipserve_ingest_events_total{reason="none",result="upserted"}' in metrics
    assert "clipserve_ingest_lag_seconds_bucket" in metrics and "clipserve_ingest_events_received_total" in metrics
