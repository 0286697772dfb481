"""A throwaway PostgreSQL server from the distribution's binaries, for the ledger tests and the
load benchmark (``--ledger postgres``).

It is started with ``initdb``/``pg_ctl`` into a temporary directory, listens on 127.0.0.1 only
(trust authentication, ``fsync=off``: the data is thrown away) and is stopped and removed on
leaving :func:`postgres_server`. As root, PostgreSQL refuses to run, so it runs as the
``postgres`` system user (created if missing). Standard library only, plus ``psycopg`` to create
the database: the benchmarks import it without pytest.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port

POSTGRES_PACKAGE_HINT = "install Debian's `postgresql` package (apt-get install postgresql)"


class PostgresUnavailable(RuntimeError):
    """The server cannot be started here (no binaries, no driver, no account to run it as)."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    database: str = "gpuslice_test"

    def url(self, schema: str | None = None) -> str:
        """The SQLAlchemy URL of the database; with ``schema``, connections work in that schema
        (a fresh schema is much cheaper than a database)."""
        url = f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.database}"
        return f"{url}?options=-csearch_path%3D{schema}" if schema else url

    def execute(self, statement: str, database: str | None = None) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=database or self.database, autocommit=True
        ) as connection:
            connection.execute(statement)


def bin_dir() -> Path | None:
    """Where the newest installed PostgreSQL's ``initdb`` and ``pg_ctl`` are, None if nowhere."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if installed:
        return installed[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _unprivileged_prefix(base: Path) -> list[str]:
    """How to run PostgreSQL's programs: as ourselves, or as root via the ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        created = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            raise PostgresUnavailable(
                f"running as root and could not create a postgres user: {created.stderr.strip()}"
            ) from None
        account = pwd.getpwnam("postgres")
    os.chown(base, account.pw_uid, account.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def postgres_server(database: str = "gpuslice_test", max_connections: int = 300) -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own on 127.0.0.1 with an empty ``database``, for the block's life.

    :class:`PostgresUnavailable` if it cannot start for want of binaries, driver or account;
    ``RuntimeError`` with the server's log if it was there and failed.
    """
    try:
        import psycopg  # noqa: F401 - needed by PostgresServer.execute and by the ledger
    except ImportError:
        raise PostgresUnavailable("the psycopg driver is missing: pip install 'psycopg[binary]'") from None
    binaries = bin_dir()
    if binaries is None:
        raise PostgresUnavailable(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found; {POSTGRES_PACKAGE_HINT}"
        )
    base = Path(tempfile.mkdtemp(prefix="gpuslice-postgres-"))
    try:
        prefix = _unprivileged_prefix(base)
        data, log = base / "data", base / "server.log"
        subprocess.run(
            [
                *prefix,
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        port = free_port()
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
            f" -c max_connections={max_connections}"
        )
        pg_ctl = str(binaries / "pg_ctl")
        started = subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{server_log}")
        server = PostgresServer(host="127.0.0.1", port=port, user="postgres", database=database)
        try:
            server.execute(f"CREATE DATABASE {server.database}", database="postgres")
            yield server
        finally:
            subprocess.run(
                [*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
