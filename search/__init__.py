"""Search over indexed items: the index format, its backends and the filter language (no flask, no torch).

Two backends answer the same query (``search.query.Query``) with the same hits:

- ``search.faiss_index``: an immutable, versioned folder (FAISS vectors + SQLite metadata + manifest)
  built by ``clipserve-batch index build`` and opened read-only by every instance;
- ``search.qdrant_index``: a Qdrant collection (a server, or qdrant-client's local mode), which also
  takes writes.

Filters use Qdrant's JSON syntax (``search.filters``), so the Qdrant backend passes them through and the
FAISS backend translates them to SQL.
"""

import logging

# faiss's loader logs each CPU-specific build it tries (and the ones missing) at INFO: noise in the JSON log.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
