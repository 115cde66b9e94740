"""Metadata filters in Qdrant's JSON syntax, parsed and checked against the index's columns.

Supported (a subset of Qdrant's, so the Qdrant backend can pass it through unchanged):

    {"must": [C, ...], "should": [C, ...], "must_not": [C, ...]}
    C = {"key": K, "match": {"value": V}}          V a string, integer or boolean
      | {"key": K, "match": {"any": [V, ...]}}     strings or integers
      | {"key": K, "range": {"gt"|"gte"|"lt"|"lte": N, ...}}
      | a nested filter {"must": ..., ...}

Semantics are Qdrant's: every ``must`` holds, at least one ``should`` holds (when there are any), no
``must_not`` holds; an item without the key (or with null) matches no condition, so ``must_not``
keeps it. Float columns take ``range`` only (equality on floats is not offered, as in Qdrant).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from search.errors import BadQuery

# Column types of the index's metadata; "json" holds lists/objects/mixed values and cannot be filtered.
COLUMN_TYPES = ("str", "int", "float", "bool", "json")
CLAUSES = ("must", "should", "must_not")
RANGE_OPS = ("gt", "gte", "lt", "lte")
MAX_DEPTH = 4
MAX_CONDITIONS = 64
MAX_ANY_VALUES = 1024

Scalar = Union[str, int, bool]


@dataclass(frozen=True)
class Match:
    key: str
    value: Scalar


@dataclass(frozen=True)
class MatchAny:
    key: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    def bounds(self) -> list[tuple[str, float]]:
        return [(op, getattr(self, op)) for op in RANGE_OPS if getattr(self, op) is not None]


@dataclass(frozen=True)
class Filter:
    must: tuple["Condition", ...] = ()
    should: tuple["Condition", ...] = ()
    must_not: tuple["Condition", ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.must or self.should or self.must_not)


Condition = Union[Match, MatchAny, Range, Filter]


def parse_filter(data: Any, columns: Mapping[str, str] | None, where: str = "filter") -> Filter:
    """A checked ``Filter`` from request JSON. ``columns`` (name -> type) rejects unknown keys and values of
    the wrong type; None accepts any key with Qdrant's value types (a backend that has no schema)."""
    budget = [MAX_CONDITIONS]
    return _filter(data, columns, where, depth=1, budget=budget)


def _filter(data: Any, columns: Mapping[str, str] | None, where: str, depth: int, budget: list[int]) -> Filter:
    if not isinstance(data, dict):
        raise BadQuery(f"{where}: must be an object with must / should / must_not lists", param=where)
    if depth > MAX_DEPTH:
        raise BadQuery(f"{where}: filters nest at most {MAX_DEPTH} deep", param=where)
    unknown = sorted(set(data) - set(CLAUSES))
    if unknown:
        raise BadQuery(f"{where}: unknown clause {unknown[0]!r}; supported: {', '.join(CLAUSES)}",
                       param=f"{where}.{unknown[0]}")
    clauses: dict[str, tuple[Condition, ...]] = {}
    for clause in CLAUSES:
        items = data.get(clause, [])
        if isinstance(items, dict):  # Qdrant accepts a single condition in place of a list
            items = [items]
        if not isinstance(items, list):
            raise BadQuery(f"{where}.{clause}: must be a list of conditions", param=f"{where}.{clause}")
        clauses[clause] = tuple(_condition(item, columns, f"{where}.{clause}[{i}]", depth, budget)
                                for i, item in enumerate(items))
    return Filter(**clauses)


def _condition(data: Any, columns: Mapping[str, str] | None, where: str, depth: int, budget: list[int]) -> Condition:
    budget[0] -= 1
    if budget[0] < 0:
        raise BadQuery(f"{where}: a filter has at most {MAX_CONDITIONS} conditions", param=where)
    if isinstance(data, dict) and "key" not in data and set(data) & set(CLAUSES):
        return _filter(data, columns, where, depth + 1, budget)
    if not isinstance(data, dict) or "key" not in data:
        raise BadQuery(f"{where}: a condition is {{\"key\": ..., \"match\" or \"range\": ...}} or a nested filter",
                       param=where)
    key = data["key"]
    if not isinstance(key, str) or not key:
        raise BadQuery(f"{where}.key: must be a non-empty string", param=f"{where}.key")
    kinds = sorted(set(data) - {"key"})
    if kinds not in (["match"], ["range"]):
        raise BadQuery(f"{where}: give exactly one of match or range (got {', '.join(kinds) or 'neither'})",
                       param=where)
    column = _column_type(key, columns, where)
    if kinds == ["match"]:
        return _match(key, data["match"], column, f"{where}.match")
    return _range(key, data["range"], column, f"{where}.range")


def _column_type(key: str, columns: Mapping[str, str] | None, where: str) -> str | None:
    if columns is None:
        return None
    if key not in columns:
        known = ", ".join(sorted(columns)) or "none"
        raise BadQuery(f"{where}.key: unknown metadata key {key!r}; the index has: {known}", param=f"{where}.key")
    if columns[key] == "json":
        raise BadQuery(f"{where}.key: {key!r} holds lists, objects or mixed types and cannot be filtered",
                       param=f"{where}.key")
    return columns[key]


def _match(key: str, data: Any, column: str | None, where: str) -> Match | MatchAny:
    if not isinstance(data, dict) or sorted(data) not in (["value"], ["any"]):
        raise BadQuery(f"{where}: must be {{\"value\": V}} or {{\"any\": [V, ...]}}", param=where)
    if column == "float":
        raise BadQuery(f"{where}: {key!r} is a float column; use a range condition", param=where)
    if "value" in data:
        return Match(key, _scalar(data["value"], column, f"{where}.value", allow_bool=True))
    values = data["any"]
    if not isinstance(values, list) or not values or len(values) > MAX_ANY_VALUES:
        raise BadQuery(f"{where}.any: must be a list of 1 to {MAX_ANY_VALUES} values", param=f"{where}.any")
    parsed = tuple(_scalar(v, column, f"{where}.any[{i}]", allow_bool=False) for i, v in enumerate(values))
    if len({type(v) for v in parsed}) > 1:
        raise BadQuery(f"{where}.any: values must be all strings or all integers", param=f"{where}.any")
    return MatchAny(key, parsed)


def _scalar(value: Any, column: str | None, where: str, *, allow_bool: bool) -> Scalar:
    if isinstance(value, bool):
        ok = allow_bool and column in (None, "bool")
    elif isinstance(value, int):
        ok = column in (None, "int")
    elif isinstance(value, str):
        ok = column in (None, "str")
    else:
        ok = False
    if not ok:
        expected = {"str": "a string", "int": "an integer", "bool": "a boolean"}.get(column or "",
                                                                                    "a string or an integer")
        raise BadQuery(f"{where}: expected {expected}" + (f" for a {column} column" if column else ""), param=where)
    return value


def _range(key: str, data: Any, column: str | None, where: str) -> Range:
    if column in ("str", "bool"):
        raise BadQuery(f"{where}: {key!r} is a {column} column; range needs numbers", param=where)
    if not isinstance(data, dict) or not data or set(data) - set(RANGE_OPS):
        raise BadQuery(f"{where}: must be an object with some of {', '.join(RANGE_OPS)}", param=where)
    bounds: dict[str, float] = {}
    for op, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadQuery(f"{where}.{op}: must be a finite number", param=f"{where}.{op}")
        bounds[op] = value
    return Range(key, **bounds)
