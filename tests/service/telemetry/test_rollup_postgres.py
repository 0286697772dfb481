"""The usage rollup on PostgreSQL: rows added to across two writers' lives, read back the same."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from harness.postgres import PostgresUnavailable, postgres_server

from spawner.ledger import Ledger
from spawner.ledger.usage_rollup import DAY_S, HOUR_S, GPUNotice, PendingUsage, UsageRollup

pytestmark = pytest.mark.postgres

MIDNIGHT = 1_715_644_800.0  # 2024-05-14 00:00 UTC


@pytest.fixture(scope="module")
def postgres_url():
    try:
        with postgres_server() as server:
            schema = f"rollup_{uuid.uuid4().hex[:12]}"
            server.execute(f"CREATE SCHEMA {schema}")
            yield server.url(schema)
    except PostgresUnavailable as reason:
        pytest.skip(str(reason))


def test_two_service_lives_add_to_the_same_rows_across_midnight(postgres_url):
    for life in range(2):
        with contextlib.closing(Ledger(postgres_url)) as ledger:
            ledger.create_schema()
            pending = PendingUsage()
            start = MIDNIGHT - 30 + life * 60
            pending.add_gpu(
                "g0", "n", 0, "dev", start, start + 60, busy=True, used_fraction=0.5, measured=True
            )
            pending.add_holder(
                "alice",
                None,
                "interactive",
                start,
                start + 60,
                allocated_gpus=0.125,
                used_gpus=0.0,
                measured=True,
            )
            UsageRollup(ledger.engine).add(pending, start + 60)

    with contextlib.closing(Ledger(postgres_url)) as ledger:
        rollup = UsageRollup(ledger.engine)
        days = rollup.holder_days(MIDNIGHT - DAY_S, MIDNIGHT + DAY_S)
        hours = rollup.gpu_hours(MIDNIGHT - DAY_S, MIDNIGHT + DAY_S)

    # First life: 30 s before midnight and 30 s after; second: 90 s after, all on the new day.
    assert [(day.day_start, day.group, day.allocated_gpu_seconds) for day in days] == [
        (MIDNIGHT - DAY_S, "", pytest.approx(0.125 * 30)),
        (MIDNIGHT, "", pytest.approx(0.125 * 90)),
    ]
    assert [(hour.hour_start, hour.busy_seconds) for hour in hours] == [
        (MIDNIGHT - HOUR_S, pytest.approx(30.0)),
        (MIDNIGHT, pytest.approx(90.0)),
    ]


def test_notices_are_kept_newest_first(postgres_url):
    with contextlib.closing(Ledger(postgres_url)) as ledger:
        ledger.create_schema()
        rollup = UsageRollup(ledger.engine)
        notices = [
            GPUNotice(MIDNIGHT + second, "alice", "lease-1", "over slice (warn)", f"n{second}")
            for second in range(3)
        ]
        rollup.add_notices(notices[:2], MIDNIGHT)
        rollup.add_notices(notices[2:], MIDNIGHT)

        assert rollup.recent_notices(2) == [notices[2], notices[1]]
