"""What the ingest tests share: a Cloud Storage emulator (gcp-storage-emulator, a real HTTP server that
google-cloud-storage talks to), an OIDC issuer that signs push tokens with its own key and serves its
certificates the way Google does, and the published event formats (Pub/Sub push envelopes; CloudEvents built
with the cloudevents SDK). The moto server (S3 + SQS, real bucket notifications into a real queue) is in
conftest.py. A Pub/Sub topic for dead letters is a small recorder of the REST publish call: the Pub/Sub
emulator needs the gcloud SDK and Java, which cannot be installed here.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from servers import free_port

AUDIENCE = "https://clipserve.example.run.app/ingest/gcs"
PUSH_ACCOUNT = "pubsub-push@proj.iam.gserviceaccount.com"


def jpeg(seed: int, size: int = 48) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def corrupt_jpeg() -> bytes:
    """A JPEG header with its data cut off: an image by its header, undecodable."""
    data = jpeg(99, size=96)
    return data[: len(data) // 2]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """``env`` set in this process for the block, what was there before put back after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_collection(path: Path, model_dir: Path, name: str = "items", variant: str = "english") -> None:
    """An image collection for ``variant`` in Qdrant's local mode at ``path``, as ``index push`` creates one."""
    from models.bundle import model_identity
    from search import qdrant_index

    client = qdrant_index.connect(path=path)
    try:
        qdrant_index.create_collection(client, name, model=model_identity(model_dir, variant), modality="image",
                                       columns={}, local=True)
    finally:
        client.close()


class GcsEmulator:
    """gcp-storage-emulator in memory, in a process of its own; ``env`` points google-cloud-storage at it."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self._log = open(log, "w")
        exe = Path(sys.executable).with_name("gcp-storage-emulator")
        self.proc = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--in-memory"], stdout=self._log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        self.env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.port}", "GOOGLE_CLOUD_PROJECT": "test-project"}

    def client(self) -> Any:
        from google.cloud import storage

        with environment(self.env):
            return storage.Client(project="test-project")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


class OidcIssuer(ThreadingHTTPServer):
    """Signs Google-style OIDC tokens with its own RSA key and serves ``{kid: certificate}`` like Google's
    https://www.googleapis.com/oauth2/v1/certs (with a Cache-Control max-age)."""

    daemon_threads = True

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        self.kid = "test-kid"
        self.key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode()
        self.certs = {self.kid: cert.public_bytes(serialization.Encoding.PEM).decode()}
        self.fetches = 0
        super().__init__(("127.0.0.1", 0), _CertsHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/oauth2/v1/certs"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def token(self, *, audience: str = AUDIENCE, email: str = PUSH_ACCOUNT, verified: bool = True,
              issuer: str = "https://accounts.google.com", expires_in: int = 3600, key_pem: str | None = None) -> str:
        from google.auth import crypt, jwt

        now = int(time.time())
        signer = crypt.RSASigner.from_string(key_pem or self.key_pem, key_id=self.kid)
        claims = {"aud": audience, "iss": issuer, "email": email, "email_verified": verified, "iat": now,
                  "exp": now + expires_in, "sub": "1234567890"}
        return jwt.encode(signer, claims).decode()

    def settings(self) -> dict[str, str]:
        return {"INGEST_PUSH_AUDIENCE": AUDIENCE, "INGEST_PUSH_SERVICE_ACCOUNT": PUSH_ACCOUNT,
                "INGEST_OIDC_CERTS_URL": self.url}


class _CertsHandler(BaseHTTPRequestHandler):
    server: OidcIssuer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.fetches += 1
        body = json.dumps(self.server.certs).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "public, max-age=3600")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class PubSubRecorder(ThreadingHTTPServer):
    """Records ``POST /v1/projects/P/topics/T:publish`` bodies (PUBSUB_EMULATOR_HOST points here)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _PublishHandler)
        self.host = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _PublishHandler(BaseHTTPRequestHandler):
    server: PubSubRecorder

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.server.published.append({"path": self.path, **body})
        answer = json.dumps({"messageIds": [str(len(self.server.published))]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


# --- the published formats --------------------------------------------------------------------------------

def object_resource(blob: Any) -> dict[str, Any]:
    """The JSON_API_V1 object resource Cloud Storage puts in a notification (as the emulator describes it)."""
    return dict(blob._properties)


def pubsub_push(resource: dict[str, Any], event_type: str = "OBJECT_FINALIZE", message_id: str = "1",
                payload: bool = True) -> dict[str, Any]:
    """A push request body: https://cloud.google.com/pubsub/docs/push#receive_push, attributes as Cloud Storage
    sets them (https://cloud.google.com/storage/docs/pubsub-notifications#attributes)."""
    attributes = {"eventType": event_type, "bucketId": resource["bucket"], "objectId": resource["name"],
                  "objectGeneration": str(resource["generation"]), "eventTime": resource.get("updated", ""),
                  "payloadFormat": "JSON_API_V1" if payload else "NONE", "notificationConfig":
                  f"projects/_/buckets/{resource['bucket']}/notificationConfigs/1"}
    message = {"attributes": attributes, "messageId": message_id, "publishTime": "2026-12-06T10:00:00Z"}
    if payload:
        message["data"] = base64.b64encode(json.dumps(resource).encode()).decode()
    return {"message": message, "subscription": "projects/proj/subscriptions/clipserve-ingest"}


def cloudevent(resource: dict[str, Any], kind: str = "finalized", structured: bool = False) -> tuple[dict, bytes]:
    """Eventarc's delivery of a Cloud Storage event, built with the cloudevents SDK (binary mode by default)."""
    from cloudevents.v1.conversion import to_binary, to_structured
    from cloudevents.v1.http import CloudEvent

    event = CloudEvent({"type": f"google.cloud.storage.object.v1.{kind}",
                        "source": f"//storage.googleapis.com/projects/_/buckets/{resource['bucket']}",
                        "subject": f"objects/{resource['name']}", "id": f"ce-{resource['generation']}-{kind}"},
                       resource)
    headers, body = (to_structured if structured else to_binary)(event)
    return dict(headers), body if isinstance(body, bytes) else str(body).encode()
