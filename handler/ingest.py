"""The ingest pipeline (``ingest/``) wired to this service: its writes go through the same embedding path,
limits and collection checks as ``POST /index`` (``ClipService.write_items``), and an ``ApiError`` becomes
the pipeline's distinction: a status of 429 or 5xx may pass (retry), any other never will (dead letter).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from handler.errors import AllItemsFailed, ApiError, to_api_error
from handler.service import ClipService
from infra.settings import Settings
from ingest.deadletter import dead_letter_for
from ingest.events import MalformedEvent, from_s3_notification
from ingest.ingestor import Delivery, Ingestor, NewItem, Transient
from ingest.objects import GcsStore, S3Store

log = logging.getLogger("clipserve.ingest")


class ServiceWriter:
    def __init__(self, service: ClipService) -> None:
        self.service = service

    def index(self) -> Any:
        with _as_transient():
            return self.service.writable_backend()

    def write(self, items: list[NewItem]) -> dict[int, tuple[str, str]]:
        rows = [SimpleNamespace(id=i.id, text=None, image=None, vector=None, metadata=i.metadata) for i in items]
        try:
            with _as_transient():
                _, errors = self.service.write_items(rows, [i.data for i in items], self.service.deadline())
        except AllItemsFailed as exc:
            errors = exc.details or []
        except ApiError as exc:  # a refusal of the whole write (4xx): every item fails with it
            errors = [{"index": i, "code": exc.code, "message": exc.message} for i in range(len(items))]
        return {e["index"]: (e["code"], e["message"]) for e in errors}

    def delete(self, ids: list[str]) -> None:
        with _as_transient():
            self.service.delete_items(ids=ids, filter=None)


@contextmanager
def _as_transient() -> Iterator[None]:
    """Errors that may pass (429, 5xx) as ``Transient``; a 4xx as the ``ApiError`` it is."""
    try:
        yield
    except AllItemsFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - sorted by the status the client would have seen
        error = to_api_error(exc)
        if error.status >= 500 or error.status == 429:
            raise Transient(error.code, error.message) from None
        if error is exc:
            raise
        raise error from None


def build_ingestor(settings: Settings, service: ClipService) -> Ingestor | None:
    """The pipeline for INGEST_BUCKETS (None when unset)."""
    buckets = settings.ingest_sources
    if not buckets:
        return None
    path_keys = [k.strip() for k in (settings.ingest_path_keys or "").split(",") if k.strip()]
    return Ingestor(ServiceWriter(service), {"gs": GcsStore(), "s3": S3Store()}, buckets,
                    max_bytes=settings.max_image_bytes, path_keys=path_keys,
                    dead_letter=dead_letter_for(settings.ingest_dead_letter))


def is_sqs_event(event: Any) -> bool:
    """An SQS batch from an event source mapping, told apart from an HTTP event by its shape."""
    records = event.get("Records") if isinstance(event, dict) else None
    return isinstance(records, list) and bool(records) and all(
        isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)


def answer_sqs(ingestor: Ingestor | None, event: dict[str, Any]) -> dict[str, Any]:
    """The Lambda answer to an SQS batch: ``batchItemFailures`` names the records to redeliver (the event source
    mapping's ReportBatchItemFailures), so one bad record is retried alone."""
    records = event["Records"]
    if ingestor is None:
        log.error("ingest: an SQS batch arrived but INGEST_BUCKETS is unset; every record is returned")
        return {"batchItemFailures": [{"itemIdentifier": r.get("messageId", "")} for r in records]}
    failed: list[str] = []
    deliveries, ids = [], []
    for record in records:
        try:
            deliveries.append(Delivery(from_s3_notification(str(record.get("body", ""))), record.get("body")))
            ids.append(str(record.get("messageId", "")))
        except MalformedEvent as exc:
            log.warning("ingest: malformed SQS record returned (%s)", exc)
            failed.append(str(record.get("messageId", "")))
    for message_id, outcome in zip(ids, ingestor.handle(deliveries) if deliveries else []):
        if not outcome.acknowledged:
            failed.append(message_id)
    return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}
