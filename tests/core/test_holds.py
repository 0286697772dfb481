"""Dev GPUs held for an interactive slice while their borrowers stop (``core.holds``)."""

from __future__ import annotations

from spawner.core.holds import RESERVED_POOL, InteractiveHolds, nodes_without
from spawner.core.units import GPU, Node
from spawner.core.vocabulary import DEV_POOL, TRAIN_POOL


def node(name: str) -> Node:
    gpus = (
        GPU(f"{name}-0", name, 0, "A100", 40960, pools=frozenset({DEV_POOL})),
        GPU(f"{name}-1", name, 1, "A100", 40960, pools=frozenset({TRAIN_POOL})),
    )
    return Node(name, 32000, 65536, gpus)


def test_a_hold_keeps_its_gpus_until_it_expires_or_its_slice_is_granted():
    holds = InteractiveHolds()
    holds.hold("lease-a", ["n0-0", "n0-0"], until=100.0)
    holds.hold("lease-b", ["n1-0"], until=50.0)
    assert holds.held_uuids(10.0) == {"n0-0", "n1-0"}
    assert holds.next_expiry() == 50.0
    assert holds.held_uuids(50.0) == {"n0-0"}  # lease-b's hold ran out
    assert len(holds) == 1
    holds.release("lease-a")  # its slice was granted
    assert holds.held_uuids(60.0) == set() and holds.next_expiry() is None
    holds.release("never-held")  # a grant without a reclaim releases nothing


def test_asking_again_replaces_the_request_hold():
    holds = InteractiveHolds()
    holds.hold("lease-a", ["n0-0"], until=30.0)
    holds.hold("lease-a", ["n1-0"], until=90.0)
    assert holds.held_uuids(40.0) == {"n1-0"}


def test_held_gpus_move_to_a_pool_no_batch_job_asks_for():
    nodes = [node("n0"), node("n1")]
    assert nodes_without(nodes, set()) == nodes
    batch_view = nodes_without(nodes, {"n1-0"})
    assert batch_view[0] is nodes[0]
    assert [gpu.pools for gpu in batch_view[1].gpus] == [frozenset({RESERVED_POOL}), frozenset({TRAIN_POOL})]
    assert nodes[1].gpus[0].pools == frozenset({DEV_POOL})  # the inventory itself is untouched
