"""How many more slices of a size fit right now, counted on a copy of the cluster state.

The count places the request again and again with the same placement policy the ledger grants
with, so a profile shown with "3 free" really takes three more grants to fill, fragmentation
included. It works on a private :class:`ClusterState`, never on the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence

from spawner.core.cluster import CapacityError, ClusterState
from spawner.core.placement import get_policy
from spawner.core.units import Lease, Node, SliceRequest

FREE_SLICES_CAP = 64
"""Counting stops here: past a few dozen, "plenty" is all a person choosing a profile needs."""


def cluster_with(nodes: Sequence[Node], live: Sequence[Lease]) -> ClusterState:
    """The free capacity of ``nodes`` with every live lease on them taken out.

    A lease on a node or GPU that left the inventory takes nothing here; a node whose leases no
    longer fit it (its inventory shrank) is treated as full, as the ledger leaves it out too.
    """
    present = {gpu.uuid: node.name for node in nodes for gpu in node.gpus}
    cluster = ClusterState(nodes)
    full_nodes: set[str] = set()
    for lease in live:
        placement = lease.placement
        if placement.node not in cluster.node_index:
            continue
        if any(present.get(share.gpu_uuid) != placement.node for share in placement.shares):
            continue
        try:
            cluster.allocate(placement)
        except CapacityError:
            full_nodes.add(placement.node)
    if full_nodes:
        # Start again without them, so that their partly applied leases leave no trace.
        return cluster_with([node for node in nodes if node.name not in full_nodes], live)
    return cluster


def free_slices(
    cluster: ClusterState, request: SliceRequest, policy_name: str, cap: int = FREE_SLICES_CAP
) -> int:
    """How many grants of ``request`` fit one after another; ``cluster`` is used up doing so."""
    policy = get_policy(policy_name, [(request, 1.0)])
    count = 0
    while count < cap:
        placement = policy.place(cluster, request)
        if placement is None:
            break
        cluster.allocate(placement)
        count += 1
    return count
