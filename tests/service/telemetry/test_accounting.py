"""Accounting rollups: busy seconds per card and GPU-seconds per user, split at hour and day
boundaries, added to (never overwritten) across a restart of the service, and bounded in size."""

from __future__ import annotations

import asyncio

import pytest

from spawner.core.units import SliceRequest
from spawner.inventory import SOURCE_LABEL
from spawner.ledger import Ledger
from spawner.ledger.usage_rollup import DAY_S, HOUR_S, PendingUsage, UsageRollup, day_of, split_at
from spawner.service.metrics import ServiceMetrics
from spawner.service.telemetry import GPUMonitor

from .conftest import TRAIN_UUID, grant, inventory

MIDNIGHT = 1_715_644_800.0  # 2024-05-14 00:00 UTC


def test_an_interval_over_midnight_is_split_between_the_two_days_and_their_hours():
    assert list(split_at(MIDNIGHT - 2, MIDNIGHT + 3, DAY_S)) == [(MIDNIGHT - DAY_S, 2.0), (MIDNIGHT, 3.0)]
    assert list(split_at(MIDNIGHT - 2, MIDNIGHT + 3, HOUR_S)) == [(MIDNIGHT - HOUR_S, 2.0), (MIDNIGHT, 3.0)]
    assert list(split_at(MIDNIGHT, MIDNIGHT, HOUR_S)) == []


def busy_alice(ledger, nvml, process_tree):
    """Alice's 1/8 slice with a kernel using 40% of the card's SMs, on a card 50% busy."""
    lease = grant(ledger, "lease-alice")
    tree = process_tree({"GPUSLICE_LEASE_ID": lease.id})
    card = next(card for card in nvml.cards if card.uuid == lease.placement.shares[0].gpu_uuid)
    card.processes[tree.child_pid] = 4096
    card.sm_percent = {tree.child_pid: 40}
    card.gpu_percent = 50
    return lease, card


def test_samples_across_midnight_are_counted_on_each_side(ledger, nvml, clock, process_tree):
    clock.now = MIDNIGHT - 3
    lease, card = busy_alice(ledger, nvml, process_tree)
    metrics = ServiceMetrics()
    monitor = GPUMonitor(ledger, metrics, nvml_library=nvml, clock=clock)

    async def run() -> None:
        await monitor.poll()  # the first sample counts nothing before it
        clock.advance(5)
        await monitor.poll()
        await monitor.stop()

    asyncio.run(run())
    days = monitor.rollup.holder_days(MIDNIGHT - DAY_S, MIDNIGHT + DAY_S)
    hours = monitor.rollup.gpu_hours(MIDNIGHT - DAY_S, MIDNIGHT + DAY_S)

    assert [(day.day_start, day.user, day.group, day.workload) for day in days] == [
        (MIDNIGHT - DAY_S, "alice", "vision", "interactive"),
        (MIDNIGHT, "alice", "vision", "interactive"),
    ]
    assert [day.allocated_gpu_seconds for day in days] == pytest.approx([0.125 * 3, 0.125 * 2])
    assert [day.used_gpu_seconds for day in days] == pytest.approx([0.4 * 3, 0.4 * 2])
    alice_card = [hour for hour in hours if hour.gpu_uuid == card.uuid]
    assert [(hour.hour_start, hour.sampled_seconds, hour.busy_seconds) for hour in alice_card] == [
        (MIDNIGHT - HOUR_S, 3.0, 3.0),
        (MIDNIGHT, 2.0, 2.0),
    ]
    assert sum(hour.busy_seconds for hour in hours if hour.gpu_uuid == TRAIN_UUID) == 0
    assert all(hour.measured for hour in hours)
    labels = {"gpu": "0", "node": "gpu-host", "pool": "dev"}
    assert metrics.registry.get_sample_value("gpuslice_gpu_busy_seconds_total", labels) == 5.0
    group = {"group": "vision", "class": "interactive"}
    assert metrics.registry.get_sample_value("gpuslice_allocated_gpu_seconds_total", group) == pytest.approx(
        0.625
    )
    assert metrics.registry.get_sample_value("gpuslice_used_gpu_seconds_total", group) == pytest.approx(2.0)


def test_a_restart_in_the_middle_of_a_day_loses_nothing(tmp_path, ledger, nvml, clock, process_tree):
    clock.now = MIDNIGHT + 10 * HOUR_S
    busy_alice(ledger, nvml, process_tree)

    def run_service(polls: int) -> None:
        with Ledger(ledger.url, clock=clock) as service_ledger:
            monitor = GPUMonitor(service_ledger, nvml_library=nvml, clock=clock, flush_interval_s=3600)

            async def run() -> None:
                for _ in range(polls):
                    await monitor.poll()
                    clock.advance(5)
                await monitor.stop()  # what a SIGTERM to the service does

            asyncio.run(run())

    run_service(13)  # 12 intervals of 5 s counted
    clock.advance(30)  # the service is down: nothing measured, nothing counted
    run_service(7)  # 6 more

    [day] = UsageRollup(ledger.engine).holder_days(MIDNIGHT, MIDNIGHT + DAY_S)
    assert day.allocated_gpu_seconds == pytest.approx(0.125 * 90)
    assert day.used_gpu_seconds == pytest.approx(0.4 * 90)


