"""S3 -> SQS -> the Lambda handler -> the Qdrant collection, against a moto server: real bucket notifications
into a real queue (moto sends them, S3's setup test event included), a redrive policy to a dead-letter queue,
and a loop that plays Lambda's event source mapping (receive up to 10, call the function, delete what it did
not name in batchItemFailures; what it named comes back after the visibility timeout).

moto's notifications carry no ``sequencer`` (real S3's do), so the ordering tests send records in S3's published
shape with sequencers; the handler and the app are the production ones (``build_handler``), in process.
"""

from __future__ import annotations

import json
import time
from urllib.parse import unquote_plus

import boto3
import pytest

from handler.app import create_app
from infra.lambda_handler import build_handler
from infra.settings import Settings
from ingest_support import corrupt_jpeg, jpeg, make_collection

BUCKET = "photos"


def sqs_event(messages, arn="arn:aws:sqs:us-east-1:123456789012:ingest"):
    return {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                         "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs", "eventSourceARN": arn,
                         "awsRegion": "us-east-1"} for m in messages]}


def s3_record(key, name="ObjectCreated:Put", sequencer="", etag="", size=None):
    obj = {"key": key.replace(" ", "+"), "eTag": etag, **({"sequencer": sequencer} if sequencer else {}),
           **({"size": size} if size is not None else {})}
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-12-06T10:00:00.000Z", "eventName": name,
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"},
                   "object": obj}}


