"""Session fixtures for the ingest tests: one moto server (S3 + SQS), one Cloud Storage emulator, one OIDC
issuer, shared by every test (each test uses buckets, queues and collections of its own)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest_support import GcsEmulator, OidcIssuer, PubSubRecorder, environment, wait_port
from servers import free_port

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto_server on loopback; the env that points boto3 at it (set in this process while it runs)."""
    port = free_port()
    beside = Path(sys.executable).with_name("moto_server")
    command = [str(beside)] if beside.exists() else [shutil.which("moto_server") or "moto_server"]
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
    try:
        with environment(env):
            wait_port(port, 30)
            yield env
    finally:
        server.terminate()
        server.wait(10)
        log.close()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs") / "gcs.log")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def oidc() -> Iterator[OidcIssuer]:
    issuer = OidcIssuer()
    yield issuer
    issuer.shutdown()


@pytest.fixture
def pubsub() -> Iterator[PubSubRecorder]:
    recorder = PubSubRecorder()
    yield recorder
    recorder.shutdown()
