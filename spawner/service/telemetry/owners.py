"""Which lease a process on a GPU belongs to, found through its process tree.

A notebook server starts with ``GPUSLICE_LEASE_ID`` in its environment (written by the spawner,
:func:`spawner.enforce.env.slice_environment`) and a batch job with ``GPUSLICE_JOB_ID`` (written by
the executor); every kernel and every process they start descends from them. NVML names the
process that holds GPU memory (a kernel, a DataLoader worker, a script started from a terminal),
so the owner is found by walking that process's ancestors.

The *outermost* ancestor that carries one of the variables decides, not the nearest: a user can
start a child with any environment (``env GPUSLICE_LEASE_ID=someone-else python train.py``), but
cannot change the environment the spawner or the executor gave the server or job it runs under.
A process with no such ancestor is reported as unowned (an admin's own tool, a server started
outside the hub).

Reading ``/proc/<pid>/environ`` of other users' processes needs the rights the service has in
local mode (it runs as root, or as the user every server runs as). What was read is kept per
process (pid and start time, so a reused pid is a new process) for as long as NVML lists it: a
poll then costs one ``/proc`` lookup per new process, not one per ancestor per process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psutil

from spawner.core.units import Lease, WorkloadClass
from spawner.core.vocabulary import holder_label

LEASE_VARIABLE = "GPUSLICE_LEASE_ID"
JOB_VARIABLE = "GPUSLICE_JOB_ID"
SERVER_OWNER = "server"
JOB_OWNER = "job"


@dataclass(frozen=True, slots=True)
class Owner:
    """What the outermost marked ancestor of a process names: a server's lease id or a job's id."""

    kind: str
    key: str
    root_pid: int


def _marker(environment: Mapping[str, str], pid: int) -> Owner | None:
    if environment.get(LEASE_VARIABLE):
        return Owner(SERVER_OWNER, environment[LEASE_VARIABLE], pid)
    if environment.get(JOB_VARIABLE):
        return Owner(JOB_OWNER, environment[JOB_VARIABLE], pid)
    return None


def owner_of(pid: int) -> Owner | None:
    """The owner of ``pid`` by its process tree (see the module's doc); None if it has none or is gone."""
    try:
        process = psutil.Process(pid)
        chain = [process, *process.parents()]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    found: Owner | None = None
    for ancestor in chain:  # nearest first, so the last marker found is the outermost
        try:
            marker = _marker(ancestor.environ(), ancestor.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if marker is not None:
            found = marker
    return found


class ProcessOwners:
    """:func:`owner_of` for the processes of each sample, remembered while each process lives."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[float, Owner | None]] = {}

    def owners(self, pids: Iterable[int]) -> dict[int, Owner | None]:
        """Each pid's owner; blocks on ``/proc``, so it runs in the monitor's worker thread."""
        answer: dict[int, Owner | None] = {}
        for pid in set(pids):
            try:
                started = psutil.Process(pid).create_time()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                answer[pid] = None
                continue
            known = self._known.get(pid)
            if known is None or known[0] != started:
                known = (started, owner_of(pid))
                self._known[pid] = known
            answer[pid] = known[1]
        # Forget processes NVML no longer lists, so the memory stays bounded by what runs.
        for gone in set(self._known) - set(answer):
            del self._known[gone]
        return answer


class LeaseIndex:
    """The live leases by what a process's owner names: a server's lease id, a job's id."""

    def __init__(self, leases: Iterable[Lease]) -> None:
        self.by_id: dict[str, Lease] = {}
        self.by_job: dict[str, Lease] = {}
        for lease in leases:
            self.by_id[lease.id] = lease
            if lease.workload == WorkloadClass.batch:
                # A batch job's lease is held by the job's id (spawner.core.vocabulary, holders).
                self.by_job[holder_label(lease.holder)] = lease

    def lease_for(self, owner: Owner | None) -> Lease | None:
        """The live lease ``owner`` holds, or None (no owner, or its lease was released)."""
        if owner is None:
            return None
        if owner.kind == SERVER_OWNER:
            return self.by_id.get(owner.key)
        return self.by_job.get(owner.key)
