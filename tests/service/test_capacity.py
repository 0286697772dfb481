"""Counting free slices on a copy of the cluster, as availability does."""

from __future__ import annotations

from spawner.core.units import GPU, GPUShare, Lease, Node, Placement, SliceRequest, WorkloadClass
from spawner.service.capacity import FREE_SLICES_CAP, cluster_with, free_slices


def node(name: str = "n1", gpus: int = 2, cpu_milli: int = 64000) -> Node:
    return Node(
        name=name,
        cpu_milli=cpu_milli,
        memory_mib=512 * 1024,
        gpus=tuple(GPU(f"GPU-{name}-{i}", name, i, "A100-80GB", 81920) for i in range(gpus)),
    )


def lease(lease_id: str, gpu_uuid: str, milli: int, node_name: str = "n1") -> Lease:
    request = SliceRequest(milli_gpu=milli)
    placement = Placement(node_name, (GPUShare(gpu_uuid, milli, 81920 * milli // 1000),))
    return Lease(lease_id, "h", "u", None, WorkloadClass.interactive, request, placement, 0.0)


def test_free_slices_counts_what_is_left_after_the_live_leases():
    nodes = [node()]
    assert free_slices(cluster_with(nodes, []), SliceRequest(milli_gpu=250), "default") == 8
    live = [lease("a", "GPU-n1-0", 500), lease("b", "GPU-n1-1", 125)]
    assert free_slices(cluster_with(nodes, live), SliceRequest(milli_gpu=250), "default") == 5
    assert free_slices(cluster_with(nodes, live), SliceRequest(gpus=1), "default") == 0


def test_free_slices_stops_at_the_cap():
    nodes = [node(gpus=8)]
    assert free_slices(cluster_with(nodes, []), SliceRequest(milli_gpu=1), "default") == FREE_SLICES_CAP


def test_cpu_limits_the_count_too():
    nodes = [node(cpu_milli=2000)]
    assert free_slices(cluster_with(nodes, []), SliceRequest(milli_gpu=125, cpu_milli=1000), "default") == 2


def test_leases_on_gpus_gone_from_the_inventory_take_nothing():
    live = [lease("gone", "GPU-old-0", 1000, node_name="old"), lease("moved", "GPU-n1-9", 500)]
    assert free_slices(cluster_with([node()], live), SliceRequest(gpus=1), "default") == 2


def test_an_overcommitted_node_counts_as_full_and_others_keep_their_leases():
    live = [
        lease("a", "GPU-n1-0", 800),
        lease("b", "GPU-n1-0", 800),  # more than the card has: its inventory shrank under it
        lease("c", "GPU-n2-0", 500, node_name="n2"),
    ]
    cluster = cluster_with([node("n1"), node("n2")], live)
    assert list(cluster.node_index) == ["n2"]
    assert free_slices(cluster, SliceRequest(milli_gpu=500), "default") == 3
