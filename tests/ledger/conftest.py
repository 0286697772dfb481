"""Fixtures for the ledger tests: a small inventory, ledgers on SQLite, and a throwaway PostgreSQL.

The PostgreSQL server is started from the distribution's binaries into a temporary directory and
stopped at the end of the session, so the tests need no running database and leave nothing
behind. As root, PostgreSQL refuses to run, so it runs as the ``postgres`` system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spawner.core.units import GPU, Node
from spawner.ledger import Ledger

POSTGRES_PACKAGE_HINT = "install Debian's `postgresql` package (apt-get install postgresql)"


def small_inventory() -> list[Node]:
    """Two dev nodes with two 16 GiB cards each, and one training node with two 80 GiB cards."""
    nodes = []
    for name in ("dev-a", "dev-b"):
        gpus = tuple(GPU(f"{name}-gpu{i}", name, i, "T4", 16384) for i in range(2))
        nodes.append(Node(name, cpu_milli=16000, memory_mib=65536, gpus=gpus))
    train = tuple(
        GPU(f"train-gpu{i}", "train", i, "A100", 81920, pools=frozenset({"train"})) for i in range(2)
    )
    nodes.append(Node("train", cpu_milli=32000, memory_mib=262144, gpus=train))
    return nodes


@pytest.fixture
def inventory() -> list[Node]:
    return small_inventory()


class FakeClock:
    """A clock the test moves by hand, so accounting is checked without waiting."""

    def __init__(self, now: float = 1_715_594_400.0):  # Monday 2024-05-13 10:00 UTC
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ------------------------------------------------------------------------------ PostgreSQL


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    database: str = "gpuslice_test"

    def url(self, schema: str) -> str:
        """A URL whose connections work in ``schema``: a fresh schema is much cheaper than a database."""
        return (
            f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.database}"
            f"?options=-csearch_path%3D{schema}"
        )

    def execute(self, statement: str, database: str | None = None) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=database or self.database, autocommit=True
        ) as connection:
            connection.execute(statement)


def _postgres_bin_dir() -> Path | None:
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if installed:
        return installed[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
            pytest.skip(f"running as root and could not create a postgres user: {created.stderr.strip()}")
        account = pwd.getpwnam("postgres")
    os.chown(base, account.pw_uid, account.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own on 127.0.0.1, for this test session only."""
    pytest.importorskip("psycopg", reason="the psycopg driver is missing: pip install 'psycopg[binary]'")
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {POSTGRES_PACKAGE_HINT}")
    base = Path(tempfile.mkdtemp(prefix="gpuslice-postgres-"))
    try:
        prefix = _unprivileged_prefix(base)
        data, log = base / "data", base / "server.log"
        subprocess.run(
            [
                *prefix,
                str(bin_dir / "initdb"),
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
        port = _free_port()
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        started = subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{server_log}")
        server = PostgresServer(host="127.0.0.1", port=port, user="postgres")
        server.execute(f"CREATE DATABASE {server.database}", database="postgres")
        try:
            yield server
        finally:
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty schema on the session's server, dropped after the test."""
    schema = f"ledger_{uuid.uuid4().hex[:12]}"
    postgres_server.execute(f"CREATE SCHEMA {schema}")
    yield postgres_server.url(schema)
    postgres_server.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty database, once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def ledger(ledger_url: str, inventory: list[Node], clock: FakeClock) -> Iterator[Ledger]:
    """A ledger with its schema and the small inventory, on the fake clock."""
    with contextlib.closing(Ledger(ledger_url, clock=clock)) as ledger:
        ledger.create_schema()
        ledger.sync_inventory(inventory)
        yield ledger
