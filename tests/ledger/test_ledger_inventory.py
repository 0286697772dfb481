"""Inventory sync: GPUs come and go, and leases on vanished GPUs are kept and reported."""

from __future__ import annotations

from dataclasses import replace

import pytest

from spawner.core.quota import QuotaPolicy
from spawner.core.units import GPU, Node, SliceRequest

UNLIMITED = QuotaPolicy()


def whole_dev_gpu(ledger, lease_id):
    return ledger.allocate(
        lease_id,
        f"server-{lease_id}",
        "alice",
        None,
        "interactive",
        SliceRequest(gpus=1, pool="dev"),
        UNLIMITED,
    )


def test_sync_reports_new_gpus_once(ledger, inventory):
    result = ledger.sync_inventory(inventory)
    assert result.added == () and result.removed == () and result.absent == ()
    assert ledger.nodes() == sorted(inventory, key=lambda node: node.name)


def test_sync_updates_gpus_and_nodes_in_place(ledger, inventory):
    dev_a = inventory[0]
    bigger = replace(dev_a, cpu_milli=64000, labels={"rack": "r2"})
    changed = [bigger, *inventory[1:]]
    ledger.sync_inventory(changed)
    assert ledger.nodes()[0] == bigger


def test_a_vanished_gpu_keeps_its_lease_and_takes_no_new_ones(ledger, inventory):
    leases = [whole_dev_gpu(ledger, f"lease-{index}").lease for index in range(3)]
    held = {lease.placement.shares[0].gpu_uuid: lease.id for lease in leases}
    gone_uuid = sorted(held)[0]
    shrunk = [
        replace(node, gpus=tuple(gpu for gpu in node.gpus if gpu.uuid != gone_uuid)) for node in inventory
    ]

    result = ledger.sync_inventory(shrunk)
    assert result.removed == (gone_uuid,) and result.absent == (gone_uuid,)
    assert result.stranded_leases == (held[gone_uuid],)
    assert ledger.get(held[gone_uuid]) is not None
    assert gone_uuid in ledger.gpu_holders()
    # One whole dev GPU was free, and the vanished one is not handed out again.
    assert whole_dev_gpu(ledger, "lease-3").granted
    assert not whole_dev_gpu(ledger, "lease-4").granted

    again = ledger.sync_inventory(shrunk)
    assert (
        again.removed == () and again.absent == (gone_uuid,) and again.stranded_leases == (held[gone_uuid],)
    )
    ledger.release(held[gone_uuid])
    assert ledger.sync_inventory(shrunk).stranded_leases == ()


def test_a_returning_gpu_is_reported_as_added_and_its_lease_still_counts(ledger, inventory):
    lease = whole_dev_gpu(ledger, "lease-1").lease
    uuid = lease.placement.shares[0].gpu_uuid
    without = [replace(node, gpus=tuple(gpu for gpu in node.gpus if gpu.uuid != uuid)) for node in inventory]
    ledger.sync_inventory(without)
    back = ledger.sync_inventory(inventory)
    assert back.added == (uuid,) and back.absent == ()
    for index in range(3):
        assert whole_dev_gpu(ledger, f"more-{index}").granted
    assert not whole_dev_gpu(ledger, "one-too-many").granted


def test_a_vanished_node_is_left_out(ledger, inventory):
    result = ledger.sync_inventory(inventory[1:])
    assert set(result.removed) == {gpu.uuid for gpu in inventory[0].gpus}
    assert [node.name for node in ledger.nodes()] == ["dev-b", "train"]


def test_a_node_that_shrank_under_its_leases_gets_nothing_new(ledger, inventory):
    for index in range(4):
        ledger.allocate(
            f"eighth-{index}",
            "srv",
            "alice",
            None,
            "interactive",
            SliceRequest(milli_gpu=125, pool="dev", gpu_memory_mib=4000),
            UNLIMITED,
            policy_name="packing",
        )
    node = next(node for node in ledger.nodes() if any(ledger.gpu_holders()[gpu.uuid] for gpu in node.gpus))
    shrunk_gpus = tuple(replace(gpu, memory_mib=8000) for gpu in node.gpus)
    ledger.sync_inventory([replace(n, gpus=shrunk_gpus) if n.name == node.name else n for n in inventory])
    result = ledger.allocate(
        "tiny",
        "srv",
        "bob",
        None,
        "interactive",
        SliceRequest(milli_gpu=10, pool="dev"),
        UNLIMITED,
        policy_name="packing",
    )
    assert result.lease.placement.node != node.name


def test_duplicate_names_in_an_inventory_are_refused(ledger, inventory):
    with pytest.raises(ValueError, match="node twice"):
        ledger.sync_inventory([inventory[0], inventory[0]])
    twin = Node("twin", 1000, 1000, gpus=(GPU(inventory[0].gpus[0].uuid, "twin", 0, "T4", 16384),))
    with pytest.raises(ValueError, match="GPU uuid twice"):
        ledger.sync_inventory([*inventory, twin])
