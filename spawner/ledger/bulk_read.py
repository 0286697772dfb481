"""Reading many rows from SQLite at once, as one JSON text that SQLite builds.

Python's ``sqlite3`` lets go of the GIL around every row it steps through and takes it back
before the next. In the service the reads run in worker threads while the event loop keeps the
GIL busy answering requests, so a reading thread waits for the GIL once per row, up to the
interpreter's switch interval (5 ms) each time: a listing of 500 jobs that takes 3 ms alone took
over half a second under load, and the scheduler's read of a long queue longer still. Asked for
one JSON text instead, SQLite builds it in C in a single step and ``orjson`` reads it,
so the thread waits for the GIL once, however many rows there are.

Other databases are read row by row as usual: their drivers fetch a whole result without giving
up the GIL per row.

A listing that is only passed on to an API client need not become Python objects at all:
:func:`as_separated_json_objects` has SQLite write each row as the JSON object the client gets,
behind the few values the caller needs to sort and complete it, and the answer is assembled from
those bytes (see ``JobStore.listing``), and :func:`as_separated_values` reads the short values
that say which versions of the rows a listing shows, when their objects are kept already.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, Boolean, Float, Text, case, cast, func, or_, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

LARGEST_FLOAT = 1.7976931348623157e308


def one_step_reads(connection: Connection) -> bool:
    """Whether :func:`read_json_objects` serves this connection (SQLite)."""
    return connection.dialect.name == "sqlite"


def as_json_objects(query: Select) -> Select:
    """A statement whose one value is ``query``'s rows as a JSON array of objects, keyed by the
    names of its columns; build it once and run it with :func:`read_json_objects`.

    JSON columns come back decoded, booleans as booleans, and floats exactly: SQLite writes them
    with 17 significant digits (``printf('%!.17g')``), enough for a double to read back as itself,
    and a value JSON cannot hold (an infinity) as null. The rows come in no promised order (SQLite
    may drop a subquery's ORDER BY under an aggregate), so callers sort them; ``query``'s LIMIT
    still chooses which rows.
    """
    ordered = query.subquery()
    fields = []
    for column in ordered.columns:
        fields += [column.key, _as_json_value(column)]
    return select(func.json_group_array(func.json_object(*fields)))


SEPARATOR = "\x1f"
"""Between the values of :func:`as_separated_json_objects`' text, and between its rows. JSON writes
every control character escaped (``\\u001f``), so it never occurs inside an object."""


def as_separated_json_objects(query: Select, leading: Sequence[str]) -> Select:
    """A statement whose one value is ``query``'s rows as text: per row, the values of the
    columns named in ``leading``, then the whole row as a JSON object (as :func:`as_json_objects`
    writes it), all separated by :data:`SEPARATOR`; read it with :func:`read_separated`.

    A ``leading`` float is written with 17 digits (``float()`` reads it back exactly), any other
    value as SQLite's text of it, so a leading column must be a number or text free of control
    characters (an id, a state), and never null. The rows come in no promised order.
    """
    rows = query.subquery()
    fields: list[Any] = []
    for column in rows.columns:
        fields += [column.key, _as_json_value(column)]
    row_text: Any = func.json_object(*fields)
    for name in reversed(leading):
        column = rows.columns[name]
        value = func.printf("%!.17g", column) if isinstance(column.type, Float) else column
        row_text = value.concat(SEPARATOR).concat(row_text)
    return select(func.coalesce(func.group_concat(row_text, SEPARATOR), ""))


def as_separated_values(query: Select) -> Select:
    """A statement whose one value is ``query``'s rows as text: each column's value, floats with
    17 digits and anything else as SQLite's text of it, separated by :data:`SEPARATOR`, and so are
    the rows; read it with :func:`read_separated`. For short values that identify rows (ids,
    states, counts, times): each must be free of control characters and never null. The rows come
    in no promised order."""
    rows = query.subquery()
    row_text: Any = None
    for column in rows.columns:
        value = func.printf("%!.17g", column) if isinstance(column.type, Float) else cast(column, Text)
        row_text = value if row_text is None else row_text.concat(SEPARATOR).concat(value)
    return select(func.coalesce(func.group_concat(row_text, SEPARATOR), ""))


def read_separated(connection: Connection, statement: Select, **params: Any) -> list[str]:
    """The values of an :func:`as_separated_json_objects` or :func:`as_separated_values`
    statement, row after row, as one flat list of text (SQLite only): one split of the whole
    text, so that the reading thread holds the GIL for little more than a copy of it. The caller
    slices the rows' fields out (``values[0::width]``...), also without a Python step per value.

    The statement runs on the connection's own sqlite3 connection, in its transaction, as SQL
    compiled once (:func:`_driver_form`): a listing runs two such statements, and SQLAlchemy's
    work to execute a cached statement cost more of the GIL than reading the rows did. Parameters
    are passed as they are, so they must be what sqlite3 takes (text, numbers, None).
    """
    sql, defaults = _driver_form(statement)
    driver = connection.connection.driver_connection
    assert driver is not None, "a connection in a transaction has its driver connection"
    text: str = driver.execute(sql, {**defaults, **params}).fetchone()[0]
    return text.split(SEPARATOR) if text else []


_NAMED_SQLITE = sqlite.dialect(paramstyle="named")


@functools.lru_cache(maxsize=128)
def _driver_form(statement: Select) -> tuple[str, dict[str, Any]]:
    """``statement`` as SQLite's SQL with named parameters, and the values of those it fixes
    itself (separators, JSON keys, formats); built once per statement (statements are built once
    per shape and kept, so the same object comes back)."""
    compiled = statement.compile(dialect=_NAMED_SQLITE)
    sql = str(compiled)
    if "POSTCOMPILE" in sql:
        raise ValueError("read_separated takes no expanding IN parameters: give each value its own")
    return sql, dict(compiled.params)


def read_json_objects(connection: Connection, statement: Select, **params: Any) -> list[dict[str, Any]]:
    """The rows of an :func:`as_json_objects` statement, read in one step (SQLite only)."""
    return orjson.loads(connection.execute(statement, params).scalar_one())


def _as_json_value(column: Any) -> Any:
    if isinstance(column.type, JSON):
        return func.json(column)
    if isinstance(column.type, Boolean):
        true, false, null = func.json("true"), func.json("false"), func.json("null")
        return case((column.is_(None), null), (column, true), else_=false)
    if isinstance(column.type, Float):
        not_a_number = or_(column.is_(None), func.abs(column) > LARGEST_FLOAT)
        return func.json(case((not_a_number, "null"), else_=func.printf("%!.17g", column)))
    return column
