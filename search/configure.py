"""Which search backend a service runs, from its settings (checked at boot, opened in the background)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from search import index_format
from search.errors import BackendTimeout, IndexUnusable, Unavailable
from search.query import model_mismatch
from search.service import SearchService

log = logging.getLogger(__name__)
# A Qdrant that could not be reached is tried again by the next search after this long.
QDRANT_RETRY_S = 5.0


def served_model(models: dict[str, dict[str, Any]], indexed: dict[str, Any]) -> dict[str, Any]:
    """Of the served models' identities (by variant, the default first), the one an index was built with: the
    variant it names, else the default (whose mismatch the caller then reports)."""
    return models.get(indexed.get("variant"), next(iter(models.values())))


def check_index_dir(directory: Path, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The cheap checks that stop a boot (milliseconds, no index read): a complete folder of a known
    format, files of the recorded sizes, built with a served model. Returns the manifest."""
    manifest = index_format.read_manifest(directory)
    index_format.check_files(directory, manifest)
    indexed = manifest.get("model", {})
    differences = model_mismatch(served_model(models, indexed), indexed)
    if differences:
        raise IndexUnusable(f"INDEX_DIR={directory} was built with another model than MODEL_DIR/MODELS "
                            f"serves ({'; '.join(differences)}). Rebuild the index with a served model "
                            "(clipserve-batch index build), or serve the model it was built with.")
    return manifest


def search_service(settings: Any, models: dict[str, dict[str, Any]]) -> SearchService | None:
    """The service's search backend, or None when none is configured. ``models``: the identity of every served
    model by variant (models.bundle.model_identity), the default first; the index must have been built with one
    of them, and is searched with that one. Raises IndexUnusable at boot."""
    if settings.qdrant_url is not None or settings.qdrant_path is not None:
        return qdrant_service(settings, models)
    if settings.index_dir is None:
        return None
    manifest = check_index_dir(settings.index_dir, models)
    model = served_model(models, manifest.get("model", {}))

    def open_faiss() -> Any:
        from search.faiss_index import FaissIndex

        index = FaissIndex.open(settings.index_dir, load=settings.index_load,
                                verify_sha256=settings.index_verify == "sha256")
        index.check_model(model)
        return index

    return SearchService(open_faiss, part_of_health=True)


def qdrant_service(settings: Any, models: dict[str, dict[str, Any]]) -> SearchService:
    """Check the collection now (missing, not clipserve's, another model: the boot stops). A Qdrant that
    cannot be reached does not stop the boot: embedding routes work, searches answer 503 and try again."""
    from search import qdrant_index

    local = settings.qdrant_path is not None
    where = str(settings.qdrant_path) if local else settings.qdrant_url
    client = qdrant_index.connect(url=settings.qdrant_url, path=settings.qdrant_path,
                                  api_key=settings.qdrant_api_key, timeout_s=settings.qdrant_timeout_s)

    def open_qdrant() -> Any:
        index = qdrant_index.QdrantIndex.open(client, settings.qdrant_collection, where,
                                              timeout_s=settings.qdrant_timeout_s, local=local)
        index.check_model(served_model(models, index.description.get("model", {})))
        return index

    try:
        index = open_qdrant()
    except (Unavailable, BackendTimeout) as exc:
        log.warning("Qdrant is not answering at start (%s); searches answer 503 until it does", exc)
        return SearchService(open_qdrant, part_of_health=False, retry_after_s=QDRANT_RETRY_S)
    return SearchService(lambda: index, part_of_health=False, retry_after_s=QDRANT_RETRY_S)
