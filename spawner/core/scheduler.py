"""The batch scheduler's decisions: which queued jobs start where, which running jobs must yield.

Pure and clock-injected (``now`` is an argument), so a pass is tested and measured without waiting
on a clock; the service turns its decisions into job processes and leases. The rules, in the order
they apply:

1. **Guarantee before borrowing**: a group's jobs up to its guaranteed GPUs run as of right;
   beyond it they borrow idle capacity up to the borrowing limit and are preemptible. A job inside
   its group's guarantee that finds no room preempts borrowed jobs of other groups, of any
   priority. The pass places every job within its group's guarantee before any borrower, so a
   guaranteed job that preempted borrowers, or waits for GPUs being stopped for it, gets those
   GPUs when they come back, instead of a borrower requeued ahead of it (in fair order, or at a
   higher priority) taking them and the job preempting the next borrower, pass after pass.
2. **Strict priority** between levels (``high`` > ``normal`` > ``low``), among the guaranteed
   jobs and among the borrowers.
3. **Fair share** between groups inside a level: the group with the least decayed GPU usage per
   unit of guaranteed quota goes first, then submission order.
4. **Gangs**: all GPUs of a job are on one node, or the job waits.
5. **Backfill**: once the first job that cannot start has a reservation (the node and the time
   its GPUs are expected free, from the running jobs' time limits), later jobs start only where
   they cannot delay it.
6. **Idle dev GPUs**: preemptible jobs that find no training GPU may run on idle dev-pool GPUs,
   and give them back when a user asks for an interactive slice (``reclaim_for_interactive``).

One pass is :func:`decide`, walking the queue twice, level by level in fair-share order (the jobs
within their guarantee, then the borrowers). :func:`schedule` builds that
from its arguments and is the reference; :class:`~spawner.core.incremental.IncrementalScheduler`,
which the service uses, keeps the sorted queue and the cluster between passes and lets the same
walk skip, as ranges, the jobs that cannot start (see ``_Pass``): the decisions are the same.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, groupby
from operator import attrgetter

from .cluster import ClusterState
from .placement import FragmentationGradientDescent, PlacementPolicy, get_policy
from .units import Node, Placement, SliceRequest
from .vocabulary import DEV_POOL, TRAIN_POOL, Priority


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A queued or running job as the scheduler sees it."""

    id: str
    owner: str
    group: str | None
    gpus: int
    priority: Priority
    submitted_at: float
    time_limit_s: float
    gpu_models: frozenset[str] = frozenset()
    cpu_milli: int = 0
    memory_mib: int = 0

    def request(self, pool: str) -> SliceRequest:
        return SliceRequest(
            gpus=self.gpus,
            gpu_models=self.gpu_models,
            cpu_milli=self.cpu_milli,
            memory_mib=self.memory_mib,
            pool=pool,
        )


@dataclass(frozen=True, slots=True)
class RunningJob:
    job: BatchJob
    placement: Placement
    started_at: float
    borrowed: bool
    pool: str = TRAIN_POOL

    @property
    def ends_by(self) -> float:
        return self.started_at + self.job.time_limit_s


@dataclass(frozen=True, slots=True)
class GroupShare:
    """A group's batch quota: GPUs it holds as of right, and how many more it may borrow."""

    guaranteed_gpus: int = 0
    borrow_limit_gpus: int | None = None

    @property
    def weight(self) -> float:
        """Fair-share weight: the guarantee, with a floor so groups without one still progress."""
        return max(self.guaranteed_gpus, 1)


@dataclass(frozen=True, slots=True)
class Start:
    job: BatchJob
    placement: Placement
    borrowed: bool
    pool: str


@dataclass(frozen=True, slots=True)
class Preempt:
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Waiting:
    job_id: str
    position: int
    """0-based place among the jobs this pass left waiting: no two share one, and none is skipped."""
    reason: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """Where and from when the first blocked job is expected to fit."""

    job_id: str
    node: str
    start_by: float
    spare_gpus: int  # GPUs free on that node at ``start_by`` beyond what the job needs


@dataclass
class Decision:
    starts: list[Start] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    """Every queued job's id in the order the pass considered them: by priority; inside a level
    the jobs within their group's guarantee, then the borrowers, each in fair-share order."""
    preemptions: list[Preempt] = field(default_factory=list)
    waiting: Mapping[str, Waiting] = field(default_factory=dict)
    """The jobs left waiting, by id, in the order of their positions."""
    reservation: Reservation | None = None


def decayed_usage(previous: float, gpus_held: float, elapsed_s: float, half_life_s: float) -> float:
    """A group's GPU-seconds with exponential decay: recent use counts, last month's fades."""
    if elapsed_s <= 0:
        return previous
    decay = 0.5 ** (elapsed_s / half_life_s)
    return previous * decay + gpus_held * elapsed_s


def gpu_seconds_between(
    runs: Iterable[tuple[str | None, int, float | None, float | None]], since: float, now: float
) -> dict[str | None, float]:
    """GPU-seconds each group's jobs used between ``since`` and ``now``.

    ``runs`` are ``(group, gpus, started_at, ended_at)``, with ``ended_at`` None for a job still
    running. Each run counts over the part of it inside the interval, so a job that started and
    ended between two scheduling passes counts too, and the last stretch of one that ended is not
    lost; a run with no start time counts from ``since``.
    """
    used: dict[str | None, float] = {}
    for group, gpus, started_at, ended_at in runs:
        start = since if started_at is None else max(started_at, since)
        end = now if ended_at is None else min(ended_at, now)
        if end > start:
            used[group] = used.get(group, 0.0) + gpus * (end - start)
    return used


