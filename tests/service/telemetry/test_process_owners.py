"""Processes on a (faked) GPU are mapped to the lease that owns them through their real process tree."""

from __future__ import annotations

import asyncio
import os

from spawner.core.units import SliceRequest
from spawner.service.telemetry import GPUMonitor
from spawner.service.telemetry.owners import (
    JOB_OWNER,
    SERVER_OWNER,
    LeaseIndex,
    Owner,
    ProcessOwners,
    owner_of,
)

from .conftest import DEV_UUIDS, TRAIN_UUID, grant


def test_the_outermost_marked_ancestor_owns_a_process_whose_child_forged_another_lease(process_tree):
    tree = process_tree({"GPUSLICE_LEASE_ID": "lease-alice"}, child_prefix="env GPUSLICE_LEASE_ID=lease-bob")

    assert owner_of(tree.child_pid) == Owner(SERVER_OWNER, "lease-alice", tree.root.pid)
    assert owner_of(tree.root.pid) == Owner(SERVER_OWNER, "lease-alice", tree.root.pid)


def test_a_batch_job_is_found_by_its_job_id_and_a_stranger_by_nothing(process_tree):
    job = process_tree({"GPUSLICE_JOB_ID": "job-7"})
    stranger = process_tree({})

    assert owner_of(job.child_pid) == Owner(JOB_OWNER, "job-7", job.root.pid)
    assert owner_of(stranger.child_pid) is None
    assert owner_of(2**22 + 12345) is None  # no such process


def test_owners_are_remembered_only_while_listed(process_tree):
    tree = process_tree({"GPUSLICE_LEASE_ID": "lease-alice"})
    owners = ProcessOwners()

    assert owners.owners([tree.child_pid, os.getpid()])[tree.child_pid].key == "lease-alice"
    assert set(owners._known) == {tree.child_pid, os.getpid()}
    owners.owners([tree.child_pid])
    assert set(owners._known) == {tree.child_pid}


def test_lease_index_finds_servers_by_lease_id_and_jobs_by_holder(ledger):
    server = grant(ledger, "lease-a")
    job = grant(
        ledger, "lease-j", workload="batch", holder="job-7", request=SliceRequest(gpus=1, pool="train")
    )
    index = LeaseIndex(ledger.list_leases())

    assert index.lease_for(Owner(SERVER_OWNER, "lease-a", 1)) == server
    assert index.lease_for(Owner(JOB_OWNER, "job-7", 1)) == job
    assert index.lease_for(Owner(SERVER_OWNER, "job-7", 1)) is None
    assert index.lease_for(None) is None


def test_the_monitor_maps_each_process_on_a_card_to_its_lease(ledger, nvml, clock, process_tree):
    alice = grant(ledger, "lease-alice", user="alice")
    bob = grant(ledger, "lease-bob", user="bob")
    job = grant(
        ledger, "lease-job", workload="batch", holder="job-9", request=SliceRequest(gpus=1, pool="train")
    )
    alice_tree = process_tree({"GPUSLICE_LEASE_ID": alice.id}, child_prefix=f"env GPUSLICE_LEASE_ID={bob.id}")
    bob_tree = process_tree({"GPUSLICE_LEASE_ID": bob.id})
    job_tree = process_tree({"GPUSLICE_JOB_ID": "job-9"})
    stranger = process_tree({})
    alice_card = alice.placement.shares[0].gpu_uuid
    bob_card = bob.placement.shares[0].gpu_uuid
    cards = {card.uuid: card for card in nvml.cards}
    cards[alice_card].processes[alice_tree.child_pid] = 2000
    cards[bob_card].processes[bob_tree.child_pid] = 1000
    cards[bob_card].processes[stranger.child_pid] = 500
    cards[TRAIN_UUID].processes[job_tree.child_pid] = 30000
    monitor = GPUMonitor(ledger, nvml_library=nvml, clock=clock)

    poll = asyncio.run(monitor.poll())

    assert {alice_card, bob_card} <= set(DEV_UUIDS)
    assert poll.lease_use[alice.id].memory_mib == 2000
    assert poll.lease_use[bob.id].memory_mib == 1000
    assert poll.lease_use[job.id].memory_mib == 30000
    assert [process.pid for process in poll.unowned] == [stranger.child_pid]
    assert poll.actions == ()
