"""The scheduler pass for a service or simulator that runs one every few seconds.

:func:`~spawner.core.scheduler.schedule` builds everything from its arguments on every call: the
cluster's free capacity (one allocation per running job), the whole queue sorted into fair-share
order, and a walk over every queued job. With ten thousand queued jobs most of that work repeats
the last pass. :class:`IncrementalScheduler` takes the same arguments and returns the same
:class:`~spawner.core.scheduler.Decision`, but keeps between passes:

- **the queue, sorted once**: one list per (priority, group) in submission order, changed only by
  the jobs that came, went or changed since the last pass. Fair share orders whole groups (a
  group's usage per unit of guarantee is one number for all its jobs), so the pass order is these
  lists put end to end, group by group; groups whose numbers are equal are merged by submission
  order, as the sort would interleave them.
- **the cluster's free capacity**: only placements that appeared or went since the last pass are
  allocated or released; the pass's own starts are released again once it has decided.
- **where each kind of job sits in each list** (:func:`~spawner.core.scheduler.job_key`), so that
  the pass jumps over the jobs that cannot start (see ``_Pass.next_live`` in the scheduler):
  between two starts the cluster and the groups' holdings do not change, so once a kind of job
  found no room, and has nobody to preempt and no reservation to make, every later job of that
  kind would be left waiting with the same reason; the pass records them as one range instead of
  looking at each. The queue is walked twice (every level's jobs within their group's guarantee,
  then every level's borrowers; see :func:`~spawner.core.scheduler.decide`): the first walk
  notes, per kind, from which job on its group's guarantee no longer covers it, and the second
  walk looks only at those jobs, so neither walk looks at a job twice.

The decisions are the reference's, not an approximation of them: ``tests/core/
test_scheduler_incremental.py`` drives random submissions, finishes, cancellations and capacity
changes and compares every pass with a fresh ``schedule()``. Nothing here assumes the caller
applied the last decision: each pass reads what it is given.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import fields
from itertools import compress, groupby
from operator import attrgetter, is_not, itemgetter, ne

from .cluster import ClusterState
from .placement import get_policy
from .scheduler import BatchJob, Decision, GroupShare, QueueRun, RunningJob, decide, job_key
from .units import Node, Placement
from .vocabulary import Priority

_JOB_ID = attrgetter("id")
_JOB_FIELDS = attrgetter(*(job_field.name for job_field in fields(BatchJob)))


class _Block:
    """The queued jobs of one group at one priority level, in submission order."""

    __slots__ = ("entries", "run", "version")

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, BatchJob]] = []  # (submitted_at, id, job), sorted
        self.run: QueueRun | None = None
        self.version = 0

    def add(self, job: BatchJob) -> None:
        entry = (job.submitted_at, job.id, job)
        self.entries.insert(bisect_left(self.entries, entry[:2], key=itemgetter(0, 1)), entry)
        self.changed()

    def remove(self, job: BatchJob) -> None:
        index = bisect_left(self.entries, (job.submitted_at, job.id), key=itemgetter(0, 1))
        if index == len(self.entries) or self.entries[index][1] != job.id:
            raise RuntimeError(f"job {job.id} is not in its queue block (a bug in IncrementalScheduler)")
        del self.entries[index]
        self.changed()

    def changed(self) -> None:
        self.run = None
        self.version += 1

    def as_run(self) -> QueueRun:
        if self.run is None:
            self.run = _run_of(self.entries)
        return self.run


def _run_of(entries: Sequence[tuple[float, str, BatchJob]]) -> QueueRun:
    jobs = [entry[2] for entry in entries]
    positions: dict[tuple, list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        positions[job_key(job)].append(index)
    return QueueRun(jobs, [entry[1] for entry in entries], dict(positions))


class IncrementalScheduler:
    """:func:`~spawner.core.scheduler.schedule`, pass after pass, paying for what changed.

    Call :meth:`schedule` with what ``schedule()`` takes; it returns what ``schedule()`` would.
    One instance serves one caller's passes, one at a time (it is not thread-safe; the service
    runs its passes under the job service's lock). Job ids must be unique in a queue.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, BatchJob] = {}  # the queued jobs the blocks hold, by id
        self._fields: dict[str, tuple] = {}  # and their fields, to tell which changed
        self._blocks: dict[tuple[Priority, str | None], _Block] = {}
        self._merged: dict[tuple, tuple[tuple[int, ...], QueueRun]] = {}
        self._nodes: tuple[Node, ...] | None = None
        self._cluster: ClusterState | None = None
        self._allocated: Counter[tuple] = Counter()  # placements held, by _placement_key
        self._placements: dict[tuple, Placement] = {}

    def schedule(
        self,
        nodes: Sequence[Node],
        running: Sequence[RunningJob],
        queue: Iterable[BatchJob],
        shares: Mapping[str | None, GroupShare],
        usage: Mapping[str | None, float],
        now: float,
        interactive: Iterable[Placement] = (),
        policy_name: str = "default",
        stopping: Collection[str] = frozenset(),
    ) -> Decision:
        """One pass, decided exactly as ``schedule()`` decides it on the same arguments.

        The decision's ``waiting`` is a read-only mapping whose reasons are formatted when it is
        first read (see :class:`~spawner.core.scheduler.WaitingJobs`).
        """
        policy = get_policy(policy_name)
        self._update_queue(queue)
        cluster = self._update_cluster(nodes, interactive, running)
        # A placement policy may learn from the requests it sees (the fragmentation policies
        # weigh the mix of shapes): each pass starts it afresh, as schedule() does.
        cluster.policy_cache.clear()
        try:
            decision = decide(cluster, policy, self._runs(shares, usage), running, shares, now, stopping)
            for start in reversed(decision.starts):
                cluster.release(start.placement)
        except BaseException:
            self._cluster = None  # its capacity is no longer known: rebuilt on the next pass
            raise
        return decision

    # ----------------------------------------------------------------------------- the queue

    def _update_queue(self, queue: Iterable[BatchJob]) -> None:
        """Take in the jobs that came, went or changed since the last pass.

        A job given as the same object as last time is unchanged (it is frozen); any other is
        compared field by field, since a service reads its queue afresh every pass and its objects
        are new even where nothing changed. Each step runs over the whole queue in C (``map``),
        not in a Python loop: ten thousand ``__eq__`` calls would cost as much as the pass.
        """
        queue = list(queue)
        ids = list(map(_JOB_ID, queue))
        current = set(ids)
        if len(current) != len(ids):
            twice = next(job_id for job_id, count in Counter(ids).items() if count > 1)
            raise ValueError(f"job {twice} is queued twice")
        jobs, known = self._jobs, self._fields
        for job_id in jobs.keys() - current:
            old = jobs.pop(job_id)
            del known[job_id]
            self._block(old).remove(old)
        others = list(compress(queue, map(is_not, map(jobs.get, ids), queue)))
        rows = list(map(_JOB_FIELDS, others))
        differ = map(ne, map(known.get, map(_JOB_ID, others)), rows)
        for job, row in compress(zip(others, rows, strict=True), differ):
            old = jobs.get(job.id)
            if old is not None:
                self._block(old).remove(old)
            self._block(job).add(job)
            jobs[job.id], known[job.id] = job, row

    def _block(self, job: BatchJob) -> _Block:
        key = (job.priority, job.group)
        block = self._blocks.get(key)
        if block is None:
            block = self._blocks[key] = _Block()
        return block

    def _runs(
        self, shares: Mapping[str | None, GroupShare], usage: Mapping[str | None, float]
    ) -> list[QueueRun]:
        """The queue in fair-share order, as runs of one priority level each.

        ``fair_order`` sorts by (priority, usage per unit of guarantee, submission time, id); the
        middle term is one number per group, so within a level the order is each group's block
        in turn, in the order of that number, and blocks whose number is equal interleave in
        submission order (a merged run, kept while its blocks do not change).
        """
        runs: list[QueueRun] = []
        by_level: dict[Priority, list[tuple[float, str | None, _Block]]] = defaultdict(list)
        for (priority, group), block in self._blocks.items():
            if block.entries:
                share = shares.get(group, GroupShare())
                by_level[priority].append((usage.get(group, 0.0) / share.weight, group, block))
        for priority in sorted(by_level, reverse=True):
            blocks = sorted(by_level[priority], key=itemgetter(0))
            for _, tied in groupby(blocks, key=itemgetter(0)):
                tied = list(tied)
                if len(tied) == 1:
                    runs.append(tied[0][2].as_run())
                else:
                    runs.append(self._merged_run(priority, tied))
        live = {key for key in self._merged if self._merged[key][1] in runs}
        for key in self._merged.keys() - live:
            del self._merged[key]
        return runs

    def _merged_run(self, priority: Priority, tied: list[tuple[float, str | None, _Block]]) -> QueueRun:
        tied = sorted(tied, key=lambda entry: (entry[1] is not None, entry[1] or ""))
        key = (priority, *(group for _, group, _ in tied))
        versions = tuple(block.version for _, _, block in tied)
        cached = self._merged.get(key)
        if cached is not None and cached[0] == versions:
            return cached[1]
        entries = sorted((entry for _, _, block in tied for entry in block.entries), key=itemgetter(0, 1))
        run = _run_of(entries)
        self._merged[key] = (versions, run)
        return run

    # --------------------------------------------------------------------------- the cluster

    def _update_cluster(
        self, nodes: Sequence[Node], interactive: Iterable[Placement], running: Sequence[RunningJob]
    ) -> ClusterState:
        """The cluster with every interactive slice and running job allocated: the last pass's,
        changed by the placements that came and went, or built afresh when the nodes changed."""
        nodes = tuple(nodes)
        if self._cluster is None or not _same_nodes(nodes, self._nodes):
            self._cluster, self._nodes, self._allocated = ClusterState(nodes), nodes, Counter()
        cluster = self._cluster
        placements = list(interactive)
        placements += map(_PLACEMENT, running)
        keys = list(map(_placement_key, placements))
        wanted = Counter(keys)
        by_key = dict(zip(keys, placements, strict=True))
        try:
            for key, count in (self._allocated - wanted).items():
                for _ in range(count):
                    cluster.release(self._placements[key])
            for key, count in (wanted - self._allocated).items():
                for _ in range(count):
                    cluster.allocate(by_key[key])
        except BaseException:
            self._cluster = None
            raise
        self._allocated, self._placements = wanted, by_key
        return cluster


_PLACEMENT = attrgetter("placement")
_SHARE = attrgetter("gpu_uuid", "milli_gpu", "memory_mib")


def _placement_key(placement: Placement) -> tuple:
    """A placement as plain values: hashed in C, where the dataclasses' hash runs in Python."""
    return (
        placement.node,
        placement.cpu_milli,
        placement.memory_mib,
        tuple(map(_SHARE, placement.shares)),
    )


def _same_nodes(nodes: tuple[Node, ...], before: tuple[Node, ...] | None) -> bool:
    return (
        before is not None
        and len(nodes) == len(before)
        and all(node is old or node == old for node, old in zip(nodes, before, strict=True))
    )
