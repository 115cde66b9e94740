"""The FAISS backend against brute force over the stored vectors: the same ids and scores for the exact index,
with and without filters (both paths: exact scoring of the few matching items, and walking the nearest
candidates when many match), a measured recall@10 for the approximate one."""

from __future__ import annotations

import numpy as np
import pytest

from search import faiss_index
from search.errors import ItemNotFound, ReadOnly
from search.faiss_index import FaissIndex
from search.filters import parse_filter
from search.query import Query
from search_helpers import brute_force, build, clustered, matches, random_metadata

N, DIM = 3000, 16
FILTERS = [
    {"must": [{"key": "category", "match": {"any": [3, 4, 5]}}]},  # ~3%: few items
    {"must_not": [{"key": "color", "match": {"value": "red"}}]},  # ~80%: many
    {"must": [{"key": "price", "range": {"lt": 50}}], "must_not": [{"key": "in_stock", "match": {"value": False}}]},
]


@pytest.fixture(scope="module")
def data():
    return clustered(N, DIM, seed=1), random_metadata(N, seed=1), clustered(40, DIM, seed=2)


@pytest.fixture(scope="module")
def flat(data, tmp_path_factory):
    vectors, metadata, _ = data
    index = FaissIndex.open(build(tmp_path_factory.mktemp("flat") / "v1", vectors, metadata, index_type="flat"))
    yield index
    index.close()


@pytest.fixture(scope="module")
def hnsw(data, tmp_path_factory):
    vectors, metadata, _ = data
    index = FaissIndex.open(build(tmp_path_factory.mktemp("hnsw") / "v1", vectors, metadata, index_type="hnsw"))
    yield index
    index.close()


def assert_same(hits, expected):
    assert [h.id for h in hits] == [f"item-{r}" for r, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)


def test_flat_equals_brute_force(flat, data):
    vectors, _, queries = data
    for q in queries:
        assert_same(flat.search(Query(q, top_k=10)), brute_force(vectors, q, 10))


@pytest.mark.parametrize("brute_force_max", [faiss_index.BRUTE_FORCE_MAX, 50], ids=["few-match", "many-match"])
@pytest.mark.parametrize("raw", FILTERS, ids=range(len(FILTERS)))
def test_flat_with_a_filter_equals_filtered_brute_force(flat, data, raw, brute_force_max, monkeypatch):
    monkeypatch.setattr(faiss_index, "BRUTE_FORCE_MAX", brute_force_max)  # 50: every filter takes the walk path
    vectors, metadata, queries = data
    parsed = parse_filter(raw, flat.columns())
    keep = np.array([matches(parsed, m) for m in metadata])
    for q in queries[:10]:
        assert_same(flat.search(Query(q, top_k=10, filter=parsed)), brute_force(vectors, q, 10, keep))


def test_threshold_exclusion_and_a_filter_that_matches_nothing(flat, data):
    vectors, _, queries = data
    q = queries[0]
    ranked = brute_force(vectors, q, 30)
    cut = (ranked[19][1] + ranked[20][1]) / 2  # between two scores: float32 vs float64 rounding cannot matter
    hits = flat.search(Query(q, top_k=100, score_threshold=cut))
    assert len(hits) == 20
    assert_same(hits, brute_force(vectors, q, 100, threshold=cut))
    own = vectors[17]
    hits = flat.search(Query(own, top_k=5, exclude_id="item-17"))
    assert_same(hits, brute_force(vectors, own, 5, exclude=17))
    nothing = parse_filter({"must": [{"key": "category", "match": {"value": 12345}}]}, flat.columns())
    assert flat.search(Query(q, top_k=5, filter=nothing)) == []


def test_metadata_vectors_and_lookups_come_back_as_stored(flat, data):
    vectors, metadata, queries = data
    [hit] = flat.search(Query(queries[0], top_k=1, include_vectors=True))
    row = int(hit.id.split("-")[1])
    assert hit.metadata == {k: metadata[row].get(k) for k in ("category", "color", "price", "in_stock", "tags")}
    np.testing.assert_array_equal(hit.vector, vectors[row])
    np.testing.assert_array_equal(flat.vector_of("item-5"), vectors[5])
    assert flat.search(Query(queries[0], top_k=1, include_metadata=False))[0].metadata is None
    with pytest.raises(ItemNotFound):
        flat.vector_of("item-999999")
    with pytest.raises(ReadOnly, match="read-only"):
        flat.delete(ids=["item-1"])


def test_hnsw_recall_at_10_on_clustered_vectors(hnsw, data):
    vectors, _, queries = data
    recalls = []
    for q in queries:
        hits = hnsw.search(Query(q, top_k=10))
        expected = {f"item-{r}" for r, _ in brute_force(vectors, q, 10)}
        recalls.append(len(expected & {h.id for h in hits}) / 10)
        for h in hits:  # scores are exact inner products with the stored vectors, whatever was probed
            assert h.score == pytest.approx(float(vectors[int(h.id.split("-")[1])] @ q), abs=1e-5)
    assert np.mean(recalls) >= 0.95, recalls


def test_hnsw_builds_are_byte_identical_whatever_the_thread_count(data, hnsw, tmp_path):
    import faiss

    from models.bundle import sha256_file

    vectors, metadata, _ = data
    previous = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        again = build(tmp_path / "v1", vectors, metadata, index_type="hnsw")
    finally:
        faiss.omp_set_num_threads(previous)
    for name in ("vectors.faiss", "items.sqlite"):
        assert sha256_file(again / name) == sha256_file(hnsw.directory / name)


def test_hnsw_with_a_selective_filter_is_exact(hnsw, data):
    """Few items match: they are scored exactly, so even the approximate index equals brute force."""
    vectors, metadata, queries = data
    parsed = parse_filter(FILTERS[0], hnsw.columns())
    keep = np.array([matches(parsed, m) for m in metadata])
    for q in queries[:10]:
        assert_same(hnsw.search(Query(q, top_k=10, filter=parsed)), brute_force(vectors, q, 10, keep))


def test_memory_and_mmap_loads_answer_the_same(flat, data):
    index = FaissIndex.open(flat.directory, load="memory")
    try:
        q = data[2][3]
        assert [h.id for h in index.search(Query(q, top_k=7))] == [h.id for h in flat.search(Query(q, top_k=7))]
    finally:
        index.close()