def test_on_simulated_gpus_the_allocation_is_read_as_use_and_marked_so(tmp_path, clock):
    nodes = [
        node.__class__(
            node.name, node.cpu_milli, node.memory_mib, node.gpus, labels={SOURCE_LABEL: "simulated"}
        )
        for node in inventory()
    ]
    with Ledger(f"sqlite:///{tmp_path / 'sim.sqlite'}", clock=clock) as ledger:
        ledger.create_schema()
        ledger.sync_inventory(nodes)
        lease = grant(ledger, "lease-sim", request=SliceRequest(milli_gpu=250, pool="dev"))
        monitor = GPUMonitor(ledger, clock=clock)

        async def run():
            await monitor.poll()
            clock.advance(5)
            poll = await monitor.poll()
            await monitor.stop()
            return poll

        poll = asyncio.run(run())
        hours = monitor.rollup.gpu_hours(0, clock.now + 1)

    assert monitor.measured is False and poll.sample.measured is False
    reading = poll.sample.gpu(lease.placement.shares[0].gpu_uuid)
    assert reading.utilisation_percent == 25.0 and not reading.measured
    use = poll.lease_use[lease.id]
    assert use.used_gpus == use.allocated_gpus == 0.25 and use.idle_since is None
    assert hours and not any(hour.measured for hour in hours)


def test_rows_older_than_the_retention_period_are_deleted_as_new_ones_are_written(ledger):
    rollup = UsageRollup(ledger.engine, retention_days=20)
    old, recent = PendingUsage(), PendingUsage()
    now = MIDNIGHT + 30 * DAY_S
    old.add_holder(
        "alice", None, "batch", MIDNIGHT, MIDNIGHT + 60, allocated_gpus=1, used_gpus=1, measured=True
    )
    old.add_gpu("g", "n", 0, "dev", MIDNIGHT, MIDNIGHT + 60, busy=True, used_fraction=1, measured=True)
    rollup.add(old, MIDNIGHT)
    recent.add_holder("alice", None, "batch", now, now + 60, allocated_gpus=1, used_gpus=1, measured=True)
    rollup.add(recent, now)

    assert [day.day_start for day in rollup.holder_days(0, now + DAY_S)] == [day_of(now)]
    assert rollup.gpu_hours(0, now + DAY_S) == []
    with pytest.raises(ValueError, match="at least 15"):
        UsageRollup(ledger.engine, retention_days=3)


def test_a_batch_job_idle_too_long_is_flagged_and_a_busy_one_is_not(ledger, nvml, clock, process_tree):
    job = grant(
        ledger, "lease-job", workload="batch", holder="job-3", request=SliceRequest(gpus=1, pool="train")
    )
    tree = process_tree({"GPUSLICE_JOB_ID": "job-3"})
    card = next(card for card in nvml.cards if card.uuid == TRAIN_UUID)
    card.processes[tree.child_pid] = 20000
    card.sm_percent = {}  # no kernel ran since the last sample
    monitor = GPUMonitor(ledger, nvml_library=nvml, clock=clock, batch_idle_flag_s=60)

    async def run() -> None:
        for _ in range(13):
            await monitor.poll()
            clock.advance(5)

    asyncio.run(run())
    assert [use.lease.id for use in monitor.idle_batch_jobs()] == [job.id]

    card.sm_percent = {tree.child_pid: 90}
    asyncio.run(monitor.poll())
    assert monitor.idle_batch_jobs() == []


def test_a_card_without_utilisation_is_left_out_and_its_leases_never_called_idle(
    ledger, nvml, clock, process_tree
):
    lease = grant(ledger, "lease-mig")
    tree = process_tree({"GPUSLICE_LEASE_ID": lease.id})
    card = next(card for card in nvml.cards if card.uuid == lease.placement.shares[0].gpu_uuid)
    card.gpu_percent = None  # MIG mode: NVML has no whole-card figure
    card.sm_percent = None  # nor per-process ones
    card.processes[tree.child_pid] = 4096
    monitor = GPUMonitor(ledger, nvml_library=nvml, clock=clock)

    async def run():
        await monitor.poll()
        clock.advance(5)
        poll = await monitor.poll()
        await monitor.stop()
        return poll

    poll = asyncio.run(run())

    assert poll.sample.gpu(card.uuid).utilisation_percent is None
    assert poll.lease_use[lease.id].idle_since is None
    hours = monitor.rollup.gpu_hours(0, clock.now + 1)
    assert card.uuid not in {hour.gpu_uuid for hour in hours} and hours  # the other cards are counted
    [day] = monitor.rollup.holder_days(0, clock.now + 1)
    assert day.allocated_gpu_seconds == pytest.approx(0.125 * 5) and day.measured is False
