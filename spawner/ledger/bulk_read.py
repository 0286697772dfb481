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
those bytes (see ``JobStore.listing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, Boolean, Float, case, func, or_, select
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


RECORD_SEPARATOR = "\x1e"
UNIT_SEPARATOR = "\x1f"
"""Between rows, and between the values of a row, in :func:`as_separated_json_objects`' text. JSON
writes every control character escaped (``\\u001e``), so neither occurs inside an object."""


def as_separated_json_objects(query: Select, leading: Sequence[str]) -> Select:
    """A statement whose one value is ``query``'s rows as text: per row, the values of the
    columns named in ``leading`` as JSON texts, then the whole row as a JSON object (as
    :func:`as_json_objects` writes it), separated by :data:`UNIT_SEPARATOR`, rows by
    :data:`RECORD_SEPARATOR`; read it with :func:`read_separated_json_objects`. A ``leading``
    column must not be null. The rows come in no promised order."""
    rows = query.subquery()
    fields: list[Any] = []
    for column in rows.columns:
        fields += [column.key, _as_json_value(column)]
    row_text: Any = func.json_object(*fields)
    for name in reversed(leading):
        # json_quote writes text quoted and leaves JSON (a float as written above) as it is
        row_text = func.json_quote(_as_json_value(rows.columns[name])).concat(UNIT_SEPARATOR).concat(row_text)
    return select(func.coalesce(func.group_concat(row_text, RECORD_SEPARATOR), ""))


def read_separated_json_objects(
    connection: Connection, statement: Select, **params: Any
) -> list[list[bytes]]:
    """The rows of an :func:`as_separated_json_objects` statement, each as its leading values'
    JSON texts and then its JSON object, all UTF-8 bytes (SQLite only)."""
    text: str = connection.execute(statement, params).scalar_one()
    if not text:
        return []
    record, unit = RECORD_SEPARATOR.encode(), UNIT_SEPARATOR.encode()
    return [row.split(unit) for row in text.encode().split(record)]


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
