"""Database engines for the ledger, set up so that allocations are serialized.

Allocate and release read the state (live leases, usage), decide, and write. Two of them running
side by side could each see the same free milli-GPU and both take it, so every writing
transaction takes one cluster-wide lock before its first read:

* PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key. It is held until commit or rollback, so
  it cannot leak, it needs no table row, and under the default READ COMMITTED isolation every
  statement after it sees everything committed before it.
* SQLite: ``BEGIN IMMEDIATE``, which takes the database's write lock at the start of the
  transaction instead of at its first write. With a plain (deferred) BEGIN two writers both read,
  and then one of them fails when it tries to upgrade to writing (in WAL mode it fails at once,
  without waiting, because its snapshot is stale). SQLAlchemy cannot ask for IMMEDIATE, so the
  driver's own transaction handling is switched off on connect and the ``begin`` event emits it.

Reads run in their own deferred transactions: under WAL they see one consistent snapshot and
never wait for writers. WAL also lets the hub's pages read while the allocator writes, and the
busy timeout makes a writer wait for the lock rather than fail; if it still times out, the
caller retries (see :func:`is_busy`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

ALLOCATOR_LOCK_KEY = 0x677075736C696365
"""The advisory lock's key on PostgreSQL: the bytes of 'gpuslice' read as a 64-bit integer."""

BEGIN_OPTION = "gpuslice_sqlite_begin"
"""Execution option naming the BEGIN flavour for SQLite: IMMEDIATE (writes) or DEFERRED (reads)."""


def create_ledger_engine(url: str, *, busy_timeout_s: float = 30.0, echo: bool = False) -> Engine:
    """An engine for ``url``, with SQLite's pragmas and transaction control set up."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, echo=echo, pool_pre_ping=True)
    in_memory = parsed.database in (None, "", ":memory:")
    options: dict[str, Any] = {"echo": echo}
    if in_memory:
        # Each connection to :memory: is a database of its own: share one connection.
        options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    engine = create_engine(parsed, **options)
    busy_timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def configure_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
        # None turns off the sqlite3 module's own BEGIN/COMMIT so that ours below is the only one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL survives any crash of the process; only a power cut can roll
                # back the last commits, and lease ids make the callers' retries safe then.
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def begin_sqlite(connection: Any) -> None:
        flavour = connection.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {flavour}")

    return engine


def reader(engine: Engine) -> Engine:
    """The same engine (same pool), but whose SQLite transactions begin deferred, for reads."""
    return engine.execution_options(**{BEGIN_OPTION: "DEFERRED"})


def lock_allocator(session: Session) -> None:
    """Take the cluster-wide allocator lock for the rest of ``session``'s transaction.

    A session begins its database transaction lazily, at its first statement; asking for its
    connection begins it now, which on SQLite emits BEGIN IMMEDIATE and so takes the lock. Either
    way the lock is held when this returns, so whatever the caller reads next (the clock
    included) comes after every transaction that committed before.
    """
    lock_connection(session.connection())


def lock_connection(connection: Connection) -> None:
    """The same, on a connection already in its transaction (SQLite's lock came with BEGIN)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ALLOCATOR_LOCK_KEY})


def is_busy(error: OperationalError) -> bool:
    """Whether ``error`` is SQLite giving up on the lock after its busy timeout (worth a retry)."""
    message = str(error.orig).lower()
    return "database is locked" in message or "database table is locked" in message
