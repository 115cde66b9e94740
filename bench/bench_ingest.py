"""Ingest from bucket events: images/s through the event path (Pub/Sub pushes of Cloud Storage notifications to
the real gunicorn, which reads each object from the bucket, embeds it and upserts it) against `clipserve-batch
index push --bucket` on the same images in the same run, and the lag from upload to searchable.

    python bench/bench_ingest.py [--images 200] [--concurrency 16] [--variant english] [--json bench/out/ingest.json]

The Lambda path is measured too: S3 notifications into SQS on a moto server, drained by the production Lambda
handler in this process with `--consumers` invocations at once (Terraform's ingest_max_concurrency, 2), batches
of 10 records; an image's lag is from its upload to the acknowledgement of the batch that held it.

The bucket is gcp-storage-emulator on loopback, Qdrant is local mode in the worker (as in the tests), the model a
real-size random bundle (bench/out/bundles-real). Pushes carry OIDC tokens from the tests' issuer. Each upload is
followed at once by its push, with `concurrency` pushes in flight (Pub/Sub pushes many at once); an image's lag is
from its upload's completion to its push's 200 (answered after Qdrant acknowledged the write: searchable). The
platform's own delivery delay (Cloud Storage -> Pub/Sub -> push, typically well under a second) is not in it.
Run twice: as fast as it goes, then paced at 80% of that rate, where lag is the service's time without a backlog.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "ingest"))
from bench.common import DEFAULT_BUNDLES, OUT, ensure_bundles, machine, photo_jpeg, save_json, serving  # noqa: E402
from ingest_support import GcsEmulator, OidcIssuer, make_collection, object_resource, pubsub_push  # noqa: E402


def index_push(gcs: GcsEmulator, bundles: Path, variant: str, folder: Path, prefix: str) -> dict:
    env = {**os.environ, **gcs.env, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "batch", "index", "push", "--bucket", f"gs://bench/{prefix}",
                           "--qdrant-path", str(folder / "push-q"), "--collection", "pushed", "--local",
                           "--model-dir", str(bundles), "--model", variant], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    wall = time.perf_counter() - started
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "upserted": summary["upserted"],
            "images_per_s": round(summary["upserted"] / wall, 2), "summary_seconds": summary["seconds"]}


def event_run(server_url: str, bucket, oidc: OidcIssuer, images: list[bytes], prefix: str, concurrency: int,
              rate: float | None) -> dict:
    """Upload each image, then push its notification (``concurrency`` in flight; ``rate``: uploads per second)."""
    lags: list[float] = []
    lock = threading.Lock()
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=concurrency)
    session.mount("http://", adapter)
    token = oidc.token()

    def push(resource: dict, uploaded: float) -> None:
        answer = session.post(f"{server_url}/ingest/gcs", json=pubsub_push(resource),
                              headers={"Authorization": f"Bearer {token}"}, timeout=300)
        answer.raise_for_status()
        assert answer.json()["result"] == "upserted", answer.text
        with lock:
            lags.append(time.perf_counter() - uploaded)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        futures = []
        for i, data in enumerate(images):
            if rate is not None:
                time.sleep(max(0.0, started + i / rate - time.perf_counter()))
            blob = bucket.blob(f"{prefix}/{i:05d}.jpg")
            blob.upload_from_string(data, content_type="image/jpeg")
            futures.append(pool.submit(push, object_resource(bucket.get_blob(blob.name)), time.perf_counter()))
        for future in futures:
            future.result()
    wall = time.perf_counter() - started
    lags.sort()
    return {"images": len(images), "wall_s": round(wall, 2), "images_per_s": round(len(images) / wall, 2),
            "rate_asked": rate, "lag_p50_s": round(statistics.median(lags), 3),
            "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 3), "lag_max_s": round(lags[-1], 3)}


def sqs_run(bundles: Path, variant: str, images: list[bytes], folder: Path, consumers: int) -> dict:
    """Upload every image to moto's S3 (notifications into SQS), then drain the queue with the Lambda handler."""
    import boto3

    from handler.app import create_app
    from infra.lambda_handler import build_handler
    from infra.settings import Settings
    from servers import free_port

    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        from ingest_support import wait_port

        wait_port(port, 30)
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        s3.create_bucket(Bucket="bench")
        queue = sqs.create_queue(QueueName="ingest", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(Bucket="bench", NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
        sqs.purge_queue(QueueUrl=queue)  # S3's setup test event
        make_collection(folder / "sqs-q", bundles, "sqs", variant)
        app = create_app(Settings(model_dir=bundles, model_variant=variant, qdrant_path=folder / "sqs-q",
                                  qdrant_collection="sqs", ingest_buckets="s3://bench"))
        service = app.extensions["clipserve"]
        service.start()
        assert service.engine.wait_ready(300) and service.search.wait(60)
        handler = build_handler(app=app)
        uploaded: dict[str, float] = {}
        started = time.perf_counter()
        for i, data in enumerate(images):
            s3.put_object(Bucket="bench", Key=f"{i:05d}.jpg", Body=data)
            uploaded[f"{i:05d}.jpg"] = time.perf_counter()
        lags: list[float] = []
        lock = threading.Lock()

        def consume() -> None:
            client = boto3.client("sqs")
            while True:
                got = client.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
                if not got:
                    with lock:
                        if len(lags) >= len(images):
                            return
                    time.sleep(0.05)
                    continue
                event = {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                                      "body": m["Body"], "eventSource": "aws:sqs"} for m in got]}
                answer = handler(event, None)
                assert not answer["batchItemFailures"], answer
                done = time.perf_counter()
                client.delete_message_batch(QueueUrl=queue, Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(got)])
                with lock:
                    for m in got:
                        key = json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"]
                        lags.append(done - uploaded[key])

        threads = [threading.Thread(target=consume) for _ in range(consumers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        service.search.close()
        service.shutdown(1)
    finally:
        moto.terminate()
        moto.wait(10)
    lags.sort()
    return {"images": len(images), "consumers": consumers, "wall_s": round(wall, 2),
            "images_per_s": round(len(images) / wall, 2), "lag_p50_s": round(statistics.median(lags), 3),
            "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 3), "lag_max_s": round(lags[-1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--variant", default="english")
    parser.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--consumers", type=int, default=2, help="Lambda invocations at once on the SQS path")
    parser.add_argument("--json", type=Path, default=OUT / "ingest.json")
    args = parser.parse_args()
    ensure_bundles(args.bundles, [args.variant])
    folder = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    images = [photo_jpeg(seed) for seed in range(args.images)]
    gcs, oidc = GcsEmulator(folder / "gcs.log"), OidcIssuer()
    try:
        bucket = gcs.client().create_bucket("bench")
        for i, data in enumerate(images):
            bucket.blob(f"push/{i:05d}.jpg").upload_from_string(data, content_type="image/jpeg")
        pushed = index_push(gcs, args.bundles, args.variant, folder, "push")
        print("index push --bucket:", pushed, flush=True)
        make_collection(folder / "events-q", args.bundles, "events", args.variant)
        env = {**gcs.env, **oidc.settings(), "MODEL_DIR": str(args.bundles), "MODEL_VARIANT": args.variant,
               "QDRANT_PATH": str(folder / "events-q"), "QDRANT_COLLECTION": "events", "INGEST_BUCKETS": "gs://bench",
               "LOG_LEVEL": "WARNING"}
        with serving(env, folder / "server.log") as server:
            warm = event_run(server.url, bucket, oidc, images[:16], "warm", args.concurrency, None)
            fast = event_run(server.url, bucket, oidc, images, "fast", args.concurrency, None)
            print("event path, as fast as it goes:", fast, flush=True)
            paced = event_run(server.url, bucket, oidc, images, "paced", args.concurrency,
                              round(0.8 * fast["images_per_s"], 2))
            print("event path, paced at 80%:", paced, flush=True)
            stats = requests.get(f"{server.url}/stats", timeout=10).json()["ingest"]
        sqs = sqs_run(args.bundles, args.variant, images, folder, args.consumers)
        print("S3 -> SQS -> Lambda handler:", sqs, flush=True)
        results = {"machine": machine(), "variant": args.variant, "images": args.images,
                   "concurrency": args.concurrency, "index_push": pushed, "events_fast": fast, "events_paced": paced,
                   "warmup": warm, "service_stats": stats, "sqs": sqs,
                   "event_vs_push": round(fast["images_per_s"] / pushed["images_per_s"], 2)}
        save_json(args.json, results)
        print(json.dumps(results, indent=2))
    finally:
        gcs.stop()
        oidc.shutdown()


if __name__ == "__main__":
    main()
