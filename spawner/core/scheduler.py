"""The batch scheduler's decisions: which queued jobs start where, which running jobs must yield.

Pure and clock-injected (``now`` is an argument), so a pass is tested and measured without waiting
on a clock; the service turns its decisions into job processes and leases. The rules, in the order
they apply:

1. **Strict priority** between levels (``high`` > ``normal`` > ``low``).
2. **Fair share** between groups inside a level: the group with the least decayed GPU usage per
   unit of guaranteed quota goes first, then submission order.
3. **Guarantee and borrowing**: a group's jobs up to its guaranteed GPUs run as of right; beyond
   it they borrow idle capacity up to the borrowing limit and are preemptible. A job inside its
   group's guarantee that finds no room preempts borrowed jobs of other groups.
4. **Gangs**: all GPUs of a job are on one node, or the job waits.
5. **Backfill**: once the first job that cannot start has a reservation (the node and the time
   its GPUs are expected free, from the running jobs' time limits), later jobs start only where
   they cannot delay it.
6. **Idle dev GPUs**: preemptible jobs that find no training GPU may run on idle dev-pool GPUs,
   and give them back when a user asks for an interactive slice (``reclaim_for_interactive``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .cluster import ClusterState
from .placement import get_policy
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
    """Every queued job's id in the order the pass considered them (priority, then fair share)."""
    preemptions: list[Preempt] = field(default_factory=list)
    waiting: dict[str, Waiting] = field(default_factory=dict)
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
    """
    cluster = ClusterState(nodes)
    for placement in interactive:
        cluster.allocate(placement)
    for held in running:
        cluster.allocate(held.placement)
    policy = get_policy(policy_name)
    held_by_group: dict[str | None, list[int]] = defaultdict(lambda: [0, 0])  # [guaranteed, borrowed]
    for held in running:
        held_by_group[held.job.group][1 if held.borrowed else 0] += held.job.gpus
    preempting: set[str] = set()
    decision = Decision()
    ordered = fair_order(queue, usage, shares)
    decision.order = [job.id for job in ordered]
    # Jobs left waiting so far, per priority level: the queue is sorted by priority first, so the
    # jobs of higher levels ahead of a job are all the waiting ones of those levels.
    waiting_per_level: dict[Priority, int] = defaultdict(int)
    borrowed_on = _borrowed_by_node(running, stopping)
    # Shapes that found no room since the last start: the cluster has not changed for them, so a
    # queue of thousands costs one placement attempt per shape, not per job.
    no_room: set[tuple] = set()
    # The biggest gang each pool could ever hold, per set of GPU models: fixed for the whole pass.
    largest_by_models: dict[frozenset[str], tuple[int, int]] = {}
    for job in ordered:
        share = shares.get(job.group, GroupShare())
        guaranteed_held, borrowed_held = held_by_group[job.group]
        within_guarantee = guaranteed_held + job.gpus <= share.guaranteed_gpus
        may_borrow = share.borrow_limit_gpus is None or (
            guaranteed_held + borrowed_held + job.gpus <= share.guaranteed_gpus + share.borrow_limit_gpus
        )
        if not within_guarantee and not may_borrow:
            waiting_per_level[job.priority] += 1
            decision.waiting[job.id] = Waiting(
                job.id,
                len(decision.waiting),
                f"group {job.group} holds {guaranteed_held + borrowed_held} GPUs, its guarantee of "
                f"{share.guaranteed_gpus} plus {share.borrow_limit_gpus} it may borrow; "
                f"this job needs {job.gpus} more",
            )
            continue
        shape = (job.gpus, job.gpu_models, job.cpu_milli, job.memory_mib, job.priority)
        shape += (within_guarantee, may_borrow)
        placement, pool, blocked_by_reservation, victims = None, TRAIN_POOL, False, []
        if shape not in no_room:
            placement = policy.place(cluster, job.request(TRAIN_POOL))
            if placement is not None and not _backfill_allows(decision.reservation, placement, job, now):
                placement, blocked_by_reservation = None, True
            if placement is None and (not within_guarantee or job.priority == Priority.low):
                placement, pool = _place_on_dev(cluster, policy, job)
        if placement is None and within_guarantee:
            # A job inside its guarantee takes training GPUs back from other groups' borrowers
            # first; only when that cannot make room does it borrow idle dev GPUs itself.
            victims = _preemption_plan(cluster, job, borrowed_on, preempting, stopping)
            if not victims and may_borrow and shape not in no_room and job.priority != Priority.low:
                placement, pool = _place_on_dev(cluster, policy, job)
        if placement is not None:
            no_room.clear()
            cluster.allocate(placement)
            # Dev GPUs are only ever lent: a job on them is borrowed (preemptible) work, counted
            # against its group's borrowing limit, whatever its guarantee.
            borrowed = not within_guarantee or pool == DEV_POOL
            held_by_group[job.group][1 if borrowed else 0] += job.gpus
            decision.starts.append(Start(job, placement, borrowed=borrowed, pool=pool))
            reservation = decision.reservation
            if reservation and pool == TRAIN_POOL and placement.node == reservation.node:
                decision.reservation = Reservation(
                    reservation.job_id,
                    reservation.node,
                    reservation.start_by,
                    reservation.spare_gpus - job.gpus,
                )
            continue
        if not blocked_by_reservation:
            no_room.add(shape)
        higher = sum(count for level, count in waiting_per_level.items() if level > job.priority)
        reason = _waiting_reason(
            cluster, job, higher, waiting_per_level[job.priority], may_borrow, largest_by_models
        )
        waiting_per_level[job.priority] += 1
        if blocked_by_reservation:
            reservation = decision.reservation
            reason = (
                f"it would fit now, but its time limit ({describe_duration(job.time_limit_s)}) would "
                f"delay job {reservation.job_id}, first in the queue, which has node {reservation.node} "
                f"reserved in {describe_duration(reservation.start_by - now)}; " + reason
            )
        if victims:
            for victim in victims:
                preempting.add(victim.job.id)
                if victim.job.id in stopping:
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
            decision.reservation = _reserve(cluster, job, running, now)
        decision.waiting[job.id] = Waiting(job.id, len(decision.waiting), reason)
    return decision


def _place_on_dev(cluster: ClusterState, policy, job: BatchJob) -> tuple[Placement | None, str]:
    """Idle dev GPUs for ``job``, lent until a developer asks for a slice on them."""
    placement = policy.place(cluster, job.request(DEV_POOL))
    return placement, (DEV_POOL if placement is not None else TRAIN_POOL)


def _backfill_allows(
    reservation: Reservation | None, placement: Placement, job: BatchJob, now: float
) -> bool:
    """A later job may not delay the reserved one: it ends before the reservation starts, runs on
    another node, or takes only GPUs the reserved job will not need."""
    if reservation is None or placement.node != reservation.node:
        return True
    return now + job.time_limit_s <= reservation.start_by or job.gpus <= reservation.spare_gpus


def _reserve(
    cluster: ClusterState, job: BatchJob, running: Sequence[RunningJob], now: float
) -> Reservation | None:
    """The node where ``job`` fits soonest as running jobs reach their time limits."""
    eligible = cluster.eligible(job.gpu_models, TRAIN_POOL)
    ends_on: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for held in running:
        ends_on[held.placement.node].append((held.ends_by, len(held.placement.shares)))
    best: Reservation | None = None
    for row, node in enumerate(cluster.nodes):
        capacity = int(eligible[row].sum())
        if capacity < job.gpus:
            continue
        free = int((eligible[row] & (cluster.milli_free[row] == 1000)).sum())
        start_by = now
        for ends_by, gpus in sorted(ends_on.get(node.name, [])):
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
) -> list[RunningJob]:
    """The fewest borrowed jobs of other groups whose stop makes ``job`` fit on one node.

    Jobs already ``stopping`` (and not yet counted on by another job of this pass) are taken
    first and cost nothing: the plan with the fewest *new* preemptions wins.
    """
    eligible = cluster.eligible(job.gpu_models, TRAIN_POOL)
    capacity = eligible.sum(axis=1)
    free_whole = (eligible & (cluster.milli_free == 1000)).sum(axis=1)
    best: list[RunningJob] = []
    for node_name, borrowed in borrowed_on.items():
        row = cluster.node_index[node_name]
        if capacity[row] < job.gpus:
            continue
        free = int(free_whole[row])
        victims = []
        for held in borrowed:
            if free >= job.gpus:
                break
            if held.job.id in preempting:
                continue
            if held.job.group == job.group and held.job.id not in stopping:
                continue
            victims.append(held)
            free += held.job.gpus

        def new(plan: list[RunningJob]) -> int:
            return sum(1 for held in plan if held.job.id not in stopping)

        if free >= job.gpus and victims and (not best or new(victims) < new(best)):
            best = victims
    return best


def describe_duration(seconds: float) -> str:
    """``43200`` -> ``12h``, ``5400`` -> ``1h30m``, ``42`` -> ``42s``: how long, as people read it in
    waiting reasons, time-limit failures and the pages."""
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


def _waiting_reason(
    cluster: ClusterState,
    job: BatchJob,
    higher: int,
    same: int,
    may_borrow: bool = True,
    largest_by_models: dict[frozenset[str], tuple[int, int]] | None = None,
) -> str:
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
    parts = [f"waiting for {what}"]
    if train_capacity < job.gpus <= dev_capacity:
        parts = [
            ON_BORROWED_DEV_GPUS.format(what=what.removesuffix(" on one node")),
            f"waiting for {what} of the dev pool to be idle",
        ]
        if not may_borrow:
            parts.append(f"group {job.group} may borrow no more GPUs now")
    elif job.gpus > 1:
        eligible = cluster.eligible(job.gpu_models, TRAIN_POOL)
        free_per_node = (eligible & (cluster.milli_free == 1000)).sum(axis=1)
        if free_per_node.sum() >= job.gpus and free_per_node.max(initial=0) < job.gpus:
            parts.append(
                f"{int(free_per_node.sum())} GPUs are free, but on different nodes "
                "(a job's GPUs are never split across nodes)"
            )
    if higher:
        parts.append(f"{higher} job{'s' if higher != 1 else ''} of higher priority ahead")
    if same:
        parts.append(f"{same} job{'s' if same != 1 else ''} of the same priority ahead")
    if max(train_capacity, dev_capacity) < job.gpus:
        parts = [f"no node of any pool has {what.removesuffix(' on one node')}; the job can never start"]
    return "; ".join(parts)


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
