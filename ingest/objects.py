"""Reading bucket objects with the service's own identity, through the clouds' client libraries (never a public
URL): google-cloud-storage for ``gs://`` (honours STORAGE_EMULATOR_HOST), boto3 for ``s3://`` (honours
AWS_ENDPOINT_URL). Each store answers the same three questions: the object's bytes and metadata, whether it
exists now, and what a bucket prefix holds (for a backfill).
"""

from __future__ import annotations

import datetime
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol


class ObjectGone(Exception):
    """The object (at the event's version) is no longer there: a newer event for it follows or has come."""


class ObjectTooLarge(Exception):
    """Larger than MAX_IMAGE_BYTES: never read."""


class StoreUnavailable(Exception):
    """The bucket could not be read now (network, throttling, 5xx, permissions being fixed): retry later."""


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    version: str = ""  # GCS generation; "" on S3 (a read has no sequencer)
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    created: float | None = None
    etag: str = ""


@dataclass(frozen=True)
class Listed:
    name: str
    version: str
    size: int
    etag: str


class ObjectStore(Protocol):
    def read(self, bucket: str, name: str, version: str, max_bytes: int) -> StoredObject: ...

    def exists(self, bucket: str, name: str) -> bool: ...

    def list(self, bucket: str, prefix: str) -> Iterator[Listed]: ...


class _Lazy(ABC):
    """A cloud client made on first use (an instance that never ingests never builds one), or the one given."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    @abstractmethod
    def _new_client(self) -> Any:
        """The cloud's client, with the environment's credentials and endpoint."""


class GcsStore(_Lazy):
    """Cloud Storage. ``version`` pins the generation the event named: an overwritten generation is gone."""

    def _new_client(self) -> Any:
        from google.cloud import storage

        return storage.Client()

    def read(self, bucket: str, name: str, version: str, max_bytes: int) -> StoredObject:
        with _gcs_errors():
            blob = self.client.bucket(bucket).get_blob(name, generation=int(version) if version else None)
            if blob is None or (version and str(blob.generation) != version):
                raise ObjectGone(name)
            if blob.size is not None and blob.size > max_bytes:
                raise ObjectTooLarge(f"the object has {blob.size} bytes, more than MAX_IMAGE_BYTES ({max_bytes})")
            data = blob.download_as_bytes()  # the generation get_blob pinned
        return StoredObject(data=data, version=str(blob.generation or ""), content_type=blob.content_type,
                            metadata=dict(blob.metadata or {}),
                            created=blob.time_created.timestamp() if blob.time_created else None,
                            etag=str(blob.md5_hash or ""))

    def exists(self, bucket: str, name: str) -> bool:
        with _gcs_errors():
            return self.client.bucket(bucket).get_blob(name) is not None

    def list(self, bucket: str, prefix: str) -> Iterator[Listed]:
        with _gcs_errors():
            for blob in self.client.list_blobs(bucket, prefix=prefix or None):
                if not blob.name.endswith("/"):
                    yield Listed(blob.name, str(blob.generation or ""), int(blob.size or 0), str(blob.md5_hash or ""))


class S3Store(_Lazy):
    """S3 (or any endpoint boto3 is pointed at). Reads take the object as it is now: S3 has no generations."""

    def _new_client(self) -> Any:
        import boto3

        return boto3.client("s3")

    def read(self, bucket: str, name: str, version: str, max_bytes: int) -> StoredObject:
        with _s3_errors():
            head = self.client.head_object(Bucket=bucket, Key=name)
            if int(head.get("ContentLength", 0)) > max_bytes:
                raise ObjectTooLarge(f"the object has {head['ContentLength']} bytes, more than MAX_IMAGE_BYTES "
                                     f"({max_bytes})")
            got = self.client.get_object(Bucket=bucket, Key=name, IfMatch=head["ETag"])
            data = got["Body"].read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ObjectTooLarge(f"the object has more than MAX_IMAGE_BYTES ({max_bytes}) bytes")
        modified = got.get("LastModified")
        return StoredObject(data=data, content_type=got.get("ContentType"), metadata=dict(got.get("Metadata") or {}),
                            created=modified.timestamp() if isinstance(modified, datetime.datetime) else None,
                            etag=str(got.get("ETag", "")).strip('"'))

    def exists(self, bucket: str, name: str) -> bool:
        try:
            with _s3_errors():
                self.client.head_object(Bucket=bucket, Key=name)
        except ObjectGone:
            return False
        return True

    def list(self, bucket: str, prefix: str) -> Iterator[Listed]:
        with _s3_errors():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        yield Listed(obj["Key"], "", int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))


@contextmanager
def _gcs_errors() -> Iterator[None]:
    """google-cloud-storage's exceptions as ObjectGone / StoreUnavailable."""
    import requests
    from google.api_core import exceptions

    try:
        yield
    except exceptions.NotFound:
        raise ObjectGone("not found") from None
    except (exceptions.GoogleAPIError, requests.RequestException, OSError) as exc:
        raise StoreUnavailable(f"Cloud Storage: {type(exc).__name__}") from None


@contextmanager
def _s3_errors() -> Iterator[None]:
    """botocore's exceptions as ObjectGone / StoreUnavailable."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "error"))
        if code in ("404", "NoSuchKey", "NotFound", "412", "PreconditionFailed"):
            raise ObjectGone(code) from None
        raise StoreUnavailable(f"S3: {code}") from None
    except (BotoCoreError, OSError) as exc:
        raise StoreUnavailable(f"S3: {type(exc).__name__}") from None
