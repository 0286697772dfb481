"""Small clusters for the core tests."""

from spawner.core.units import GPU, Node


def make_node(
    name,
    gpus=8,
    model="A100-80GB",
    memory_mib=81920,
    cpu_milli=64000,
    host_memory_mib=512000,
    pools=frozenset({"dev"}),
):
    return Node(
        name=name,
        cpu_milli=cpu_milli,
        memory_mib=host_memory_mib,
        gpus=tuple(GPU(f"GPU-{name}-{i}", name, i, model, memory_mib, pools=pools) for i in range(gpus)),
    )


def make_cluster_nodes(count=4, gpus=8, **kwargs):
    return [make_node(f"node{i}", gpus=gpus, **kwargs) for i in range(count)]
