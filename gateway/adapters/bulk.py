"""SQLite driver statements for the pipeline (``gateway.adapters.sqlite_pipeline``), and the JSON encoding of
JSON columns.

SQLAlchemy runs every bound value of every row through the column type's processors in Python; for the readings
path that was most of the writer's CPU. These helpers convert values once, with plain functions that give exactly
what the column types store (``UtcDateTime`` as naive UTC text in SQLAlchemy's format, ``JSON`` as compact text),
and give them to the driver as multi-row statements (an UPDATE whose keys repeat falls back to ``executemany``).
They give the same rows as the portable path (tested against each other).
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from gateway.adapters.tables import UtcDateTime
from gateway.service.ports import StaleWrite

__all__ = ["RawJson", "Statement", "chunks", "dumps_json", "insert_statements", "run_all", "sqlite_datetime",
           "update_statements"]

Row = Mapping[str, Any]
_keys = dict.keys
Convert = Callable[[Any], Any] | None


# Datetimes (aware, UTC) are written as ISO 8601 with "Z", as ``gateway.domain.timeutil.to_iso`` writes them.
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


class RawJson(str):
    """JSON text already encoded, stored as it is in a JSON column."""

    __slots__ = ()


def dumps_json(value: Any) -> str:
    """JSON text as stored in JSON columns (also the engine's ``json_serializer``)."""
    if type(value) is RawJson:
        return value
    return orjson.dumps(value, option=_OPTIONS).decode()


_last: tuple[dt.datetime | None, str | None] = (None, None)  # the last one converted: a batch's rows share `now`


def sqlite_datetime(value: dt.datetime | None) -> str | None:
    """An aware datetime as SQLite stores a ``UtcDateTime``: naive UTC text, microseconds always written."""
    global _last
    if value is None:
        return None
    last = _last
    if value is last[0]:
        return last[1]
    key = value
    if value.tzinfo is not dt.UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetime: times are stored in UTC and must carry a zone")
        value = value.astimezone(dt.UTC)
    text = value.replace(tzinfo=None).isoformat(" ", "microseconds")
    _last = (key, text)
    return text


def _json_or_none(value: Any) -> str | None:
    return None if value is None else dumps_json(value)


def _converter(column: sa.Column[Any]) -> Convert:
    if isinstance(column.type, UtcDateTime):
        return sqlite_datetime
    if isinstance(column.type, sa.JSON):
        return _json_or_none
    return None


_converters: dict[tuple[str, tuple[str, ...]], tuple[Convert, ...]] = {}


def _converters_of(table: sa.Table, columns: tuple[str, ...]) -> tuple[Convert, ...]:
    key = (table.name, columns)
    converters = _converters.get(key)
    if converters is None:
        converters = _converters[key] = tuple(_converter(table.c[name]) for name in columns)
    return converters


_plans: dict[tuple[Any, ...], str] = {}


def _plan(key: tuple[Any, ...], table: sa.Table, columns: tuple[str, ...], sql: Callable[[], str]
          ) -> tuple[str, tuple[Convert, ...]]:
    text = _plans.get(key)
    if text is None:
        text = _plans[key] = sql()
    return text, _converters_of(table, columns)


def _tuples(rows: Sequence[Row], columns: Sequence[str], converters: tuple[Convert, ...]) -> list[Any]:
    """Each row's values in ``columns`` order, converted where the column type needs it."""
    if len(columns) == 1:
        (f,) = converters
        return [(row[columns[0]] if f is None else f(row[columns[0]]),) for row in rows]
    get = operator.itemgetter(*columns)
    convert = [(i, f) for i, f in enumerate(converters) if f is not None]
    if not convert:
        return [get(row) for row in rows]
    out = []
    for row in rows:
        values = list(get(row))
        for i, f in convert:
            values[i] = f(values[i])
        out.append(tuple(values))
    return out


def _flat(rows: Sequence[Row], columns: Sequence[str], converters: tuple[Convert, ...]) -> list[Any]:
    """The rows' values in ``columns`` order, one row after the other in one list, converted where the column
    type needs it (the parameters of a multi-row statement)."""
    width = len(columns)
    if width == 1:
        flat = [row[columns[0]] for row in rows]
    else:
        flat = list(itertools.chain.from_iterable(map(operator.itemgetter(*columns), rows)))
    for i, f in enumerate(converters):
        if f is not None:
            flat[i::width] = list(map(f, flat[i::width]))
    return flat


# A multi-row statement binds all its rows in one call, and SQLite runs it in one step without Python's GIL:
# ``executemany`` steps once per row and must take the GIL back after each, which on a busy event loop makes
# the database thread wait for the loop thread between rows. Chunks are powers of two (few distinct statements
# for the driver's statement cache), within SQLite's limit on bound parameters (32766 since 3.32).
_MAX_PARAMS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_MAX_ROWS = 256
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)  # UPDATE ... FROM