class Queues:
    def __init__(self, sqs, prefix):
        self.sqs = sqs
        self.dlq = sqs.create_queue(QueueName=f"{prefix}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=self.dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.main = sqs.create_queue(QueueName=prefix, Attributes={
            "VisibilityTimeout": "1", "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                                                   "maxReceiveCount": "10"})})["QueueUrl"]
        self.arn = sqs.get_queue_attributes(QueueUrl=self.main, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.dead = sqs.create_queue(QueueName=f"{prefix}-dead")["QueueUrl"]  # INGEST_DEAD_LETTER

    def send(self, *records):
        self.sqs.send_message(QueueUrl=self.main, MessageBody=json.dumps({"Records": list(records)}))

    def drain(self, handler, rounds=200):
        """Lambda's event source mapping, played: (records processed, records returned as failures)."""
        processed = failed = 0
        for _ in range(rounds):
            got = self.sqs.receive_message(QueueUrl=self.main, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = got.get("Messages", [])
            if not messages:
                attrs = self.sqs.get_queue_attributes(QueueUrl=self.main, AttributeNames=["All"])["Attributes"]
                if (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0"):
                    return processed, failed
                time.sleep(0.3)
                continue
            answer = handler(sqs_event(messages), None)
            returned = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
            for m in messages:
                if m["MessageId"] not in returned:
                    self.sqs.delete_message(QueueUrl=self.main, ReceiptHandle=m["ReceiptHandle"])
            processed += len(messages)
            failed += len(returned)
        raise AssertionError("the queue did not drain")

    def count(self, url):
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture(scope="module")
def aws(moto):
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    s3.create_bucket(Bucket=BUCKET)
    queues = Queues(sqs, "ingest")
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": queues.arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    return s3, queues


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory, aws):
    folder = tmp_path_factory.mktemp("s3_ingest")
    make_collection(folder / "q", tiny_model_dir)
    app = create_app(Settings(model_dir=tiny_model_dir, precision="fp32", runtime="torch", qdrant_path=folder / "q",
                              qdrant_collection="items", ingest_buckets=f"s3://{BUCKET}",
                              ingest_dead_letter=aws[1].dead, ingest_path_keys="album"))
    service = app.extensions["clipserve"]
    service.start()
    assert service.engine.wait_ready(120) and service.search.wait(30)
    yield app
    service.search.close()
    service.shutdown(1)


@pytest.fixture(scope="module")
def handler(app):
    return build_handler(app=app)


def search(app, **body):
    return app.test_client().post("/search", json=body)


def indexed(app):
    return app.test_client().get("/stats").json["index"]["count"]


def embedded(app, data):
    import base64

    return app.test_client().post("/embed/image", json={"images": [base64.b64encode(data).decode()]}).json[
        "embeddings"][0]


def test_200_uploads_through_real_notifications_are_searchable_once(app, handler, aws):
    s3, queues = aws
    before = indexed(app)
    images = {f"album-{i % 3}/photo {i}.jpg": jpeg(500 + i) for i in range(200)}
    for key, data in images.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data, Metadata={"camera": "x100"})
    processed, failed = queues.drain(handler)
    assert failed == 0 and processed >= 200  # + S3's test event from the notification's setup
    assert indexed(app) == before + 200
    for key in ["album-0/photo 0.jpg", "album-2/photo 101.jpg"]:
        [hit] = search(app, vector=embedded(app, images[key]), top_k=1).json["results"]
        assert hit["id"] == f"s3://{BUCKET}/{key}" and hit["score"] > 0.999
        assert hit["metadata"]["album"] == key.split("/")[0] and hit["metadata"]["camera"] == "x100"
    # S3 redelivers now and then: the same notifications again rewrite the same points
    for key in list(images)[:20]:
        queues.send(s3_record(key, etag=""))
    assert queues.drain(handler)[1] == 0 and indexed(app) == before + 200
    # and a real delete, through the real notification
    s3.delete_object(Bucket=BUCKET, Key="album-0/photo 0.jpg")
    queues.drain(handler)
    assert search(app, id=f"s3://{BUCKET}/album-0/photo 0.jpg").status_code == 404


def test_s3s_test_event_and_a_malformed_record_are_answered_alone(handler, aws):
    s3, queues = aws
    s3.put_object(Bucket=BUCKET, Key="alone/ok.jpg", Body=jpeg(9))
    body_ok = json.dumps({"Records": [s3_record("alone/ok.jpg")]})
    messages = [{"MessageId": "test", "ReceiptHandle": "r1", "Body": json.dumps(
                    {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-12-06T10:00:00Z",
                     "Bucket": BUCKET, "RequestId": "x", "HostId": "y"})},
                {"MessageId": "junk", "ReceiptHandle": "r2", "Body": "{not json"},
                {"MessageId": "ok", "ReceiptHandle": "r3", "Body": body_ok}]
    assert handler(sqs_event(messages), None) == {"batchItemFailures": [{"itemIdentifier": "junk"}]}


def test_sequencers_order_the_events_of_one_key(app, handler, aws):
    s3, queues = aws
    s3.put_object(Bucket=BUCKET, Key="seq/kept.jpg", Body=jpeg(41))
    s3.put_object(Bucket=BUCKET, Key="seq/gone.jpg", Body=jpeg(42))
    s3.delete_object(Bucket=BUCKET, Key="seq/gone.jpg")
    # delivered newest first, each twice: the remove of gone.jpg before its create; kept.jpg's older put last
    records = [s3_record("seq/gone.jpg", "ObjectRemoved:Delete", "0062E99A88DC407461"),
               s3_record("seq/kept.jpg", "ObjectCreated:Put", "0062E99A88DC407460"),
               s3_record("seq/gone.jpg", "ObjectCreated:Put", "0062E99A88DC40745F"),
               s3_record("seq/kept.jpg", "ObjectCreated:Put", "62E99A88DC40745E")]  # shorter: pads with zeros
    for record in records * 2:
        queues.send(record)
    assert queues.drain(handler)[1] == 0
    [hit] = search(app, vector=embedded(app, jpeg(41)), top_k=1).json["results"]
    assert hit["id"] == f"s3://{BUCKET}/seq/kept.jpg"
    assert search(app, id=f"s3://{BUCKET}/seq/gone.jpg").status_code == 404


def test_a_corrupt_image_lands_in_the_dead_letter_queue_once(app, handler, aws):
    s3, queues = aws
    before = queues.count(queues.dead)
    s3.put_object(Bucket=BUCKET, Key="bad/broken.jpg", Body=corrupt_jpeg())
    assert queues.drain(handler)[1] == 0  # acknowledged: forwarded, not retried
    etag = s3.head_object(Bucket=BUCKET, Key="bad/broken.jpg")["ETag"].strip('"')
    queues.send(s3_record("bad/broken.jpg", etag=etag))  # a redelivery of the same event
    assert queues.drain(handler)[1] == 0
    assert queues.count(queues.dead) == before + 1
    [dead] = queues.sqs.receive_message(QueueUrl=queues.dead, MessageAttributeNames=["All"])["Messages"]
    assert dead["MessageAttributes"]["clipserveError"]["StringValue"] == "invalid_image"
    assert unquote_plus(json.loads(dead["Body"])["Records"][0]["s3"]["object"]["key"]) == "bad/broken.jpg"
    assert queues.count(queues.dlq) == 0  # the platform's redrive never saw it
    assert search(app, id=f"s3://{BUCKET}/bad/broken.jpg").status_code == 404


class _Down:
    """A Qdrant that stopped: every call of the client refuses the connection, as httpx would say it."""

    def __init__(self, client):
        self.client = client
        self.down = True

    def __getattr__(self, name):
        import httpx

        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.down:
                raise httpx.ConnectError("[Errno 111] Connection refused")
            return attr(*args, **kwargs)

        return call


def test_qdrant_stopped_mid_stream_loses_nothing_once_it_is_back(app, handler, aws):
    s3, queues = aws
    backend = app.extensions["clipserve"].writable_backend()
    before = indexed(app)
    keys = [f"outage/{i}.jpg" for i in range(30)]
    for key in keys[:10]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=jpeg(700 + int(key.split("/")[1][:-4])))
    assert queues.drain(handler)[1] == 0
    stopped = _Down(backend.client)
    backend.client = stopped
    try:
        for key in keys[10:]:
            s3.put_object(Bucket=BUCKET, Key=key, Body=jpeg(700 + int(key.split("/")[1][:-4])))
        returned = 0
        for _ in range(3):  # three deliveries while it is down: all returned, none acknowledged
            got = queues.sqs.receive_message(QueueUrl=queues.main, MaxNumberOfMessages=10)
            answer = handler(sqs_event(got["Messages"]), None)
            assert len(answer["batchItemFailures"]) == len(got["Messages"])
            returned += len(got["Messages"])
            time.sleep(1.1)
        assert returned > 0
        client = app.test_client()
        assert client.get("/health").status_code == 200  # what does not need Qdrant keeps serving
        assert client.post("/embed/text", json={"texts": ["still here"]}).status_code == 200
        assert client.post("/search", json={"text": "x"}).status_code == 503
    finally:
        stopped.down = False
        backend.client = stopped.client
    assert queues.drain(handler)[1] == 0
    assert indexed(app) == before + 30
    assert queues.count(queues.dlq) == 0
    for key in keys:
        assert search(app, id=f"s3://{BUCKET}/{key}").status_code == 200


def test_the_same_function_keeps_serving_http(handler):
    event = {"version": "2.0", "routeKey": "$default", "rawPath": "/health", "rawQueryString": "", "headers": {},
             "requestContext": {"http": {"method": "GET", "path": "/health", "sourceIp": "127.0.0.1",
                                         "protocol": "HTTP/1.1"}, "stage": "$default"}, "isBase64Encoded": False}
    assert handler(event, None)["statusCode"] == 200
