"""Dev GPUs held for an interactive slice while the batch jobs that borrowed them stop.

When a developer asks for a slice and only dev GPUs lent to batch jobs could give it room, those
jobs are preempted (a stop signal, then a grace period to checkpoint) and their GPUs are *held*
for that request: moved, for the batch scheduler, to a pool no job asks for, so that no pass lends
them out again before the developer's retry takes them. A hold ends when the slice is granted or
when it expires (the borrowers' grace, plus a while for the retry to come).

The service's allocator and the simulator both keep their holds here. Pure and clock-injected:
``now`` is whatever clock the caller keeps (the service's monotonic clock, the simulator's virtual
one), as long as the caller uses the same one throughout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from .units import Node

RESERVED_POOL = "reserved-for-interactive"
"""The pool a held dev GPU is in for the scheduler while it waits for its interactive slice: no
batch request asks for it, so no pass lends the GPU out again meanwhile."""


@dataclass(frozen=True)
class InteractiveHold:
    """Dev GPUs taken back for one interactive request, kept from batch jobs until ``until``."""

    gpu_uuids: tuple[str, ...]
    until: float
    """The time (on the caller's clock) after which the GPUs may be lent to batch jobs again."""


class InteractiveHolds:
    """The holds in force, by the lease id the slice is asked under (one per request)."""

    def __init__(self) -> None:
        self.by_lease: dict[str, InteractiveHold] = {}

    def hold(self, lease_id: str, gpu_uuids: Iterable[str], until: float) -> InteractiveHold:
        """Hold ``gpu_uuids`` for ``lease_id`` until ``until``; a retry of the request replaces its hold."""
        held = InteractiveHold(tuple(dict.fromkeys(gpu_uuids)), until)
        self.by_lease[lease_id] = held
        return held

    def release(self, lease_id: str) -> None:
        """The slice was granted (or given up): its GPUs are no longer held."""
        self.by_lease.pop(lease_id, None)

    def forget_expired(self, now: float) -> None:
        for lease_id in [key for key, held in self.by_lease.items() if held.until <= now]:
            del self.by_lease[lease_id]

    def held_uuids(self, now: float) -> set[str]:
        """Every GPU held at ``now`` (expired holds are dropped first)."""
        self.forget_expired(now)
        return {uuid for held in self.by_lease.values() for uuid in held.gpu_uuids}

    def next_expiry(self) -> float | None:
        """When the next hold runs out, if any is in force: a moment the batch side may gain GPUs."""
        return min((held.until for held in self.by_lease.values()), default=None)

    def __len__(self) -> int:
        return len(self.by_lease)


def nodes_without(nodes: Sequence[Node], held: set[str]) -> list[Node]:
    """``nodes`` as batch work may use them: the ``held`` GPUs moved to :data:`RESERVED_POOL`."""
    if not held:
        return list(nodes)
    return [
        replace(
            node,
            gpus=tuple(
                replace(gpu, pools=frozenset({RESERVED_POOL})) if gpu.uuid in held else gpu
                for gpu in node.gpus
            ),
        )
        if any(gpu.uuid in held for gpu in node.gpus)
        else node
        for node in nodes
    ]
