"""Fixtures for the ledger tests: a small inventory, ledgers on SQLite, and a throwaway PostgreSQL.

The PostgreSQL server is started from the distribution's binaries into a temporary directory and
stopped at the end of the session (:mod:`harness.postgres`, which the load benchmark uses too), so
the tests need no running database and leave nothing behind.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.postgres import PostgresServer, PostgresUnavailable
from harness.postgres import postgres_server as postgres_server_for_tests

from spawner.core.units import GPU, Node
from spawner.ledger import Ledger


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own on 127.0.0.1, for this test session only (see
    :mod:`harness.postgres`); the tests that need it are skipped where it cannot start."""
    try:
        with postgres_server_for_tests() as server:
            yield server
    except PostgresUnavailable as reason:
        pytest.skip(str(reason))


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
