"""Ingest from bucket events: a picture that lands in a bucket becomes a searchable item, at least once and never
twice. ``events`` reads the platforms' formats (Pub/Sub push, Eventarc CloudEvents, S3 notifications in SQS),
``ordering`` decides whether an event is newer than what the index holds, ``ledger`` keeps that per object in
Qdrant, ``objects`` reads objects with the service's own identity, ``deadletter`` forwards what can never succeed,
and ``ingestor`` ties them together. No flask, no torch: the handler hands it a writer over the service.
"""
