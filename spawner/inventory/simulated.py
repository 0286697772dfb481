"""Demo GPUs for a machine that has none, so the hub, the slices and the queue can be tried out.

Everything about them says so: every GPU has ``simulated=True`` (so its ``label`` reads
"A100-80GB (simulated)"), a uuid starting "GPU-sim-" (``spawner.core.units.SIMULATED_UUID_PREFIX``,
which a slice's environment reads too), and the node is labelled as a simulated source. No page,
log line or lease can then pass a demo GPU off as a real one. The ``model`` stays the plain name
so that profiles asking for that model match the demo GPUs.
"""

from __future__ import annotations

from spawner.core.units import GPU, SIMULATED_UUID_PREFIX, Node

from . import host
from .base import SOURCE_LABEL, PoolRule

DEFAULT_COUNT = 4
DEFAULT_MODEL = "A100-80GB"
DEFAULT_MEMORY_MIB = 81920


def simulated_nodes(
    *,
    node_name: str | None = None,
    count: int = DEFAULT_COUNT,
    model: str = DEFAULT_MODEL,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    pools: PoolRule | None = None,
) -> list[Node]:
    """This host as one node holding ``count`` simulated GPUs, with the host's real CPU and memory."""
    if count < 1:
        raise ValueError(f"simulated GPUs: count must be 1 or more, got {count}")
    name = node_name or host.host_name()
    rule = pools or PoolRule()
    gpus = []
    for index in range(count):
        uuid = f"{SIMULATED_UUID_PREFIX}{name}-{index}"
        gpus.append(
            GPU(
                uuid=uuid,
                node=name,
                index=index,
                model=model,
                memory_mib=memory_mib,
                pools=rule.pools_for(index, uuid, index, count),
                simulated=True,
            )
        )
    node = Node(
        name=name,
        cpu_milli=host.cpu_milli(),
        memory_mib=host.memory_mib(),
        gpus=tuple(gpus),
        labels={SOURCE_LABEL: "simulated"},
    )
    return [node]
