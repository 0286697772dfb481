"""GPU-hours accounting: released leases are charged at release, week by week, on an injected clock."""

from __future__ import annotations

import contextlib

import pytest

from spawner.core.quota import WEEK_SECONDS, BatchLimits, Limits, QuotaPolicy, week_start
from spawner.core.units import SliceRequest
from spawner.ledger import Ledger

HOUR = 3600.0
UNLIMITED = QuotaPolicy()
TWO_TRAIN_GPUS = SliceRequest(gpus=2, pool="train")


def start_job(ledger: Ledger, lease_id: str, user: str = "alice", group: str | None = "vision", **kwargs):
    request = kwargs.pop("request", TWO_TRAIN_GPUS)
    policy = kwargs.pop("policy", UNLIMITED)
    return ledger.allocate(lease_id, f"job-{lease_id}", user, group, "batch", request, policy, **kwargs)


def test_a_released_job_is_charged_gpus_times_hours_to_user_and_group(ledger, clock):
    start_job(ledger, "job-1")
    clock.advance(3 * HOUR)
    ledger.release("job-1")
    usage = ledger.usage()
    assert usage.of_user("alice").batch_gpu_hours_week == pytest.approx(6.0)
    assert usage.of_group("vision").batch_gpu_hours_week == pytest.approx(6.0)
    assert usage.of_user("alice").batch_jobs == 0


def test_a_running_job_counts_the_hours_it_has_run_so_far(ledger, clock):
    start_job(ledger, "job-1", request=SliceRequest(gpus=1, pool="train"))
    clock.advance(1.5 * HOUR)
    assert ledger.usage().of_user("alice").batch_gpu_hours_week == pytest.approx(1.5)
    assert ledger.usage(now=clock.now + HOUR).of_user("alice").batch_gpu_hours_week == pytest.approx(2.5)


def test_release_twice_charges_once(ledger, clock):
    start_job(ledger, "job-1")
    clock.advance(HOUR)
    ledger.release("job-1")
    clock.advance(HOUR)
    ledger.release("job-1")
    assert ledger.usage().of_user("alice").batch_gpu_hours_week == pytest.approx(2.0)


def test_fractional_and_interactive_leases_are_accounted_but_not_against_batch_budgets(ledger, clock):
    start_job(ledger, "half", request=SliceRequest(milli_gpu=500, pool="train"))
    ledger.allocate(
        "srv", "server", "alice", "vision", "interactive", SliceRequest(gpus=1, pool="dev"), UNLIMITED
    )
    clock.advance(4 * HOUR)
    ledger.release("half")
    ledger.release("srv")
    assert ledger.usage().of_user("alice").batch_gpu_hours_week == pytest.approx(2.0)


def test_a_job_over_monday_is_split_between_the_weeks(ledger, clock):
    monday = week_start(clock.now) + WEEK_SECONDS
    clock.now = monday - 2 * HOUR
    start_job(ledger, "job-1")
    clock.now = monday + 1 * HOUR
    ledger.release("job-1")
    assert ledger.usage(now=monday - 1).of_user("alice").batch_gpu_hours_week == pytest.approx(4.0)
    assert ledger.usage().of_user("alice").batch_gpu_hours_week == pytest.approx(2.0)
    assert ledger.usage(now=monday + WEEK_SECONDS).of_user("alice").batch_gpu_hours_week == 0


def test_the_weekly_budget_refuses_once_spent_and_renews_on_monday(ledger, clock):
    policy = QuotaPolicy(groups={"vision": Limits(batch=BatchLimits(max_gpu_hours_week=10))})
    clock.now = week_start(clock.now) + HOUR
    start_job(ledger, "job-1", policy=policy)
    clock.advance(4 * HOUR)
    ledger.release("job-1")
    start_job(ledger, "job-2", user="bob", policy=policy)
    clock.advance(1 * HOUR)
    refused = start_job(
        ledger, "job-3", user="carol", request=SliceRequest(gpus=1, pool="dev"), policy=policy
    )
    assert refused.refusal.rule == "batch_gpu_hours_week"
    assert (refused.refusal.holder_kind, refused.refusal.holder) == ("group", "vision")
    assert refused.refusal.usage == pytest.approx(10.0)
    assert start_job(
        ledger, "job-4", group="nlp", request=SliceRequest(gpus=1, pool="dev"), policy=policy
    ).granted
    ledger.release("job-2")
    clock.now = week_start(clock.now) + WEEK_SECONDS
    assert start_job(
        ledger, "job-5", user="carol", request=SliceRequest(gpus=1, pool="dev"), policy=policy
    ).granted


def test_accounting_survives_a_restart(sqlite_url, inventory, clock):
    with contextlib.closing(Ledger(sqlite_url, clock=clock)) as ledger:
        ledger.create_schema()
        ledger.sync_inventory(inventory)
        start_job(ledger, "job-1")
        clock.advance(HOUR)
        ledger.release("job-1")
    with contextlib.closing(Ledger(sqlite_url, clock=clock)) as reopened:
        assert reopened.usage().of_group("vision").batch_gpu_hours_week == pytest.approx(2.0)


def test_a_release_stamped_before_the_grant_charges_nothing(ledger, clock):
    start_job(ledger, "job-1")
    ledger.release("job-1", now=clock.now - HOUR)
    assert ledger.record("job-1").released_at == clock.now
    assert ledger.usage().of_user("alice").batch_gpu_hours_week == 0