def chunks(rows: int, width: int, *, max_params: int = _MAX_PARAMS) -> Iterator[tuple[int, int]]:
    """(first row, row count) of each multi-row statement (or IN list) for ``rows`` rows of ``width`` values:
    powers of two (few distinct statements), within ``max_params`` bound parameters."""
    cap = _MAX_ROWS
    while cap > 1 and cap * width > max_params:
        cap //= 2
    start = 0
    while start < rows:
        size = min(cap, 1 << ((rows - start).bit_length() - 1))
        yield start, size
        start += size


def _multi_row(kind: str, table: sa.Table, order: tuple[str, ...], flat: list[Any], rows: int,
               sql: Callable[[str], str], *, guarded: bool = False) -> list[Statement]:
    """One statement per chunk of ``rows``; ``sql(values)`` makes the text around the VALUES list."""
    width = len(order)
    out = []
    for start, size in chunks(rows, width):
        key = (kind, table.name, order, size)
        text = _texts.get(key)
        if text is None:
            text = _texts[key] = sql(", ".join([f"({', '.join('?' * width)})"] * size))
        out.append(Statement(text, flat[start * width:(start + size) * width], size if guarded else None,
                             many=False))
    return out


_texts: dict[tuple[Any, ...], str] = {}


def _groups(rows: Sequence[Row]) -> dict[tuple[str, ...], list[Row]]:
    """The rows grouped by their set of keys (one statement each)."""
    if not rows:
        return {}
    keys = rows[0].keys()
    if all(map(keys.__eq__, map(_keys, rows))):  # the common case: all alike
        return {tuple(keys): list(rows)}
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return groups


@dataclass(frozen=True, slots=True)
class Statement:
    """One prepared driver statement.

    ``guard``: the number of rows it must change (a guarded UPDATE), else ``StaleWrite``. ``many``: ``params``
    is a list of parameter sets (executemany); else one set (a multi-row statement).
    """

    statement: str
    params: list[Any]
    guard: int | None = None
    many: bool = True


def insert_statements(table: sa.Table, rows: Sequence[Row]) -> list[Statement]:
    """INSERT ``rows`` (dicts of column values) into ``table``: multi-row statements, one set per set of keys."""
    if not rows:
        return []
    out = []
    for columns, group in _groups(rows).items():
        converters = _converters_of(table, columns)
        head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
        out += _multi_row("insert", table, columns, _flat(group, columns, converters), len(group),
                          lambda values, head=head: head + values)
    return out


def update_statements(table: sa.Table, key: str, rows: Sequence[Row], *,
                      increment: str | None = None) -> list[Statement]:
    """UPDATE ``table`` row by row (matched on column ``key``) with each dict's other values.

    ``increment`` names an integer column (a version counter) to add one to in every updated row. When the
    rows carry that column too, its value is the one expected in the database: a row whose counter differs
    (changed by another writer since it was read) raises ``StaleWrite`` and the transaction must be rolled back.
    """
    out = []
    for names, group in _groups(rows).items():
        guarded = increment is not None and increment in names
        columns = tuple(n for n in names if n not in (key, increment))
        order = (*columns, key, *((increment,) if guarded else ()))
        if _UPDATE_FROM and len({row[key] for row in group}) == len(group):  # one statement for many rows
            converters = _converters_of(table, order)
            name = table.name
            sets = [f"{c} = v.column{i}" for i, c in enumerate(columns, 1)]
            sets += [f"{increment} = {name}.{increment} + 1"] if increment else []
            assignments = ", ".join(sets)
            where = f"{name}.{key} = v.column{len(columns) + 1}"
            where += f" AND {name}.{increment} = v.column{len(columns) + 2}" if guarded else ""
            out += _multi_row(f"update {increment}", table, order, _flat(group, order, converters), len(group),
                              lambda values, sets=assignments, where=where, name=name: (
                                  f"UPDATE {name} SET {sets} FROM (VALUES {values}) AS v WHERE {where}"),
                              guarded=guarded)
            continue

        def sql(columns: tuple[str, ...] = columns, guarded: bool = guarded) -> str:
            sets = [f"{c} = ?" for c in columns] + ([f"{increment} = {increment} + 1"] if increment else [])
            where = f"{key} = ?" + (f" AND {increment} = ?" if guarded else "")
            return f"UPDATE {table.name} SET {', '.join(sets)} WHERE {where}"

        sql_text, converters = _plan(("update", table.name, order, increment), table, order, sql)
        out.append(Statement(sql_text, _tuples(group, order, converters), len(group) if guarded else None))
    return out


def run_all(sqlite: Any, statements: Sequence[Statement]) -> None:
    """Execute the statements on a ``sqlite3`` connection (in the caller's transaction)."""
    for item in statements:
        run = sqlite.executemany if item.many else sqlite.execute
        _check(item, run(item.statement, item.params).rowcount)


def _check(item: Statement, rowcount: int) -> None:
    if item.guard is not None and rowcount != item.guard:
        raise StaleWrite(f"{item.guard - rowcount} of {item.guard} rows were changed by another writer")
