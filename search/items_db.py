"""The index's items in SQLite: row number, id and metadata; filters run here as SQL.

Columns are stored as c0, c1, ... (the `columns` table maps them to the metadata names, whatever
characters those hold) with their type, so metadata comes back with the types it was given:
JSON types from JSONL, numbers from CSV columns whose every value is a number. Every filterable
column has an index, so a selective filter reads only the rows it matches.

The service opens the file read-only and immutable (``mode=ro&immutable=1``): no locks, no journal,
nothing written beside it, one connection per thread.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from search.filters import Condition, Filter, Match, MatchAny, Range

_INT = re.compile(r"[+-]?[0-9]+")


# --- types --------------------------------------------------------------------------------------------


class ColumnTypes:
    """Infers each metadata column's type from the values it will hold (a first pass over the input)."""

    def __init__(self, names: Sequence[str], from_csv: bool) -> None:
        self.names = list(names)
        self.from_csv = from_csv
        self._seen: dict[str, set[str]] = {name: set() for name in names}

    def add(self, record: Mapping[str, Any]) -> None:
        for name in self.names:
            kind = _kind(record.get(name), self.from_csv)
            if kind is not None:
                self._seen[name].add(kind)

    def result(self) -> dict[str, str]:
        return {name: _column_type(kinds, self.from_csv) for name, kinds in self._seen.items()}


def value_kind(value: Any) -> str | None:
    """The column type a JSON value belongs to (None for null)."""
    return _kind(value, from_csv=False)


def fits(kind: str, column: str) -> bool:
    """Whether a value of `kind` may go into a column of type `column` (integers into float columns too)."""
    return column == "json" or kind == column or (column == "float" and kind == "int")


def _csv_text(value: Any) -> str | None:
    """A CSV cell's text; empty cells are null."""
    text = str(value).strip()
    return text or None


def _kind(value: Any, from_csv: bool) -> str | None:
    if value is None:
        return None
    if from_csv:
        text = _csv_text(value)
        if text is None:
            return None
        if _INT.fullmatch(text):
            return "int"
        try:
            return "float" if math.isfinite(float(text)) else "str"
        except ValueError:
            return "str"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def _column_type(kinds: set[str], from_csv: bool) -> str:
    """One type for a column: a CSV column with any non-number is text; JSONL mixing types is 'json'."""
    if not kinds or (from_csv and "str" in kinds):
        return "str"
    if len(kinds) == 1:
        return next(iter(kinds))
    if kinds == {"int", "float"}:
        return "float"
    return "json"


def to_stored(value: Any, column: str, from_csv: bool) -> Any:
    """A metadata value as SQLite stores it for its column type."""
    if value is None:
        return None
    if from_csv:
        text = _csv_text(value)
        if text is None:
            return None
        if column == "int":
            return int(text)
        if column == "float":
            return float(text)
        return str(value)
    if column == "json":
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if column == "bool":
        return int(value)
    if column == "float":
        return float(value)
    return value


def typed_metadata(record: Mapping[str, Any], columns: Mapping[str, str], from_csv: bool) -> dict[str, Any]:
    """A row's metadata with its column types, nulls left out (a Qdrant payload): CSV numbers parsed."""
    out = {}
    for name, kind in columns.items():
        value = record.get(name)
        if from_csv:
            value = to_stored(value, kind, True)
        if value is not None:
            out[name] = value
    return out


def from_stored(value: Any, column: str) -> Any:
    if value is None:
        return None
    if column == "bool":
        return bool(value)
    if column == "json":
        return json.loads(value)
    return value


# --- writing (index build) -------------------------------------------------------------------------


