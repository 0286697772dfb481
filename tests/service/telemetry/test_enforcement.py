"""A lease whose processes hold more GPU memory than its slice: warned under `warn`, stopped under `stop`."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace

import psutil
import pytest

from spawner.core.units import GPU
from spawner.service.telemetry import GPUMonitor
from spawner.service.telemetry.enforcement import OveruseTracker, policy_for

from .conftest import grant

SLICE_MIB = 10240  # 1/8 of an 80 GiB card


def over_slice(ledger, nvml, process_tree, used_mib: int):
    """Alice's 1/8 slice, and a kernel (a child of her server) holding ``used_mib`` on her card."""
    lease = grant(ledger, "lease-alice")
    tree = process_tree({"GPUSLICE_LEASE_ID": lease.id})
    card = next(card for card in nvml.cards if card.uuid == lease.placement.shares[0].gpu_uuid)
    card.processes[tree.child_pid] = used_mib
    return lease, tree, card


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_warn_tells_once_per_episode_and_stops_nothing(ledger, nvml, clock, process_tree):
    lease, tree, card = over_slice(ledger, nvml, process_tree, SLICE_MIB + 4096)
    monitor = GPUMonitor(ledger, nvml_library=nvml, clock=clock, enforcement={"dev": "warn"}, grace_s=10)

    async def run() -> None:
        first = await monitor.poll()
        assert [action.signal_number for action in first.actions] == [None]
        for _ in range(5):
            clock.advance(5)
            assert (await monitor.poll()).actions == ()
        card.processes[tree.child_pid] = SLICE_MIB  # back within its slice: the episode ends
        clock.advance(5)
        await monitor.poll()
        card.processes[tree.child_pid] = SLICE_MIB + 4096
        clock.advance(5)
        assert len((await monitor.poll()).actions) == 1

    asyncio.run(run())

    assert not gone(tree.child_pid)
    assert [notice.user for notice in monitor.notices] == ["alice", "alice"]
    assert monitor.notices_of("alice")[0].kind == "over slice (warn)" and monitor.notices_of("bob") == []
    message = monitor.notices[0].message
    assert (
        f"uses {SLICE_MIB + 4096} MiB on GPU gpu-host #" in message and f"allows {SLICE_MIB} MiB" in message
    )


def test_stop_signals_the_processes_after_the_grace_period(ledger, nvml, clock, process_tree):
    lease, tree, card = over_slice(ledger, nvml, process_tree, SLICE_MIB + 4096)
    monitor = GPUMonitor(ledger, nvml_library=nvml, clock=clock, enforcement={"dev": "stop"}, grace_s=10)

    async def run() -> list:
        polls = [await monitor.poll()]
        clock.advance(5)
        polls.append(await monitor.poll())
        assert not gone(tree.child_pid), "stopped before its grace period ended"
        clock.advance(5)
        polls.append(await monitor.poll())
        return polls

    polls = asyncio.run(run())

    assert [[action.signal_number for action in poll.actions] for poll in polls] == [
        [None],
        [],
        [signal.SIGTERM],
    ]
    assert wait_until_gone(tree.child_pid), "SIGTERM did not end the process over its slice"
    assert "will be stopped in 10 s" in monitor.notices[1].message
    assert monitor.notices[0].kind == "stopped" and "were stopped" in monitor.notices[0].message
    assert not gone(tree.root.pid), "only the processes on the card are stopped, not the server"


def test_within_the_slice_and_its_tolerance_nothing_happens(ledger, nvml, clock, process_tree):
    over_slice(ledger, nvml, process_tree, SLICE_MIB + 500)
    monitor = GPUMonitor(ledger, nvml_library=nvml, clock=clock, enforcement={"dev": "stop"})

    assert asyncio.run(monitor.poll()).actions == ()
    assert not monitor.notices


def test_a_process_on_a_card_outside_its_slice_is_over_by_all_it_holds(ledger, nvml, clock, process_tree):
    lease = grant(ledger, "lease-alice")
    tree = process_tree({"GPUSLICE_LEASE_ID": lease.id})
    other = next(card for card in nvml.cards if card.uuid != lease.placement.shares[0].gpu_uuid)
    other.processes[tree.child_pid] = 1024
    monitor = GPUMonitor(ledger, nvml_library=nvml, clock=clock, memory_tolerance_mib=0)

    [action] = asyncio.run(monitor.poll()).actions

    assert action.overuse.allowed_mib == 0 and "CUDA_VISIBLE_DEVICES" in action.message


def test_policy_is_the_lease_pool_else_the_strictest_of_the_cards_pools(ledger):
    lease = grant(ledger, "lease-alice")
    shared = GPU("GPU-both", "gpu-host", 9, "A100-80GB", 81920, pools=frozenset({"dev", "train"}))
    policies = {"dev": "warn", "train": "stop"}

    assert policy_for(lease, shared, policies, "off") == "warn"  # the lease asked for dev
    unpooled = replace(lease, request=replace(lease.request, pool=None))
    assert policy_for(unpooled, shared, policies, "off") == "stop"


def test_a_policy_name_that_does_not_exist_is_refused_at_configuration(ledger):
    with pytest.raises(Exception, match="must be one of off, warn, stop"):
        GPUMonitor(ledger, enforcement={"dev": "kill"})
    assert OveruseTracker({}).default_policy == "warn"


def test_notices_are_kept_in_the_ledger_for_the_next_service(ledger, nvml, clock, process_tree):
    over_slice(ledger, nvml, process_tree, SLICE_MIB + 4096)
    first = GPUMonitor(ledger, nvml_library=nvml, clock=clock, enforcement={"dev": "warn"})
    asyncio.run(first.poll())
    successor = GPUMonitor(ledger, nvml_library=nvml, clock=clock)

    asyncio.run(successor.load_notices())

    assert list(successor.notices) == list(first.notices) and len(first.notices) == 1
    assert successor.notices_of("alice")[0].kind == "over slice (warn)"
