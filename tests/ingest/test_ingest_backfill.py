"""``clipserve-batch index push --bucket``: what a bucket already holds, pushed with the ids, metadata and ledger
marks the event path gives, so a backfill followed by the live events (or overtaken by them) never makes two
items of one object. Objects come from the Cloud Storage emulator and from moto's S3."""

from __future__ import annotations

import json

import boto3
import pytest

from batch.cli import main
from handler.app import create_app
from infra.settings import Settings
from ingest.events import from_pubsub_push
from ingest.ingestor import Delivery
from ingest_support import jpeg, object_resource, pubsub_push


def backfill(uri, qdrant, model_dir, capsys, *extra):
    code = main(["index", "push", "--bucket", uri, "--qdrant-path", str(qdrant), "--collection", "items", "--local",
                 "--model-dir", str(model_dir), "--path-keys", "shop", *extra])
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[-1]) if out else None)


def app_on(qdrant, model_dir, buckets, **settings):
    app = create_app(Settings(model_dir=model_dir, precision="fp32", runtime="torch", qdrant_path=qdrant,
                              qdrant_collection="items", ingest_buckets=buckets, ingest_push_audience="a",
                              ingest_push_service_account="s@x", ingest_path_keys="shop", **settings))
    service = app.extensions["clipserve"]
    service.start()
    assert service.engine.wait_ready(120) and service.search.wait(30)
    return app, service


def test_a_gcs_backfill_and_live_events_never_duplicate(gcs, tiny_model_dir, tmp_path, capsys, monkeypatch):
    for k, v in gcs.env.items():
        monkeypatch.setenv(k, v)
    bucket = gcs.client().create_bucket("backfill-gs")
    for i in range(12):
        bucket.blob(f"shop-{i % 2}/p{i}.jpg").upload_from_string(jpeg(800 + i), content_type="image/jpeg")
    bucket.blob("notes.txt").upload_from_string(b"not a picture")
    code, summary = backfill("gs://backfill-gs", tmp_path / "q", tiny_model_dir, capsys)
    assert code == 0 and summary["upserted"] == 12 and summary["collection_count"] == 12
    assert summary["skipped"] == {"not_an_image": 1} and summary["bucket"] == "gs://backfill-gs"
    # a re-run is idempotent
    assert backfill("gs://backfill-gs", tmp_path / "q", tiny_model_dir, capsys)[1]["collection_count"] == 12

    app, service = app_on(tmp_path / "q", tiny_model_dir, "gs://backfill-gs")
    try:
        old = object_resource(bucket.get_blob("shop-0/p0.jpg"))
        bucket.blob("shop-0/p0.jpg").upload_from_string(jpeg(900), content_type="image/jpeg")  # a new generation
        new = object_resource(bucket.get_blob("shop-0/p0.jpg"))
        p1 = object_resource(bucket.get_blob("shop-1/p1.jpg"))
        older_p1 = {**p1, "generation": str(int(p1["generation"]) - 1)}

        def handle(resource, kind="OBJECT_FINALIZE"):
            [outcome] = service.ingestor.handle([Delivery([from_pubsub_push(pubsub_push(resource, kind))], None)])
            return outcome.result, outcome.reason

        assert handle(older_p1, "OBJECT_DELETE") == ("skipped", "stale")  # the backfill recorded p1's generation
        assert handle(p1) == ("upserted", "")  # the event of what was backfilled: the same point again
        assert handle(new) == ("upserted", "")
        assert handle(old) == ("skipped", "stale")
        client = app.test_client()
        assert client.get("/stats").json["index"]["count"] == 12
        import base64

        vector = client.post("/embed/image", json={"images": [base64.b64encode(jpeg(900)).decode()]}).json[
            "embeddings"][0]
        [hit] = client.post("/search", json={"vector": vector, "top_k": 1}).json["results"]
        assert hit["id"] == "gs://backfill-gs/shop-0/p0.jpg" and hit["score"] > 0.999
        assert {k: hit["metadata"][k] for k in ("shop", "bucket", "object", "folder")} == {
            "shop": "shop-0", "bucket": "backfill-gs", "object": "shop-0/p0.jpg", "folder": "shop-0"}
        [backfilled] = client.post("/search", json={"vector": vector, "top_k": 1, "filter": {
            "must": [{"key": "object", "match": {"value": "shop-1/p3.jpg"}}]}}).json["results"]
        assert backfilled["metadata"]["shop"] == "shop-1" and "image" not in backfilled["metadata"]  # no staging path
    finally:
        service.search.close()
        service.shutdown(1)
    # a backfill run after the events does not undo them: the newer generation's mark stays
    assert backfill("gs://backfill-gs", tmp_path / "q", tiny_model_dir, capsys)[1]["collection_count"] == 12


def test_an_s3_backfill_uses_the_event_paths_ids(moto, tiny_model_dir, tmp_path, capsys):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="backfill-s3")
    for i in range(5):
        s3.put_object(Bucket="backfill-s3", Key=f"in/p {i}.jpg", Body=jpeg(950 + i))
    s3.put_object(Bucket="backfill-s3", Key="out/p.jpg", Body=jpeg(960))
    code, summary = backfill("s3://backfill-s3/in/", tmp_path / "q", tiny_model_dir, capsys)
    assert code == 0 and summary["upserted"] == 5
    app, service = app_on(tmp_path / "q", tiny_model_dir, "s3://backfill-s3")
    try:
        ids = [h["id"] for h in app.test_client().post("/search", json={"text": "x", "top_k": 10}).json["results"]]
        assert sorted(ids) == [f"s3://backfill-s3/in/p {i}.jpg" for i in range(5)]
    finally:
        service.search.close()
        service.shutdown(1)


def test_a_bad_bucket_argument_is_a_usage_error(tiny_model_dir, tmp_path, capsys):
    assert backfill("ftp://x", tmp_path / "q", tiny_model_dir, capsys)[0] == 1  # EXIT_USAGE
    with pytest.raises(SystemExit) as exited:  # argparse: --input and --bucket exclude each other
        main(["index", "push", "--input", "a.csv", "--bucket", "gs://b", "--qdrant-path", "q", "--local"])
    assert exited.value.code == 2