class ItemsWriter:
    """Writes items in row order; `close` adds the column indexes and the planner's statistics."""

    def __init__(self, path: Path, columns: Mapping[str, str], from_csv: bool) -> None:
        self.columns = dict(columns)
        self.from_csv = from_csv
        # unix-none: no file locks (bucket mounts have none; one writer anyway)
        self.conn = sqlite3.connect(f"{path.resolve().as_uri()}?vfs=unix-none", uri=True)
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("CREATE TABLE columns(position INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                          "type TEXT NOT NULL)")
        self.conn.executemany("INSERT INTO columns VALUES (?, ?, ?)",
                              [(i, name, kind) for i, (name, kind) in enumerate(self.columns.items())])
        stored = "".join(f", c{i}" for i in range(len(self.columns)))
        self.conn.execute(f"CREATE TABLE items(row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE{stored})")
        marks = ", ".join("?" * (len(self.columns) + 2))
        self._insert = f"INSERT INTO items VALUES ({marks})"
        self.rows = 0

    def add(self, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """(id, metadata record) pairs, in row order."""
        values = []
        for item_id, record in rows:
            values.append((self.rows, item_id, *(to_stored(record.get(name), kind, self.from_csv)
                                                  for name, kind in self.columns.items())))
            self.rows += 1
        self.conn.executemany(self._insert, values)

    def close(self) -> None:
        for i, kind in enumerate(self.columns.values()):
            if kind != "json":
                self.conn.execute(f"CREATE INDEX items_c{i} ON items(c{i})")
        self.conn.execute("ANALYZE")
        self.conn.commit()
        self.conn.close()


# --- reading (the service) -------------------------------------------------------------------------


class ItemsDb:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        rows = self._conn().execute("SELECT position, name, type FROM columns ORDER BY position").fetchall()
        self.columns: dict[str, str] = {name: kind for _, name, kind in rows}
        self._stored = {name: f"c{position}" for position, name, _ in rows}
        self.count = self._conn().execute("SELECT count(*) FROM items").fetchone()[0]

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                   check_same_thread=False)
            self._local.conn = conn
        return conn

    def row_of(self, item_id: str) -> int | None:
        found = self._conn().execute("SELECT row FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if found is None else found[0]

    def rows_matching(self, filter: Filter, limit: int) -> list[int]:
        """Rows the filter keeps, at most `limit` of them (callers ask for one more than they can use)."""
        where, params = self.where(filter)
        cursor = self._conn().execute(f"SELECT row FROM items WHERE {where} LIMIT ?", (*params, limit))
        return [row for (row,) in cursor]

    def keep_matching(self, filter: Filter, rows: Sequence[int]) -> set[int]:
        """Which of `rows` the filter keeps (looked up by row, not through the column indexes)."""
        where, params = self.where(filter)
        cursor = self._conn().execute(
            f"SELECT items.row FROM json_each(?) AS j CROSS JOIN items ON items.row = j.value WHERE {where}",
            (json.dumps([int(r) for r in rows]), *params))
        return {row for (row,) in cursor}

    def records(self, rows: Sequence[int], with_metadata: bool) -> dict[int, tuple[str, dict[str, Any] | None]]:
        """row -> (id, metadata or None) for the given rows."""
        names = list(self.columns) if with_metadata else []
        stored = "".join(f", items.{self._stored[name]}" for name in names)
        cursor = self._conn().execute(
            f"SELECT items.row, items.id{stored} FROM json_each(?) AS j CROSS JOIN items ON items.row = j.value",
            (json.dumps([int(r) for r in rows]),))
        result = {}
        for row, item_id, *values in cursor:
            metadata = {name: from_stored(v, self.columns[name]) for name, v in zip(names, values)}
            result[row] = (item_id, metadata if with_metadata else None)
        return result

    def where(self, filter: Filter) -> tuple[str, list[Any]]:
        params: list[Any] = []
        return self._filter_sql(filter, params, exact=False), params

    def _filter_sql(self, filter: Filter, params: list[Any], exact: bool) -> str:
        """SQL for a filter. `exact`: every leaf is 0 or 1, never NULL (needed under NOT, where Qdrant keeps
        items without the key); outside NOT a NULL is as good as false, and plain leaves can use the indexes."""
        parts = [self._condition_sql(c, params, exact) for c in filter.must]
        if filter.should:
            parts.append("(" + " OR ".join(self._condition_sql(c, params, exact) for c in filter.should) + ")")
        if filter.must_not:
            parts.append("NOT (" + " OR ".join(self._condition_sql(c, params, True) for c in filter.must_not) + ")")
        return "(" + " AND ".join(parts) + ")" if parts else "1"

    def _condition_sql(self, condition: Condition, params: list[Any], exact: bool) -> str:
        if isinstance(condition, Filter):
            return self._filter_sql(condition, params, exact)
        column = self._stored[condition.key]
        if isinstance(condition, Match):
            params.append(int(condition.value) if isinstance(condition.value, bool) else condition.value)
            sql = f"{column} = ?"
        elif isinstance(condition, MatchAny):
            params.extend(condition.values)
            sql = f"{column} IN ({', '.join('?' * len(condition.values))})"
        elif isinstance(condition, Range):
            ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
            bounds = condition.bounds()
            params.extend(value for _, value in bounds)
            sql = " AND ".join(f"{column} {ops[op]} ?" for op, _ in bounds)
        else:  # pragma: no cover - parse_filter makes only these
            raise TypeError(condition)
        return f"IFNULL({sql}, 0)" if exact else f"({sql})"

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
