"""What happens when a process uses more GPU memory than its slice: the pool's policy decides.

A slice is given to a server as environment variables (``CUDA_VISIBLE_DEVICES``, framework memory
fractions), which its user can change in one line; so the monitor measures what each lease's
processes really hold on each card and compares it with the lease's share of that card:

- ``warn``: a notice for the user and the admins (kept by the monitor, shown on the pages, logged),
  once per episode of overuse;
- ``stop``: the same notice, and if the lease is still over after ``grace_s`` its processes on
  that card get SIGTERM, then SIGKILL if they are still there one grace period later;
- ``off``: measured and accounted, nothing else.

A lease's processes on a card its lease does not include are over by their whole use (a server
that changed ``CUDA_VISIBLE_DEVICES`` to reach a card it was not given). An episode ends when a
sample finds the lease within its share again; a new one starts with a new notice.

The decisions are made here from samples, without I/O; the monitor sends the signals.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from spawner.core.units import GPU, Lease

from .readings import ProcessReading

OFF, WARN, STOP = "off", "warn", "stop"
POLICIES: tuple[str, ...] = (OFF, WARN, STOP)
_STRICTNESS = {OFF: 0, WARN: 1, STOP: 2}


@dataclass(frozen=True, slots=True)
class Overuse:
    """One lease over its share of one card in one sample."""

    lease: Lease
    gpu: GPU
    pids: tuple[int, ...]
    used_mib: int
    allowed_mib: int
    policy: str


@dataclass(frozen=True, slots=True)
class Action:
    """What the monitor does about an overuse: tell (``signal_number`` None) or signal its processes."""

    overuse: Overuse
    message: str
    signal_number: int | None = None


@dataclass
class _Episode:
    since: float
    signalled: int | None = None
    signalled_at: float = 0.0


def policy_for(lease: Lease, gpu: GPU, policies: Mapping[str, str], default: str) -> str:
    """The policy of the pool the lease asked for; else the strictest of the card's pools' policies
    (a card shared by ``dev`` and ``train`` is held to the stricter of the two)."""
    if lease.request.pool is not None:
        return policies.get(lease.request.pool, default)
    return max(
        (policies.get(pool, default) for pool in gpu.pools), key=_STRICTNESS.__getitem__, default=default
    )


def describe_gpu(gpu: GPU) -> str:
    return f"GPU {gpu.node} #{gpu.index}"


@dataclass
class OveruseTracker:
    """Overuse episodes from one sample to the next, and the actions each sample calls for."""

    policies: Mapping[str, str]
    default_policy: str = WARN
    grace_s: float = 60.0
    tolerance_mib: int = 0
    episodes: dict[tuple[str, str], _Episode] = field(default_factory=dict)

    def overuses(
        self, attributed: Iterable[tuple[ProcessReading, Lease]], gpus: Mapping[str, GPU]
    ) -> list[Overuse]:
        """Each lease whose processes on one card hold more than its share there plus the tolerance."""
        held: dict[tuple[str, str], list[ProcessReading]] = {}
        leases: dict[str, Lease] = {}
        for process, lease in attributed:
            held.setdefault((lease.id, process.gpu_uuid), []).append(process)
            leases[lease.id] = lease
        found = []
        for (lease_id, gpu_uuid), processes in sorted(held.items()):
            gpu = gpus.get(gpu_uuid)
            if gpu is None:
                continue
            lease = leases[lease_id]
            allowed = sum(share.memory_mib for share in lease.placement.shares if share.gpu_uuid == gpu_uuid)
            used = sum(process.memory_mib for process in processes)
            if used > allowed + self.tolerance_mib:
                policy = policy_for(lease, gpu, self.policies, self.default_policy)
                pids = tuple(sorted(process.pid for process in processes))
                found.append(Overuse(lease, gpu, pids, used, allowed, policy))
        return found

    def decide(self, overuses: Iterable[Overuse], now: float) -> list[Action]:
        """The actions for this sample's overuses; episodes not seen again are over."""
        actions: list[Action] = []
        current = set()
        for overuse in overuses:
            key = (overuse.lease.id, overuse.gpu.uuid)
            current.add(key)
            if overuse.policy == OFF:
                continue
            episode = self.episodes.get(key)
            if episode is None:
                self.episodes[key] = _Episode(since=now)
                actions.append(Action(overuse, self.first_message(overuse)))
                continue
            if overuse.policy != STOP:
                continue
            if episode.signalled is None and now - episode.since >= self.grace_s:
                episode.signalled, episode.signalled_at = signal.SIGTERM, now
                actions.append(Action(overuse, self.stop_message(overuse), signal.SIGTERM))
            elif episode.signalled == signal.SIGTERM and now - episode.signalled_at >= self.grace_s:
                episode.signalled, episode.signalled_at = signal.SIGKILL, now
                actions.append(Action(overuse, self.stop_message(overuse), signal.SIGKILL))
        for ended in set(self.episodes) - current:
            del self.episodes[ended]
        return actions

    def first_message(self, overuse: Overuse) -> str:
        lease = overuse.lease
        over = (
            f"{lease.holder} (user {lease.user}) uses {overuse.used_mib} MiB on {describe_gpu(overuse.gpu)}, "
            f"where its slice allows {overuse.allowed_mib} MiB"
        )
        if overuse.allowed_mib == 0:
            over += " (the card is not part of its slice: was CUDA_VISIBLE_DEVICES changed?)"
        if overuse.policy == STOP:
            return (
                f"{over}; its processes there ({_pids(overuse)}) will be stopped in "
                f"{self.grace_s:g} s unless they free the memory above the slice"
            )
        return f"{over}; free GPU memory (smaller batches, del tensors, torch.cuda.empty_cache())"

    def stop_message(self, overuse: Overuse) -> str:
        return (
            f"{overuse.lease.holder} (user {overuse.lease.user}) still used {overuse.used_mib} MiB on "
            f"{describe_gpu(overuse.gpu)} after {self.grace_s:g} s, over its slice of "
            f"{overuse.allowed_mib} MiB: its processes there ({_pids(overuse)}) were stopped"
        )


def _pids(overuse: Overuse) -> str:
    return "pid " + ", ".join(str(pid) for pid in overuse.pids)