def fair_order(
    queue: Iterable[BatchJob], usage: Mapping[str | None, float], shares: Mapping[str | None, GroupShare]
) -> list[BatchJob]:
    """Strict priority, then least usage per unit of guarantee, then submission order."""

    def key(job: BatchJob):
        share = shares.get(job.group, GroupShare())
        return (-job.priority, usage.get(job.group, 0.0) / share.weight, job.submitted_at, job.id)

    return sorted(queue, key=key)


def schedule(
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
    """One pass of the scheduler over the queue; the caller applies the decision.

    ``stopping`` names jobs of ``running`` whose preemption is under way (they got their stop
    signal and are checkpointing): they still hold their GPUs, are never preempted again, and a
    job waiting for its guarantee counts on their GPUs before it preempts anyone else, so that a
    grace period spanning several passes does not cost the borrowers one more victim per pass.

    This is the reference: it builds everything from its arguments. A service or simulator that
    runs pass after pass uses :class:`~spawner.core.incremental.IncrementalScheduler`, which keeps
    the sorted queue and the cluster between passes and decides exactly as this does.
    """
    cluster = ClusterState(nodes)
    for placement in interactive:
        cluster.allocate(placement)
    for held in running:
        cluster.allocate(held.placement)
    ordered = fair_order(queue, usage, shares)
    levels = [QueueRun(list(jobs)) for _, jobs in groupby(ordered, key=attrgetter("priority"))]
    decision = decide(cluster, get_policy(policy_name), levels, running, shares, now, stopping)
    decision.waiting = decision.waiting.as_dict()
    return decision


class QueueRun:
    """A stretch of the queue in :func:`fair_order`, all of one priority level, and, when
    ``positions`` is given, where each job key (:func:`job_key`) occurs in it, in increasing order,
    so that a pass can find the next job that could still do anything without looking at those
    that cannot.
    """

    __slots__ = ("jobs", "ids", "positions")

    def __init__(
        self,
        jobs: Sequence[BatchJob],
        ids: Sequence[str] | None = None,
        positions: Mapping[tuple, Sequence[int]] | None = None,
    ):
        self.jobs = jobs
        self.ids = [job.id for job in jobs] if ids is None else ids
        self.positions = positions


def job_key(job: BatchJob) -> tuple:
    """What a pass weighs of a queued job besides its id and submission time: two jobs with one key
    are treated alike as long as the cluster and their group's holdings do not change."""
    return (
        job.priority,
        job.group,
        job.gpus,
        job.gpu_models,
        job.cpu_milli,
        job.memory_mib,
        job.time_limit_s,
    )


class WaitingJobs(Mapping[str, Waiting]):
    """The jobs a pass left waiting, by id, in the order of their positions.

    Runs of jobs the pass skipped together (see :class:`_Pass`) are kept as ranges, and their
    :class:`Waiting` (the reason names how many jobs are ahead, so every one differs) are built
    when the mapping is first read: a pass over ten thousand waiting jobs then costs what it
    decided, and a reader that wants every reason pays for formatting them once.
    """

    def __init__(self) -> None:
        self._pieces: list[Waiting | _SkippedRange] = []
        self._count = 0
        self._by_id: dict[str, Waiting] | None = None

    def add(self, waiting: Waiting) -> None:
        self._count += 1
        if self._by_id is not None:
            self._by_id[waiting.job_id] = waiting
        else:
            self._pieces.append(waiting)

    def add_range(self, skipped: _SkippedRange) -> None:
        self._count += skipped.count
        if self._by_id is not None:
            self._by_id.update((waiting.job_id, waiting) for waiting in skipped)
        else:
            self._pieces.append(skipped)

    def as_dict(self) -> dict[str, Waiting]:
        if self._by_id is None:
            by_id: dict[str, Waiting] = {}
            for piece in self._pieces:
                if isinstance(piece, Waiting):
                    by_id[piece.job_id] = piece
                else:
                    by_id.update((waiting.job_id, waiting) for waiting in piece)
            self._by_id, self._pieces = by_id, []
        return self._by_id

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, job_id: str) -> Waiting:
        return self.as_dict()[job_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.as_dict()

    def __repr__(self) -> str:
        return f"WaitingJobs({self.as_dict()!r})"


@dataclass(frozen=True, slots=True)
class _SkippedRange:
    """The ``count`` jobs of ``jobs[start:stop]`` that one walk of a priority level left waiting
    without a look: the first at ``position``, with ``higher`` waiting jobs of higher levels and
    ``same`` of this level ahead of it. ``reasons`` holds, per job key, whether the counts are
    appended and the reason before them. A level's first walk leaves out the jobs of a key from
    index ``deferred[key]`` on; its second takes only those (``since``)."""

    jobs: Sequence[BatchJob]
    start: int
    stop: int
    position: int
    higher: int
    same: int
    reasons: Mapping[tuple, tuple[bool, str]]
    count: int
    deferred: Mapping[tuple, int] | None = None
    since: Mapping[tuple, int] | None = None

    def __iter__(self) -> Iterator[Waiting]:
        reasons, higher, deferred, since = self.reasons, self.higher, self.deferred, self.since
        offset = 0
        for index in range(self.start, self.stop):
            job = self.jobs[index]
            key = job_key(job)
            if since is not None:
                if index < since.get(key, self.stop):
                    continue
            elif deferred and index >= deferred.get(key, self.stop):
                continue
            with_counts, reason = reasons[key]
            if with_counts:
                reason += _ahead(higher, self.same + offset)
            yield Waiting(job.id, self.position + offset, reason)
            offset += 1


def decide(
    cluster: ClusterState,
    policy: PlacementPolicy,
    runs: Sequence[QueueRun],
    running: Sequence[RunningJob],
    shares: Mapping[str | None, GroupShare],
    now: float,
    stopping: Collection[str] = frozenset(),
) -> Decision:
    """The pass itself, over ``runs`` that together are the queue in :func:`fair_order`, each of
    one priority level, on a ``cluster`` holding every running job and interactive slice; the
    starts it decides stay allocated on ``cluster``. Runs with ``positions`` let it skip the jobs
    that cannot start.

    The queue is walked twice, each time level by level from the highest, in fair order: first
    the jobs within their group's guarantee (as the group's holdings stand when the walk reaches
    them), then the rest, the borrowers. A guaranteed job that preempted borrowers, or counts on
    GPUs being stopped for it, is thus placed before every borrower in every later pass: when
    those GPUs come back it takes them, instead of a borrower requeued ahead of it (in fair order,
    or at a higher priority) taking them and the job preempting yet another borrower, pass after
    pass, without ever starting. Priority orders the guaranteed jobs among themselves and the
    borrowers among themselves; it does not let borrowed work take GPUs a guarantee needs.
    """
    state = _Pass(cluster, policy, running, shares, now, stopping)
    decision = state.decision
    # What each level's first walk leaves to the second: its borrowers' ids in queue order, and
    # either the borrowers themselves (runs without positions) or, per run, the job key from whose
    # index on its jobs are borrowers (runs with positions: a group's guaranteed holdings only
    # grow within a pass, so once a key's job is not within the guarantee, none of its later jobs
    # is).
    second_walks: list[tuple[list[str], list[BatchJob], list[tuple[QueueRun, dict[tuple, int]]]]] = []
    for level in _levels(runs):
        later_ids: list[str] = []
        if all(run.positions is None for run in level):
            later: list[BatchJob] = []
            for run in level:
                for job in run.jobs:
                    if state.within_guarantee(job):
                        decision.order.append(job.id)
                        state.consider(job)
                    else:
                        later.append(job)
                        later_ids.append(job.id)
            second_walks.append((later_ids, later, []))
            continue
        deferred: list[tuple[QueueRun, dict[tuple, int]]] = []
        for run in level:
            run_deferred: dict[tuple, int] = {}
            state.walk(run, run_deferred, None)
            first, run_later = _split_ids(run, run_deferred)
            decision.order.extend(first)
            later_ids.extend(run_later)
            if run_deferred:
                deferred.append((run, run_deferred))
        second_walks.append((later_ids, [], deferred))
    state.dead = {}
    for later_ids, later, deferred in second_walks:
        decision.order.extend(later_ids)
        for job in later:
            state.consider(job)
        for run, run_deferred in deferred:
            state.walk(run, None, run_deferred)
    return decision


def _levels(runs: Sequence[QueueRun]) -> Iterator[list[QueueRun]]:
    """``runs`` in groups of one priority level each (empty runs left out)."""
    level: list[QueueRun] = []
    for run in runs:
        if not run.jobs:
            continue
        if level and level[0].jobs[0].priority != run.jobs[0].priority:
            yield level
            level = []
        level.append(run)
    if level:
        yield level


def _split_ids(run: QueueRun, deferred: Mapping[tuple, int]) -> tuple[Sequence[str], list[str]]:
    """The ids of ``run`` the first walk of its level considered, and those left to the second."""
    if not deferred:
        return run.ids, []
    positions = run.positions
    assert positions is not None
    later = sorted(
        chain.from_iterable(
            positions[key][bisect_left(positions[key], since) :] for key, since in deferred.items()
        )
    )
    if len(later) == len(run.ids):
        return [], list(run.ids)
    keep = bytearray(b"\x01") * len(run.ids)
    for index in later:
        keep[index] = 0
    return list(compress(run.ids, keep)), [run.ids[index] for index in later]


class _Pass:
    """What one pass knows while it walks the queue, and the rule applied to each job.

    Every memo here only skips work whose answer is already known, and each says why: a job it
    skips could not have started, and gets the waiting reason the full work would have given it.
    """

    def __init__(
        self,
        cluster: ClusterState,
        policy: PlacementPolicy,
        running: Sequence[RunningJob],
        shares: Mapping[str | None, GroupShare],
        now: float,
        stopping: Collection[str],
    ):
        self.cluster, self.policy, self.running, self.shares = cluster, policy, running, shares
        self.now, self.stopping = now, stopping
        # GPUs each group holds: [guaranteed, borrowed].
        self.held_by_group: dict[str | None, list[int]] = defaultdict(lambda: [0, 0])
        for held in running:
            self.held_by_group[held.job.group][1 if held.borrowed else 0] += held.job.gpus
        self.preempting: set[str] = set()
        self.decision = Decision()
        self.waiting = WaitingJobs()
        self.decision.waiting = self.waiting
        # Jobs left waiting so far, per priority level: the jobs of higher levels ahead of a job
        # are all the waiting ones of those levels (each walk goes from the highest level down).
        self.waiting_per_level: dict[Priority, int] = defaultdict(int)
        self.borrowed_on = _borrowed_by_node(running, stopping)
        # Shapes that found no room since the last start: the cluster has not changed for them, so
        # a queue of thousands costs one placement attempt per shape, not per job.
        self.no_room: set[tuple] = set()
        # The biggest gang each pool could ever hold, per set of GPU models: fixed for the pass.
        self.largest_by_models: dict[frozenset[str], tuple[int, int]] = {}
        # (GPUs, models, group) whose preemption plan came back empty. Within a pass free GPUs
        # only shrink (starts allocate, nothing is released), the borrowed jobs are fixed and the
        # ones already counted on (``preempting``) only grow: a plan that found no victims finds
        # none later in the pass.
        self.no_victims: set[tuple] = set()
        # (GPUs, models) for which no node can be reserved: a reservation counts the free GPUs
        # (which only shrink within a pass) and the fixed running jobs' ends, so None stays None.
        self.no_reservation: set[tuple] = set()
        self.ends_on = _ends_by_node(running)
        # Free whole training GPUs per set of models, (total, on the emptiest node), and the
        # reasons before their counts: forgotten at every start, the only change to the cluster.
        self.free_by_models: dict[frozenset[str], tuple[int, int]] = {}
        self.reason_heads: dict[tuple, tuple[bool, str]] = {}
        self.training_gpus: dict[frozenset[str], tuple[list[int], list[int]]] = {}
        # Where each request went since the last start, for a policy whose answer depends only on
        # the cluster and the request: asked again on the same cluster, it answers the same. (A
        # job that fits but would delay the reservation is asked about again and again; a policy
        # that learns the mix of requests from every question must be asked every time.)
        self.placed: dict[SliceRequest, Placement | None] | None = None if _learns(policy) else {}
        # Job keys that can do nothing until the next start, with their waiting reason: replaced
        # (not emptied: skipped ranges keep the old one) at every start.
        self.dead: dict[tuple, tuple[bool, str]] = {}

    def higher_waiting(self, priority: Priority) -> int:
        """How many jobs of a higher priority than ``priority`` the pass has left waiting so far
        (in its second walk, lower levels' guaranteed jobs are waiting ahead too, uncounted)."""
        return sum(count for level, count in self.waiting_per_level.items() if level > priority)

    def within_guarantee(self, job: BatchJob) -> bool:
        """Whether ``job`` would start within its group's guarantee, as the group's holdings stand."""
        share = self.shares.get(job.group, GroupShare())
        return self.held_by_group[job.group][0] + job.gpus <= share.guaranteed_gpus

    def quota(self, group: str | None, gpus: int) -> tuple[GroupShare, int, bool, bool]:
        """The group's share, the GPUs it holds, whether ``gpus`` more are within its guarantee,
        and whether it may borrow them."""
        share = self.shares.get(group, GroupShare())
        guaranteed_held, borrowed_held = self.held_by_group[group]
        within_guarantee = guaranteed_held + gpus <= share.guaranteed_gpus
        may_borrow = share.borrow_limit_gpus is None or (
            guaranteed_held + borrowed_held + gpus <= share.guaranteed_gpus + share.borrow_limit_gpus
        )
        return share, guaranteed_held + borrowed_held, within_guarantee, may_borrow

    def consider(self, job: BatchJob) -> None:
        """Start ``job``, or leave it waiting (perhaps preempting borrowers for it), and say why."""
        cluster, decision, now = self.cluster, self.decision, self.now
        share, held, within_guarantee, may_borrow = self.quota(job.group, job.gpus)
        if not within_guarantee and not may_borrow:
            self.waiting_per_level[job.priority] += 1
            self.waiting.add(Waiting(job.id, len(self.waiting), _over_quota(job, share, held)))
            return
        shape = (job.gpus, job.gpu_models, job.cpu_milli, job.memory_mib, job.priority)
        shape += (within_guarantee, may_borrow)
        placement, pool, blocked_by_reservation, victims = None, TRAIN_POOL, False, []
        if shape not in self.no_room:
            placement = self.place(job.request(TRAIN_POOL))
            if placement is not None and not _backfill_allows(decision.reservation, placement, job, now):
                placement, blocked_by_reservation = None, True
            if placement is None and (not within_guarantee or job.priority == Priority.low):
                placement, pool = self.place_on_dev(job)
        if placement is None and within_guarantee:
            # A job inside its guarantee takes training GPUs back from other groups' borrowers
            # first; only when that cannot make room does it borrow idle dev GPUs itself.
            victims_key = (job.gpus, job.gpu_models, job.group)
            if victims_key not in self.no_victims:
                free = self.training_gpus.get(job.gpu_models)
                if free is None:
                    free = self.training_gpus[job.gpu_models] = _training_gpus(cluster, job.gpu_models)
                victims = _preemption_plan(
                    cluster, job, self.borrowed_on, self.preempting, self.stopping, free
                )
                if not victims:
                    self.no_victims.add(victims_key)
            if not victims and may_borrow and shape not in self.no_room and job.priority != Priority.low:
                placement, pool = self.place_on_dev(job)
        if placement is not None:
            self.no_room.clear()
            self.free_by_models.clear()
            self.reason_heads.clear()
            self.training_gpus.clear()
            if self.placed is not None:
                self.placed.clear()
            self.dead = {}
            cluster.allocate(placement)
            # Dev GPUs are only ever lent: a job on them is borrowed (preemptible) work, counted
            # against its group's borrowing limit, whatever its guarantee.
            borrowed = not within_guarantee or pool == DEV_POOL
            self.held_by_group[job.group][1 if borrowed else 0] += job.gpus
            decision.starts.append(Start(job, placement, borrowed=borrowed, pool=pool))
            reservation = decision.reservation
            if reservation and pool == TRAIN_POOL and placement.node == reservation.node:
                decision.reservation = Reservation(
                    reservation.job_id,
                    reservation.node,
                    reservation.start_by,
                    reservation.spare_gpus - job.gpus,
                )
            return
        if not blocked_by_reservation:
            self.no_room.add(shape)
        with_counts, reason = self.reason_head(job, may_borrow)
        if with_counts:
            reason += _ahead(self.higher_waiting(job.priority), self.waiting_per_level[job.priority])
        self.waiting_per_level[job.priority] += 1
        if blocked_by_reservation:
            reason = _held_back(job, decision.reservation, now) + reason
        if victims:
            for victim in victims:
                self.preempting.add(victim.job.id)
                # Counted on now, so no later plan of this pass may take it: it leaves the
                # node's list, and a node with none left is not looked at again.
                on_node = self.borrowed_on[victim.placement.node]
                on_node.remove(victim)
                if not on_node:
                    del self.borrowed_on[victim.placement.node]
                if victim.job.id in self.stopping:
                    continue  # its stop signal went out in an earlier pass
                decision.preemptions.append(
                    Preempt(
                        victim.job.id,
                        f"group {job.group} needs its guaranteed GPUs back for job {job.id}; "
                        f"this job ran on {victim.job.gpus} borrowed GPUs",
                    )
                )
            reason = f"waiting for {len(victims)} borrowed job(s) to stop; " + reason
        if decision.reservation is None:
            reserve_key = (job.gpus, job.gpu_models)
            if reserve_key not in self.no_reservation:
                decision.reservation = _reserve(cluster, job, self.running, now, self.ends_on)
                if decision.reservation is None:
                    self.no_reservation.add(reserve_key)
        self.waiting.add(Waiting(job.id, len(self.waiting), reason))

    def place(self, request: SliceRequest) -> Placement | None:
        if self.placed is None:
            return self.policy.place(self.cluster, request)
        if request not in self.placed:
            self.placed[request] = self.policy.place(self.cluster, request)
        return self.placed[request]

    def place_on_dev(self, job: BatchJob) -> tuple[Placement | None, str]:
        """Idle dev GPUs for ``job``, lent until a developer asks for a slice on them."""
        placement = self.place(job.request(DEV_POOL))
        return placement, (DEV_POOL if placement is not None else TRAIN_POOL)

    def reason_head(self, job: BatchJob, may_borrow: bool) -> tuple[bool, str]:
        """Why no node takes ``job`` now (see :func:`_why_no_room`), once per kind of job between
        two starts."""
        key = (job.gpus, job.gpu_models, may_borrow, job.group)
        head = self.reason_heads.get(key)
        if head is None:
            head = _why_no_room(self.cluster, job, may_borrow, self.largest_by_models, self.free_by_models)
            self.reason_heads[key] = head
        return head

    def dead_reason(self, job: BatchJob) -> tuple[bool, str] | None:
        """The waiting reason of a job that :meth:`consider` would leave waiting without placing,
        preempting, reserving or asking the placement policy anything new; None if it might.

        Such a job is over its group's quota (which only a start changes); or of a shape that found
        no room since the last start, with no borrowers to preempt for it (a plan found none since
        the pass began) and no reservation left to make (one is made, or none can be); or, with a
        policy whose answers are remembered (:attr:`placed`), one the policy already placed where
        it would delay the reserved job, too long to end before it, with no dev GPUs and no
        borrowers for it either (:meth:`held_back`).
        """
        share, held, within_guarantee, may_borrow = self.quota(job.group, job.gpus)
        if not within_guarantee and not may_borrow:
            return False, _over_quota(job, share, held)
        shape = (job.gpus, job.gpu_models, job.cpu_milli, job.memory_mib, job.priority)
        if within_guarantee and (job.gpus, job.gpu_models, job.group) not in self.no_victims:
            return None
        if shape + (within_guarantee, may_borrow) not in self.no_room:
            return self.held_back(job, within_guarantee, may_borrow)
        if self.decision.reservation is None and (job.gpus, job.gpu_models) not in self.no_reservation:
            return None
        return self.reason_head(job, may_borrow)

    def held_back(self, job: BatchJob, within_guarantee: bool, may_borrow: bool) -> tuple[bool, str] | None:
        """The reason of a job whose shape the policy placed since the last start, where backfill
        does not let it start, and for which the dev pool had no room either; None unless known.

        The cluster and the reservation have not changed since (a start would have emptied
        :attr:`placed`), so the policy would answer the same, and the job would be held back too.
        """
        reservation, placed = self.decision.reservation, self.placed
        if reservation is None or placed is None:
            return None
        placement = placed.get(job.request(TRAIN_POOL))
        if placement is None or _backfill_allows(reservation, placement, job, self.now):
            return None
        # Asked for the dev pool (see consider): only when it is known to have no room.
        if (not within_guarantee or job.priority == Priority.low) or (
            may_borrow and job.priority != Priority.low
        ):
            if placed.get(job.request(DEV_POOL), placement) is not None:
                return None
        with_counts, reason = self.reason_head(job, may_borrow)
        return with_counts, _held_back(job, reservation, self.now) + reason

    def walk(
        self, run: QueueRun, deferred: dict[tuple, int] | None, since: Mapping[tuple, int] | None
    ) -> None:
        """One walk over ``run`` (with ``positions``): the first of its level (``deferred`` given,
        filled with where each key's jobs stop being within their guarantee) or the second
        (``since``: the borrowers the first walk left, from those indexes on)."""
        jobs, positions = run.jobs, run.positions
        assert positions is not None
        index, count = 0, len(jobs)
        while index < count:
            live = self.next_live(jobs, positions, index, deferred, since)
            if live > index:
                self.skip(jobs, positions, index, live, deferred, since)
                index = live
                continue
            self.consider(jobs[index])
            index += 1

    def next_live(
        self,
        jobs: Sequence[BatchJob],
        positions: Mapping[tuple, Sequence[int]],
        index: int,
        deferred: dict[tuple, int] | None = None,
        since: Mapping[tuple, int] | None = None,
    ) -> int:
        """The first of ``jobs[index:]`` that this walk considers and that might do anything
        (``len(jobs)`` if none): the earliest next occurrence of a job key that is not dead. Keys
        only die between two starts, so one found dead is not looked at again until the next
        start. In a level's first walk a key whose job is not within its guarantee is left, from
        that job on, to the second walk (``deferred``); the second walk looks only at those
        (``since``)."""
        live = len(jobs)
        dead = self.dead
        for key, where in positions.items():
            start = index
            if since is not None:
                bound = since.get(key)
                if bound is None:
                    continue
                start = max(start, bound)
            elif deferred is not None and key in deferred:
                continue
            if where[-1] < start:
                continue
            first = where[bisect_left(where, start)]
            if first >= live or key in dead:
                continue
            if deferred is not None and not self.within_guarantee(jobs[first]):
                deferred[key] = first
                continue
            reason = self.dead_reason(jobs[first])
            if reason is None:
                live = first
            else:
                dead[key] = reason
        return live

    def skip(
        self,
        jobs: Sequence[BatchJob],
        positions: Mapping[tuple, Sequence[int]],
        start: int,
        stop: int,
        deferred: Mapping[tuple, int] | None = None,
        since: Mapping[tuple, int] | None = None,
    ) -> None:
        """Leave waiting the jobs of ``jobs[start:stop]`` this walk considers, all of dead keys
        and of one priority level (the others are another walk's)."""
        if since is not None:
            count = sum(_occurrences(positions[key], bound, start, stop) for key, bound in since.items())
        else:
            count = stop - start
            if deferred:
                count -= sum(
                    _occurrences(positions[key], bound, start, stop) for key, bound in deferred.items()
                )
        if not count:
            return
        priority = jobs[start].priority
        same = self.waiting_per_level[priority]
        position = len(self.waiting)
        higher = self.higher_waiting(priority)
        self.waiting.add_range(
            _SkippedRange(jobs, start, stop, position, higher, same, self.dead, count, deferred, since)
        )
        self.waiting_per_level[priority] += count


def _occurrences(where: Sequence[int], bound: int, start: int, stop: int) -> int:
    """How many of the sorted indexes ``where`` lie in ``[max(bound, start), stop)``."""
    start = max(bound, start)
    if start >= stop:
        return 0
    return bisect_left(where, stop) - bisect_left(where, start)


def _ahead(higher: int, same: int) -> str:
    """The end of a waiting reason: how many waiting jobs are ahead."""
    text = ""
    if higher:
        text += f"; {higher} job{'s' if higher != 1 else ''} of higher priority ahead"
    if same:
        text += f"; {same} job{'s' if same != 1 else ''} of the same priority ahead"
    return text


def _held_back(job: BatchJob, reservation: Reservation, now: float) -> str:
    """The start of the reason of a job that fits, but only where it would delay the reserved one."""
    return (
        f"it would fit now, but its time limit ({describe_duration(job.time_limit_s)}) would "
        f"delay job {reservation.job_id}, first in the queue, which has node {reservation.node} "
        f"reserved in {describe_duration(reservation.start_by - now)}; "
    )


def _over_quota(job: BatchJob, share: GroupShare, held: int) -> str:
    return (
        f"group {job.group} holds {held} GPUs, its guarantee of "
        f"{share.guaranteed_gpus} plus {share.borrow_limit_gpus} it may borrow; "
        f"this job needs {job.gpus} more"
    )


def _learns(policy: PlacementPolicy) -> bool:
    """Whether ``policy`` learns from the requests it is asked to place (a fragmentation policy
    given no workload learns the mix from them), so that how often it is asked changes its answers."""
    return isinstance(policy, FragmentationGradientDescent) and policy.workload is None


def _backfill_allows(
    reservation: Reservation | None, placement: Placement, job: BatchJob, now: float
) -> bool:
    """A later job may not delay the reserved one: it ends before the reservation starts, runs on
    another node, or takes only GPUs the reserved job will not need."""
    if reservation is None or placement.node != reservation.node:
        return True
    return now + job.time_limit_s <= reservation.start_by or job.gpus <= reservation.spare_gpus


def _ends_by_node(running: Sequence[RunningJob]) -> dict[str, list[tuple[float, int]]]:
    """Per node, when each running job reaches its time limit and how many GPUs it gives back,
    soonest first: what a reservation counts on."""
    ends_on: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for held in running:
        ends_on[held.placement.node].append((held.ends_by, len(held.placement.shares)))
    for ends in ends_on.values():
        ends.sort()
    return ends_on


def _reserve(
    cluster: ClusterState,
    job: BatchJob,
    running: Sequence[RunningJob],
    now: float,
    ends_on: Mapping[str, list[tuple[float, int]]] | None = None,
) -> Reservation | None:
    """The node where ``job`` fits soonest as running jobs reach their time limits (``ends_on``
    is :func:`_ends_by_node` of ``running``, when the caller has it already)."""
    if ends_on is None:
        ends_on = _ends_by_node(running)
    eligible = cluster.eligible(job.gpu_models, TRAIN_POOL)
    best: Reservation | None = None
    for row, node in enumerate(cluster.nodes):
        capacity = int(eligible[row].sum())
        if capacity < job.gpus:
            continue
        free = int((eligible[row] & (cluster.milli_free[row] == 1000)).sum())
        start_by = now
        for ends_by, gpus in ends_on.get(node.name, ()):
            if free >= job.gpus:
                break
            free += gpus
            start_by = max(now, ends_by)
        if free < job.gpus:
            continue
        free = min(free, capacity)
        if best is None or start_by < best.start_by:
            best = Reservation(job.id, node.name, start_by, free - job.gpus)
    return best


def _borrowed_by_node(
    running: Sequence[RunningJob], stopping: Collection[str] = frozenset()
) -> dict[str, list[RunningJob]]:
    """Borrowed training jobs per node in the order they would yield: those already stopping
    first (their GPUs come back anyway), then the newest (the most recent loses the least work)."""
    by_node: dict[str, list[RunningJob]] = defaultdict(list)
    for held in running:
        if (held.borrowed or held.job.id in stopping) and held.pool == TRAIN_POOL:
            by_node[held.placement.node].append(held)
    for jobs in by_node.values():
        jobs.sort(key=lambda held: (held.job.id not in stopping, -held.started_at))
    return by_node


def _preemption_plan(
    cluster: ClusterState,
    job: BatchJob,
    borrowed_on: Mapping[str, list[RunningJob]],
    preempting: set[str],
    stopping: Collection[str] = frozenset(),
    free: tuple[list[int], list[int]] | None = None,
) -> list[RunningJob]:
    """The fewest borrowed jobs of other groups whose stop makes ``job`` fit on one node.

    Jobs already ``stopping`` (and not yet counted on by another job of this pass) are taken
    first and cost nothing: the plan with the fewest *new* preemptions wins, the first node's among
    equals. ``free`` is :func:`_training_gpus` of the job's models, when the caller has it.
    """
    capacity, free_whole = _training_gpus(cluster, job.gpu_models) if free is None else free
    node_index = cluster.node_index
    best: list[RunningJob] = []
    best_new = 0
    for node_name, borrowed in borrowed_on.items():
        row = node_index[node_name]
        if capacity[row] < job.gpus:
            continue
        free_gpus = free_whole[row]
        victims = []
        for held in borrowed:
            if free_gpus >= job.gpus:
                break
            if held.job.id in preempting:
                continue
            if held.job.group == job.group and held.job.id not in stopping:
                continue
            victims.append(held)
            free_gpus += held.job.gpus
        if free_gpus >= job.gpus and victims:
            new = sum(1 for held in victims if held.job.id not in stopping)
            if not best or new < best_new:
                best, best_new = victims, new
                if not new:
                    break  # no plan stops fewer than none: the later nodes cannot win
    return best


def _training_gpus(cluster: ClusterState, gpu_models: frozenset[str]) -> tuple[list[int], list[int]]:
    """Per node, the training GPUs of ``gpu_models`` it has, and how many of them are wholly free."""
    eligible = cluster.eligible(gpu_models, TRAIN_POOL)
    free_whole = (eligible & (cluster.milli_free == 1000)).sum(axis=1)
    return eligible.sum(axis=1).tolist(), free_whole.tolist()


def describe_duration(seconds: float) -> str:
    """``43200`` -> ``12h``, ``5400`` -> ``1h30m``, ``42`` -> ``42s``: how long, as people read it in
    waiting reasons, time-limit failures and the pages. A job without a time limit (``inf``) runs
    "unlimited", and a running one's end is as far away."""
    if not math.isfinite(seconds):
        return "unlimited" if seconds > 0 else "0s"
    seconds = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def largest_gang(nodes: Iterable[Node], gpu_models: Collection[str], pool: str) -> int:
    """The most GPUs (of ``gpu_models``, if given) that one node has in ``pool``: the biggest job
    that pool could ever hold, since a job's GPUs are never split across nodes."""
    return max(
        (
            sum(1 for gpu in node.gpus if pool in gpu.pools and (not gpu_models or gpu.model in gpu_models))
            for node in nodes
        ),
        default=0,
    )


ON_BORROWED_DEV_GPUS = (
    "no training node has {what}, so it runs on idle dev GPUs, borrowed: it may be stopped "
    "(SIGTERM, then a grace period to checkpoint) and queued again when developers need them"
)


def _why_no_room(
    cluster: ClusterState,
    job: BatchJob,
    may_borrow: bool,
    largest_by_models: dict[frozenset[str], tuple[int, int]] | None,
    free_by_models: dict[frozenset[str], tuple[int, int]] | None,
) -> tuple[bool, str]:
    """Whether the count of jobs ahead belongs after the reason (not when no node of any pool is big
    enough: the job can never start), and why no node takes ``job`` now."""
    models = "/".join(sorted(job.gpu_models)) + " " if job.gpu_models else ""
    what = f"{job.gpus} {models}GPU{'s' if job.gpus != 1 else ''} on one node"
    largest = None if largest_by_models is None else largest_by_models.get(job.gpu_models)
    if largest is None:
        largest = tuple(
            int(cluster.eligible(job.gpu_models, pool).sum(axis=1).max(initial=0))
            for pool in (TRAIN_POOL, DEV_POOL)
        )
        if largest_by_models is not None:
            largest_by_models[job.gpu_models] = largest
    train_capacity, dev_capacity = largest
    if max(train_capacity, dev_capacity) < job.gpus:
        return False, f"no node of any pool has {what.removesuffix(' on one node')}; the job can never start"
    parts = [f"waiting for {what}"]
    if train_capacity < job.gpus <= dev_capacity:
        parts = [
            ON_BORROWED_DEV_GPUS.format(what=what.removesuffix(" on one node")),
            f"waiting for {what} of the dev pool to be idle",
        ]
        if not may_borrow:
            parts.append(f"group {job.group} may borrow no more GPUs now")
    elif job.gpus > 1:
        free = None if free_by_models is None else free_by_models.get(job.gpu_models)
        if free is None:
            eligible = cluster.eligible(job.gpu_models, TRAIN_POOL)
            free_per_node = (eligible & (cluster.milli_free == 1000)).sum(axis=1)
            free = (int(free_per_node.sum()), int(free_per_node.max(initial=0)))
            if free_by_models is not None:
                free_by_models[job.gpu_models] = free
        free_total, free_most = free
        if free_total >= job.gpus and free_most < job.gpus:
            parts.append(
                f"{free_total} GPUs are free, but on different nodes "
                "(a job's GPUs are never split across nodes)"
            )
    return True, "; ".join(parts)


def reclaim_for_interactive(
    nodes: Sequence[Node],
    interactive: Iterable[Placement],
    running: Sequence[RunningJob],
    slice_request: SliceRequest,
    policy_name: str = "default",
    stopping: Collection[str] = frozenset(),
) -> list[RunningJob]:
    """Jobs on dev GPUs to stop so that ``slice_request`` fits; empty if it fits already or if
    stopping every such job would not make room either.

    Interactive slices are never preempted by batch work: a developer who asks for a slice gets
    back the dev GPUs that batch jobs borrowed while they were idle. The newest borrowers go first
    (they lose the least work), and any of them the slice turns out not to need are kept.

    ``stopping`` names jobs of ``running`` whose stop is already under way (an earlier request
    reclaimed them): they are counted on first, and come back in the answer if the slice needs
    them, so that asking again while they checkpoint never stops one more job than needed.
    """
    interactive = list(interactive)
    policy = get_policy(policy_name)

    def fits_without(stopped: Sequence[RunningJob]) -> bool:
        cluster = ClusterState(nodes)
        for placement in interactive:
            cluster.allocate(placement)
        for job in running:
            if job not in stopped:
                cluster.allocate(job.placement)
        return policy.place(cluster, slice_request) is not None

    if fits_without([]):
        return []
    borrowers = sorted(
        (job for job in running if job.pool == DEV_POOL),
        key=lambda job: (job.job.id not in stopping, -job.started_at),
    )
    chosen: list[RunningJob] = []
    for job in borrowers:
        chosen.append(job)
        if fits_without(chosen):
            break
    else:
        return []
    # Drop the ones the slice does not need: new victims before the ones already stopping.
    for job in sorted(chosen, key=lambda job: job.job.id in stopping):
        trial = [other for other in chosen if other is not job]
        if fits_without(trial):
            chosen = trial
    return chosen


def expected_gpu_hours(job: BatchJob) -> float:
    return job.gpus * job.time_limit_s / 3600 if math.isfinite(job.time_limit_s) else 0.0
