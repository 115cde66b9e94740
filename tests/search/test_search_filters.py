"""Filters: Qdrant's syntax parsed and checked against the index's columns; SQLite keeps exactly the items the
plain-Python reference (Qdrant's semantics: a missing key matches nothing, so must_not keeps it) keeps."""

from __future__ import annotations

import pytest

from search.errors import BadQuery
from search.faiss_index import FaissIndex
from search.filters import parse_filter
from search_helpers import build, clustered, matches, random_metadata

N = 600
COLUMNS = {"category": "int", "color": "str", "price": "float", "in_stock": "bool", "tags": "json"}

FILTERS = [
    {"must": [{"key": "category", "match": {"value": 7}}]},
    {"must": [{"key": "color", "match": {"any": ["red", "blue"]}}]},
    {"must": [{"key": "price", "range": {"gte": 20, "lt": 40.5}}]},
    {"must_not": [{"key": "color", "match": {"value": "red"}}]},
    {"must_not": [{"key": "price", "range": {"gt": 50}}, {"key": "in_stock", "match": {"value": False}}]},
    {"should": [{"key": "category", "match": {"any": [1, 2, 3]}}, {"key": "color", "match": {"value": "white"}}]},
    {"must": [{"key": "in_stock", "match": {"value": True}},
              {"should": [{"key": "price", "range": {"lt": 10}}, {"key": "price", "range": {"gt": 90}}]}],
     "must_not": [{"must": [{"key": "color", "match": {"value": "black"}}, {"key": "category", "range": {"gte": 50}}]}]},
    {"must": [{"key": "category", "match": {"value": 1000}}]},  # matches nothing: an empty answer, not an error
    {"must": {"key": "color", "match": {"value": "green"}}},  # a single condition in place of a list, as Qdrant allows
]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    metadata = random_metadata(N, seed=3)
    path = build(tmp_path_factory.mktemp("filters") / "v1", clustered(N, 16, seed=3), metadata)
    opened = FaissIndex.open(path)
    yield opened, metadata
    opened.close()


def test_columns_keep_their_json_types(index):
    opened, _ = index
    assert opened.columns() == COLUMNS


@pytest.mark.parametrize("raw", FILTERS, ids=range(len(FILTERS)))
def test_sql_keeps_exactly_what_the_reference_keeps(index, raw):
    opened, metadata = index
    parsed = parse_filter(raw, opened.columns())
    expected = [row for row in range(N) if matches(parsed, metadata[row])]
    assert sorted(opened.items.rows_matching(parsed, N + 1)) == expected
    some = list(range(0, N, 3))
    assert opened.items.keep_matching(parsed, some) == {r for r in some if r in set(expected)}


@pytest.mark.parametrize("raw, where, message", [
    ({"must": [{"key": "nope", "match": {"value": 1}}]}, "filter.must[0].key", "unknown metadata key 'nope'"),
    ({"must": [{"key": "category", "match": {"value": "7"}}]}, "filter.must[0].match.value", "expected an integer"),
    ({"must": [{"key": "color", "range": {"gt": 1}}]}, "filter.must[0].range", "range needs numbers"),
    ({"must": [{"key": "price", "match": {"value": 3}}]}, "filter.must[0].match", "use a range"),
    ({"must": [{"key": "tags", "match": {"value": "a"}}]}, "filter.must[0].key", "cannot be filtered"),
    ({"must": [{"key": "category", "match": {"like": 7}}]}, "filter.must[0].match", "value"),
    ({"must": [{"key": "category", "range": {"between": 7}}]}, "filter.must[0].range", "gt"),
    ({"must": [{"key": "category", "range": {"gt": "7"}}]}, "filter.must[0].range.gt", "finite number"),
    ({"must": [{"key": "category", "match": {"any": [1, "2"]}}]}, "filter.must[0].match.any[1]", "integer"),
    ({"must": [{"key": "in_stock", "match": {"value": 1}}]}, "filter.must[0].match.value", "boolean"),
    ({"must": [{"key": "category"}]}, "filter.must[0]", "match or range"),
    ({"filter": []}, "filter.filter", "unknown clause"),
    ({"must": "x"}, "filter.must", "list of conditions"),
    ([], "filter", "must be an object"),
    ({"must": [{"must": [{"must": [{"must": [{"must": []}]}]}]}]}, "filter.must[0].must[0].must[0].must[0]",
     "nest at most"),
])
def test_bad_filters_name_the_field(raw, where, message):
    with pytest.raises(BadQuery) as caught:
        parse_filter(raw, COLUMNS)
    assert caught.value.param == where and message in caught.value.message, caught.value.message


def test_without_a_schema_any_key_and_qdrant_value_types_pass():
    parsed = parse_filter({"must": [{"key": "anything", "match": {"value": "x"}}]}, None)
    assert parsed.must[0].key == "anything"
    with pytest.raises(BadQuery):
        parse_filter({"must": [{"key": "anything", "match": {"value": 1.5}}]}, None)


def test_a_huge_filter_is_refused():
    raw = {"should": [{"key": "category", "match": {"value": i}} for i in range(100)]}
    with pytest.raises(BadQuery, match="at most 64 conditions"):
        parse_filter(raw, COLUMNS)
