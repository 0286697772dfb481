"""How the ledger talks to its database: SQLite's settings, locking and retries, schema creation."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
from sqlalchemy import inspect

from spawner.core.quota import QuotaPolicy
from spawner.core.units import SliceRequest
from spawner.ledger import Ledger, LedgerBusyError

EIGHTH = SliceRequest(milli_gpu=125, pool="dev")


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(sqlite_url):
    with contextlib.closing(Ledger(sqlite_url, busy_timeout_s=7)) as ledger:
        with ledger.engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == 7000


def test_create_schema_is_idempotent(ledger_url):
    with contextlib.closing(Ledger(ledger_url)) as ledger:
        ledger.create_schema()
        ledger.create_schema()
        tables = set(inspect(ledger.engine).get_table_names())
    assert {"nodes", "gpus", "leases", "lease_shares", "gpu_usage"} <= tables


def test_a_write_waits_for_another_writer_and_gives_up_with_a_clear_error(sqlite_url, inventory, tmp_path):
    with contextlib.closing(Ledger(sqlite_url, busy_timeout_s=0.05, busy_retries=1)) as ledger:
        ledger.create_schema()
        ledger.sync_inventory(inventory)
        other_writer = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
        try:
            other_writer.execute("BEGIN IMMEDIATE")
            with pytest.raises(LedgerBusyError, match="stayed locked by other writers through 2 attempts"):
                ledger.allocate("lease-1", "srv", "alice", None, "interactive", EIGHTH, QuotaPolicy())
            # Readers are not blocked by a writer under WAL.
            assert ledger.list_leases() == []
        finally:
            other_writer.execute("ROLLBACK")
            other_writer.close()
        assert ledger.allocate("lease-1", "srv", "alice", None, "interactive", EIGHTH, QuotaPolicy()).granted


def test_an_in_memory_ledger_works_for_quick_experiments(inventory):
    with contextlib.closing(Ledger("sqlite://")) as ledger:
        ledger.create_schema()
        ledger.sync_inventory(inventory)
        assert ledger.allocate("lease-1", "srv", "alice", None, "interactive", EIGHTH, QuotaPolicy()).granted
        assert [lease.id for lease in ledger.list_leases()] == ["lease-1"]


def test_an_expected_workload_mix_is_handed_to_the_policy(sqlite_url, inventory):
    mix = [(SliceRequest(milli_gpu=500, pool="dev"), 3.0), (SliceRequest(gpus=2, pool="train"), 1.0)]
    with contextlib.closing(Ledger(sqlite_url, workload_mix=mix)) as ledger:
        ledger.create_schema()
        ledger.sync_inventory(inventory)
        for index in range(8):
            result = ledger.allocate(
                f"l{index}", "srv", f"u{index}", None, "interactive", EIGHTH, QuotaPolicy()
            )
            assert result.granted


def test_unknown_placement_policies_are_refused_before_any_write(ledger):
    with pytest.raises(ValueError, match="unknown placement policy 'tetris'"):
        ledger.allocate(
            "lease-1", "srv", "alice", None, "interactive", EIGHTH, QuotaPolicy(), policy_name="tetris"
        )
    assert ledger.get("lease-1") is None
