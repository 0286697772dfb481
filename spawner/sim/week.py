"""A week of a lab on a virtual clock, through the scheduling code the service runs.

:class:`WeekReplay` keeps what the service keeps (the leases, the queue, the jobs holding GPUs, the
fair-share usage, the GPUs held for interactive slices) and changes it only through the functions
the service calls: ``core.placement`` places every slice, ``core.quota`` checks every grant,
``core.scheduler.schedule`` makes every pass's decision (through ``core.incremental``, as the
service's ``BatchScheduler`` calls it), ``core.scheduler.reclaim_for_interactive``
chooses the batch jobs a developer's slice takes its dev GPUs back from, ``core.fair_share``
advances the decayed usage, and ``core.holds`` keeps reclaimed GPUs from being lent again. What is
the simulator's own is the world around them: developers who come and go, runs that compute,
checkpoint and exit, a spawner that asks again while a reclaim is under way.

The clock is event-driven: a pass runs at the service's pass interval (on its grid of ticks)
whenever something can have changed since the last one: a run ended, a developer came, left or
asked again, a preempted job's grace ran out, a hold expired, the dev pool opened to training, or
the last pass started or preempted something. Ticks where nothing happened are skipped, since a
pass over an unchanged cluster and queue decides nothing new; ``every_pass=True`` runs every tick
instead, and the tests check that both give the same week.

The three policies (:data:`POLICIES`) replay the same scenario on the same GPUs:

``static``
    No slices and no scheduler: a developer pins a whole GPU for the day, and training runs only
    when someone launches it: a developer who held a card launches one run from the group's backlog
    as they leave on a workday (so runs go at night, on the cards the day left free). In a trace
    scenario the trace's submissions are the launches. Every GPU is one pool; nothing is preempted.
``split``
    Fixed pools: the dev pool is sliced for developers, the train pool runs the queue, and idle dev
    GPUs take queued training only in the night window: from the latest departure until the
    earliest arrival, and only runs that end before it closes (nothing is preempted).
``gpuslice``
    The product: slices, one queue, idle dev GPUs lent to preemptible training at any hour and
    taken back (stop signal, grace period, checkpoint) the moment a developer's slice needs them,
    fair share and guarantees between groups.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from statistics import fmean

import numpy as np

from spawner.core import fair_share, quota
from spawner.core.cluster import CapacityError, ClusterState
from spawner.core.holds import InteractiveHolds, nodes_without
from spawner.core.incremental import IncrementalScheduler
from spawner.core.placement import get_policy
from spawner.core.quota import Usage
from spawner.core.scheduler import (
    BatchJob,
    Decision,
    GroupShare,
    RunningJob,
    expected_gpu_hours,
    reclaim_for_interactive,
)
from spawner.core.units import GPU, MILLI_PER_GPU, Lease, Node, Placement, SliceRequest, WorkloadClass
from spawner.core.vocabulary import DEV_POOL, POOLS, TRAIN_POOL, Priority

from .scenario import DAY_S, Scenario
from .workload import RunSpec, Session


class InvariantError(AssertionError):
    """The replay reached a state the service must never be in (a bug, never bad input)."""


@dataclass(frozen=True)
class Policy:
    """How a lab shares its GPUs; see the module docstring."""

    name: str
    whole_gpu_slices: bool
    one_pool: bool
    launch_on_departure: bool
    lend_dev_gpus: str  # "never", "night" or "always"
    reclaim: bool
    guarantees: bool
    """Whether groups' guaranteed GPUs count (and preempt borrowers); without, every group's
    runs are first come, first served, in priority and fair-share order."""


POLICIES: dict[str, Policy] = {
    "static": Policy("static", True, True, True, "never", reclaim=False, guarantees=False),
    "split": Policy("split", False, False, False, "night", reclaim=False, guarantees=False),
    "gpuslice": Policy("gpuslice", False, False, False, "always", reclaim=True, guarantees=True),
}


# ----------------------------------------------------------------------------- the world


@dataclass
class Run:
    """A training run: a batch job, and the GPU work it needs."""

    job: BatchJob
    work_s: float
    checkpoint_every_s: float | None
    checkpoint_on_stop: bool
    state: str = "queued"  # queued, running, stopping, succeeded, failed
    saved_s: float = 0.0
    """Work done and checkpointed: where the next attempt starts."""
    held: RunningJob | None = None
    end_at: float = math.inf
    stop_at: float = math.inf
    first_started_at: float | None = None
    ended_at: float | None = None
    preemptions: int = 0
    attempts: int = 0

    @property
    def lease_id(self) -> str:
        return f"{self.job.id}-run-{self.attempts}"


@dataclass
class WeekResult:
    scenario: str
    policy: str
    figures: dict[str, float]
    timeline: list[tuple[float, float, float, int]]
    """(time, GPUs busy in the dev pool, GPUs busy in the train pool, queued jobs) at each change."""
    history: list[tuple]
    """What happened to runs, in order: (kind, time, job id, details...)."""
    passes: int
    pool_gpus: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------- the replay

_GRACE, _LEAVE, _ARRIVE, _RETRY, _SUBMIT, _PASS = range(6)
"""Event kinds in the order they apply at one instant: GPUs come back, people come and go, jobs are
submitted, and only then does the pass of that tick look."""


class WeekReplay:
    """One policy over one scenario; :meth:`run` plays the whole week."""

    def __init__(
        self,
        scenario: Scenario,
        policy: Policy | str,
        seed: int = 0,
        *,
        sessions: Sequence[Session] | None = None,
        run_specs: Sequence[RunSpec] | None = None,
        check_invariants: bool = False,
        every_pass: bool = False,
    ):
        self.scenario = scenario
        self.policy = POLICIES[policy] if isinstance(policy, str) else policy
        self.timing = scenario.timing
        self.check = check_invariants
        self.every_pass = every_pass
        self.nodes = self._policy_nodes(scenario.nodes())
        self.dev_uuids = {gpu.uuid for node in self.nodes for gpu in node.gpus if self._is_dev(gpu)}
        self.total_gpus = sum(len(node.gpus) for node in self.nodes)
        self.quotas = scenario.quotas()
        self.shares: dict[str | None, GroupShare] = {
            group.name: GroupShare(group.guaranteed_gpus, group.borrowing_limit_gpus)
            if self.policy.guarantees
            else GroupShare()
            for group in scenario.groups
        }
        self.shares.setdefault(None, GroupShare())
        self.usage: dict[str | None, float] = {}
        self.usage_at: float | None = None
        self.holds = InteractiveHolds()
        self.leases: dict[str, Lease] = {}
        self.granted = ClusterState(self.nodes)
        """Every live lease's placement taken: what the ledger places slices against."""
        self.placer = get_policy(scenario.placement)
        self.scheduler = IncrementalScheduler()
        """The service's pass (``BatchScheduler.incremental``): ``core.scheduler.schedule``'s
        decisions, costing what changed since the last pass."""
        self.lease_ids_of: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.batch_view: tuple[frozenset[str], list[Node]] | None = None
        self.runs: dict[str, Run] = {}
        self.queued: dict[str, Run] = {}
        self.running: dict[str, Run] = {}
        self.stopping: dict[str, Run] = {}
        self.ended: dict[str, Run] = {}
        self.finished_since_pass: list[tuple[str | None, int, float | None, float | None]] = []
        self.stopped_since_pass: list[tuple[RunningJob, float]] = []
        """Preempted jobs whose GPUs came back since the last pass, with the time they did."""
        self.sessions: dict[str, Session] = {}
        self.holding: dict[str, Session] = {}
        """The sessions holding a slice now."""
        self.backlog: list[RunSpec] = []
        self.history: list[tuple] = []
        self.timeline: list[tuple[float, float, float, int]] = []
        self.events: list[tuple[float, int, int, object]] = []
        self.sequence = 0
        self.pass_times: set[float] = set()
        self.last_pass: float | None = None
        self.passes = 0
        self.origin = scenario.warmup_days * DAY_S
        """The measured week starts here; before it, a warm-up puts the lab in its steady state
        (runs already going), so the week does not start on an empty cluster."""
        self.end = self.origin + scenario.duration_s
        self.now = 0.0
        self.clock_at = 0.0
        self.gpu_seconds = {"allocated": 0.0, "busy": 0.0, "training": 0.0, "interactive": 0.0}
        self.preemptions = 0
        self.lost_gpu_s = 0.0
        self.rng = np.random.default_rng(seed)
        self.windows = self._night_windows()
        if sessions is None or run_specs is None:
            made_sessions, made_specs = self._workload(seed)
            sessions = made_sessions if sessions is None else sessions
            run_specs = made_specs if run_specs is None else run_specs
        for session in sessions:
            self.sessions[session.id] = session
            self._at(session.arrive_at, _ARRIVE, session.id)
        for spec in run_specs:
            if spec.submit_at is None:
                self.backlog.append(spec)
            elif not (self.policy.launch_on_departure and self.scenario.training is not None):
                self._at(spec.submit_at, _SUBMIT, spec)
        for start, _ in self.windows:
            self._request_pass(start)
        self._request_pass(0.0)

    # ------------------------------------------------------------------------ set-up

    def _is_dev(self, gpu: GPU) -> bool:
        return DEV_POOL in gpu.pools

    def _policy_nodes(self, nodes: list[Node]) -> list[Node]:
        if not self.policy.one_pool:
            return nodes
        return [
            replace(node, gpus=tuple(replace(gpu, pools=frozenset(POOLS)) for gpu in node.gpus))
            for node in nodes
        ]

    def _workload(self, seed: int) -> tuple[list[Session], list[RunSpec]]:
        scenario = self.scenario
        if scenario.trace is not None:
            from .trace_week import trace_workload

            return trace_workload(scenario, self.policy.whole_gpu_slices, seed)
        sessions = []
        day = scenario.developers
        if day is not None:
            request = self._slice(day.slice_milli)
            for group in scenario.groups:
                for number in range(group.developers):
                    user = f"{group.name}-dev{number + 1}"
                    for date in range(-scenario.warmup_days, scenario.days):
                        if date % 7 not in day.workdays:
                            continue
                        midnight = self.origin + date * DAY_S
                        arrive = midnight + round(self.rng.uniform(*day.arrive_between))
                        leave = midnight + round(self.rng.uniform(*day.leave_between))
                        sessions.append(
                            Session(
                                f"{user}-day{date}",
                                user,
                                group.name,
                                request,
                                arrive,
                                leave,
                                day.busy_fraction,
                            )
                        )
        specs = []
        work = scenario.training
        if work is not None:
            for group in scenario.groups:
                specs.append(
                    RunSpec(f"{group.name}-trainer", group.name, work.gpus, work.run_s, work.time_limit_s)
                )
        return sessions, specs

    def _slice(self, milli: int) -> SliceRequest:
        if self.policy.whole_gpu_slices or milli >= MILLI_PER_GPU:
            return SliceRequest(gpus=1, pool=DEV_POOL)
        return SliceRequest(milli_gpu=milli, pool=DEV_POOL)

    def _night_windows(self) -> list[tuple[float, float]]:
        """When the dev pool may take training under ``split``: from each start of a stretch with
        no developer until the time a run of the longest time limit must start to end before the
        next arrival."""
        day = self.scenario.developers
        if self.policy.lend_dev_gpus != "night" or day is None:
            return []
        longest = self._longest_time_limit()
        busy = [
            (
                self.origin + date * DAY_S + day.arrive_between[0],
                self.origin + date * DAY_S + day.leave_between[1],
            )
            for date in range(-self.scenario.warmup_days, self.scenario.days + 7)
            if date % 7 in day.workdays
        ]
        windows, free_from = [], 0.0
        for start, end in busy:
            if start - longest >= free_from:
                windows.append((free_from, start - longest))
            free_from = max(free_from, end)
        return windows

    def _longest_time_limit(self) -> float:
        work = self.scenario.training
        return work.time_limit_s if work is not None else DAY_S

    # ------------------------------------------------------------------------ events

    def _at(self, time: float, kind: int, payload: object) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (time, kind, self.sequence, payload))

    def _tick(self, time: float) -> float:
        interval = self.timing.pass_interval_s
        return math.ceil(time / interval - 1e-9) * interval

    def _request_pass(self, time: float) -> None:
        tick = self._tick(time)
        if self.last_pass is not None and tick <= self.last_pass:
            tick = self.last_pass + self.timing.pass_interval_s
        if tick not in self.pass_times:
            self.pass_times.add(tick)
            self._at(tick, _PASS, None)

    def run(self) -> WeekResult:
        end = self.end
        while self.events:
            time, kind, _, payload = heapq.heappop(self.events)
            if time > end:
                break
            self._advance_clock(time)
            if kind == _PASS:
                self.pass_times.discard(time)
                self.run_pass(time)
            elif kind == _ARRIVE:
                self._arrive(self.sessions[payload], time)
            elif kind == _RETRY:
                self._ask(self.sessions[payload], time)
            elif kind == _LEAVE:
                self._leave(self.sessions[payload], time)
            elif kind == _GRACE:
                self._stopped(payload, time)
            elif kind == _SUBMIT:
                self.submit(payload, time)
            if self.check:
                self.check_invariants()
        self._advance_clock(end)
        return self._result()

    # -------------------------------------------------------------------- accounting

    def _advance_clock(self, time: float) -> None:
        """Count the GPU-seconds of the stretch since the last change: state is constant within it."""
        elapsed = time - max(self.clock_at, self.origin)
        if elapsed > 0:
            training = sum(run.job.gpus for run in self.running.values())
            stopping = sum(run.job.gpus for run in self.stopping.values())
            slices = self.holding.values()
            interactive = sum(s.placement.total_milli for s in slices) / MILLI_PER_GPU
            computing = sum(s.placement.total_milli * s.busy_fraction for s in slices) / MILLI_PER_GPU
            self.gpu_seconds["allocated"] += (training + stopping + interactive) * elapsed
            self.gpu_seconds["busy"] += (training + computing) * elapsed
            self.gpu_seconds["training"] += training * elapsed
            self.gpu_seconds["interactive"] += interactive * elapsed
        self.now = self.clock_at = time

    def _sample(self, time: float) -> None:
        busy = {DEV_POOL: 0.0, TRAIN_POOL: 0.0}
        for run in self.running.values():
            busy[self._pool_of(run.held.placement)] += run.job.gpus
        for session in self.holding.values():
            milli = session.placement.total_milli * session.busy_fraction
            busy[self._pool_of(session.placement)] += milli / MILLI_PER_GPU
        point = (time - self.origin, busy[DEV_POOL], busy[TRAIN_POOL], len(self.queued))
        if not self.timeline or self.timeline[-1][1:] != point[1:]:
            self.timeline.append(point)

    def _pool_of(self, placement: Placement) -> str:
        return DEV_POOL if placement.shares and placement.shares[0].gpu_uuid in self.dev_uuids else TRAIN_POOL

    # ---------------------------------------------------------------------- sessions

    def ask_for_slice(self, session: Session, now: float) -> Session:
        """A slice asked for at ``now`` outside the scenario's day (a recorded request)."""
        self.sessions[session.id] = session
        self._ask(session, now)
        return session

    def _arrive(self, session: Session, now: float) -> None:
        self._at(session.leave_at, _LEAVE, session.id)
        self._ask(session, now)

    def _ask(self, session: Session, now: float) -> None:
        """What ``POST leases`` and the spawner's retries do for one slice (see ``Allocator.allocate``)."""
        if session.state not in ("coming", "waiting"):
            return
        if session.asked_at is None:
            session.asked_at = now
        refusal = quota.check_interactive(
            self.quotas,
            self._usage_of(session.user, session.group),
            session.user,
            session.group,
            session.request,
        )
        if refusal is not None:
            self._refuse(session, refusal.message)
            return
        placement = self._place_interactive(session.request)
        if placement is None and self.policy.reclaim:
            if self._reclaim(session, now):
                return
            placement = self._place_interactive(session.request)
        if placement is None:
            self._refuse(session, "no capacity")
            return
        session.state, session.placement, session.granted_at = "holding", placement, now
        self.holding[session.id] = session
        self.holds.release(session.id)
        self._grant(
            Lease(
                session.id,
                session.id,
                session.user,
                session.group,
                WorkloadClass.interactive,
                session.request,
                placement,
                now,
            )
        )
        self._sample(now)

    def _reclaim(self, session: Session, now: float) -> bool:
        """Take dev GPUs back from borrowing jobs (``Allocator.reclaim_for_interactive``); whether
        the developer waits for them."""
        victims = reclaim_for_interactive(
            self.nodes,
            [session.placement for session in self.holding.values()],
            self._holding_jobs(),
            session.request,
            self.scenario.placement,
            set(self.stopping),
        )
        if not victims:
            return False
        waited = now - session.asked_at
        if waited >= self.timing.reclaim_timeout_s:
            return False
        for victim in victims:
            if victim.job.id not in self.stopping:
                self.preempt(victim.job.id, now, "an interactive slice needs the dev GPU it borrowed")
        left = max(self.runs[victim.job.id].stop_at - now for victim in victims)
        uuids = [uuid for victim in victims for uuid in victim.placement.gpu_uuids]
        held = self.holds.hold(session.id, uuids, now + left + self.timing.interactive_hold_s)
        self._request_pass(held.until)
        session.state = "waiting"
        retry_after = min(max(1, math.ceil(left)), 10)
        self._at(now + min(retry_after, self.timing.spawner_retry_s), _RETRY, session.id)
        return True

    def _refuse(self, session: Session, reason: str) -> None:
        session.state, session.refusal = "refused", reason
        self.holds.release(session.id)

    def _place_interactive(self, request: SliceRequest) -> Placement | None:
        """Where the ledger would place the slice: on the GPUs every live lease leaves free."""
        return self.placer.place(self.granted, request)

    def _grant(self, lease: Lease) -> None:
        self.granted.allocate(lease.placement)
        self.leases[lease.id] = lease
        self.lease_ids_of[("user", lease.user)].add(lease.id)
        if lease.group is not None:
            self.lease_ids_of[("group", lease.group)].add(lease.id)

    def _release(self, lease_id: str) -> None:
        lease = self.leases.pop(lease_id)
        self.granted.release(lease.placement)
        self.lease_ids_of[("user", lease.user)].discard(lease.id)
        if lease.group is not None:
            self.lease_ids_of[("group", lease.group)].discard(lease.id)

    def _usage_of(self, user: str, group: str | None) -> Usage:
        """What ``user`` and ``group`` hold, as ``core.quota`` counts it from their live leases
        (the only holders a check of theirs reads)."""
        ids = self.lease_ids_of[("user", user)]
        if group is not None:
            ids = ids | self.lease_ids_of[("group", group)]
        return Usage.from_leases(self.leases[lease_id] for lease_id in ids)

    def _leave(self, session: Session, now: float) -> None:
        held = session.state == "holding"
        if held:
            self._release(session.id)
            del self.holding[session.id]
        if session.state == "waiting":
            self._refuse(session, "left before the slice was ready")
        else:
            session.state = "gone" if held else session.state
        self.holds.release(session.id)
        work = self.scenario.training
        if held and self.policy.launch_on_departure and work is not None and self.backlog:
            day = math.floor((now - self.origin) / DAY_S) % 7
            if self.scenario.developers is None or day in self.scenario.developers.workdays:
                spec = next((spec for spec in self.backlog if spec.group == session.group), self.backlog[0])
                self.submit(
                    RunSpec(session.user, session.group, spec.gpus, spec.work_s, spec.time_limit_s), now
                )
        self._sample(now)
        self._request_pass(now)

    # -------------------------------------------------------------------------- jobs

    def submit(self, spec: RunSpec, now: float) -> Run:
        work = self.scenario.training
        trace = self.scenario.trace
        every = (work or trace).checkpoint_every_s if (work or trace) else None
        on_stop = (work or trace).checkpoint_on_stop if (work or trace) else False
        cpu = work.cpu_milli if work is not None else 0
        job = BatchJob(
            id=f"job-{len(self.runs) + 1:05d}",
            owner=spec.owner,
            group=spec.group,
            gpus=spec.gpus,
            priority=work.priority if work is not None else Priority.normal,
            submitted_at=now,
            time_limit_s=spec.time_limit_s,
            cpu_milli=cpu,
        )
        return self.submit_job(job, spec.work_s, every, on_stop)

    def submit_job(
        self,
        job: BatchJob,
        work_s: float,
        checkpoint_every_s: float | None = None,
        checkpoint_on_stop: bool = True,
    ) -> Run:
        """Queue ``job``, a run needing ``work_s`` seconds of GPU work."""
        run = Run(job, work_s, checkpoint_every_s, checkpoint_on_stop)
        self.runs[job.id] = self.queued[job.id] = run
        self.history.append(("submitted", job.submitted_at, job.id))
        self._request_pass(job.submitted_at)
        return run

    def _top_up(self, now: float) -> None:
        """A standing backlog: each group's queue refilled to ``backlog_per_group`` runs."""
        work = self.scenario.training
        if work is None or self.policy.launch_on_departure:
            return
        queued_by_group: dict[str | None, int] = {}
        for run in self.queued.values():
            queued_by_group[run.job.group] = queued_by_group.get(run.job.group, 0) + 1
        for spec in self.backlog:
            for _ in range(work.backlog_per_group - queued_by_group.get(spec.group, 0)):
                self.submit(spec, now)
            queued_by_group[spec.group] = work.backlog_per_group

    def _holding_jobs(self) -> list[RunningJob]:
        return [run.held for run in self.running.values()] + [run.held for run in self.stopping.values()]

    def _start(self, run: Run, placement: Placement, pool: str, borrowed: bool, now: float) -> None:
        del self.queued[run.job.id]
        run.attempts += 1
        run.state = "running"
        run.held = RunningJob(run.job, placement, now, borrowed, pool)
        run.first_started_at = now if run.first_started_at is None else run.first_started_at
        left = run.work_s - run.saved_s
        run.end_at = now + min(left, run.job.time_limit_s)
        self.running[run.job.id] = run
        self._grant(
            Lease(
                run.lease_id,
                run.job.id,
                run.job.owner,
                run.job.group,
                WorkloadClass.batch,
                run.job.request(pool),
                placement,
                now,
                preemptible=borrowed,
            )
        )
        self.history.append(("started", now, run.job.id, run.saved_s, pool, borrowed, placement.node))
        self._request_pass(run.end_at)

    def _progress(self, run: Run, now: float) -> float:
        return run.saved_s + max(0.0, now - run.held.started_at)

    def preempt(self, job_id: str, now: float, reason: str) -> None:
        """The stop signal (``JobService.preempt``): the run checkpoints for the grace period, then
        its GPUs come back and it is queued again from its last checkpoint."""
        run = self.running.pop(job_id)
        done = self._progress(run, now)
        ran = now - run.held.started_at
        if run.checkpoint_on_stop:
            saved = done
        elif run.checkpoint_every_s:
            saved = run.saved_s + math.floor(ran / run.checkpoint_every_s) * run.checkpoint_every_s
        else:
            saved = 0.0
        grace = self.timing.preemption_grace_s
        if now >= self.origin:
            self.lost_gpu_s += (done - saved + grace) * run.job.gpus
            self.preemptions += 1
        run.preemptions += 1
        run.saved_s = saved
        run.state, run.stop_at, run.end_at = "stopping", now + grace, math.inf
        self.stopping[job_id] = run
        self.history.append(("preempted", now, job_id, done, saved, reason))
        self._at(run.stop_at, _GRACE, job_id)

    def _stopped(self, job_id: str, now: float) -> None:
        run = self.stopping.pop(job_id)
        self.stopped_since_pass.append((run.held, now))
        self._release(run.lease_id)
        run.state, run.held, run.stop_at = "queued", None, math.inf
        self.queued[job_id] = run
        self.history.append(("requeued", now, job_id, run.saved_s))
        self._sample(now)
        self._request_pass(now)

    def _finish(self, run: Run, now: float) -> None:
        del self.running[run.job.id]
        self._release(run.lease_id)
        done = self._progress(run, min(now, run.end_at))
        run.state = "succeeded" if done >= run.work_s - 1e-6 else "failed"
        run.ended_at = run.end_at
        self.finished_since_pass.append((run.job.group, run.job.gpus, run.held.started_at, run.end_at))
        run.saved_s = min(done, run.work_s)
        self.ended[run.job.id] = run
        self.history.append((run.state, run.end_at, run.job.id))

    # -------------------------------------------------------------------------- pass

    def _skipped_ticks(self, now: float) -> None:
        """Advance the fair-share usage through every tick skipped since the last pass, as the
        service's passes there would have: the same jobs held GPUs all along (nothing starts
        between passes, and a job's end is seen at the pass of its tick), except preempted jobs,
        which stop holding when their grace period ends. So the usage, and the fair order it
        makes, is the one a pass on every tick computes."""
        if self.usage_at is None:
            return
        interval = self.timing.pass_interval_s
        tick = round(self.usage_at / interval) + 1
        last = round(now / interval)
        if tick >= last:
            return
        holding = [held for held in self._holding_jobs()]
        half_life = self.timing.usage_half_life_s
        while tick < last:
            at = tick * interval
            runs = [(held.job.group, held.job.gpus, held.started_at, None) for held in holding]
            runs += [
                (held.job.group, held.job.gpus, held.started_at, None)
                for held, stopped_at in self.stopped_since_pass
                if stopped_at > at
            ]
            self.usage = fair_share.advance(self.usage, runs, self.usage_at, at, half_life)
            self.usage_at = at
            tick += 1

    def nodes_for_batch(self, now: float) -> list[Node]:
        """The GPUs batch work may use now: no held GPU, and the dev pool only when lent."""
        hidden = self.holds.held_uuids(now)
        if self.policy.lend_dev_gpus == "night" and not any(
            start <= now <= end for start, end in self.windows
        ):
            hidden = hidden | self.dev_uuids
        elif self.policy.lend_dev_gpus == "never" and not self.policy.one_pool:
            hidden = hidden | self.dev_uuids
        hidden = frozenset(hidden)
        if self.batch_view is None or self.batch_view[0] != hidden:
            self.batch_view = (hidden, nodes_without(self.nodes, set(hidden)))
        return self.batch_view[1]

    def run_pass(self, now: float) -> Decision:
        """One pass, as ``BatchScheduler.schedule_once`` makes it."""
        self.passes += 1
        self.last_pass = now
        self._skipped_ticks(now)
        for run in [run for run in self.running.values() if run.end_at <= now]:
            self._finish(run, now)
        holding = self._holding_jobs()
        runs = [(held.job.group, held.job.gpus, held.started_at, None) for held in holding]
        self.usage = fair_share.advance(
            self.usage, runs + self.finished_since_pass, self.usage_at, now, self.timing.usage_half_life_s
        )
        self.usage_at = now
        self.finished_since_pass = []
        self.stopped_since_pass = []
        self._top_up(now)
        decision = self.scheduler.schedule(
            self.nodes_for_batch(now),
            holding,
            [run.job for run in self.queued.values()],
            self.shares,
            dict(self.usage),
            now,
            [session.placement for session in self.holding.values()],
            self.scenario.placement,
            set(self.stopping),
        )
        for start in decision.starts:
            run = self.runs[start.job.id]
            request = start.job.request(start.pool)
            usage = self._usage_of(start.job.owner, start.job.group)
            refusal = quota.check_batch_start(
                self.quotas,
                usage,
                start.job.owner,
                start.job.group,
                request,
                expected_gpu_hours=expected_gpu_hours(start.job),
            )
            if refusal is not None:
                continue  # the ledger refuses the grant: the job keeps its place
            self._start(run, start.placement, start.pool, start.borrowed, now)
        for preempt in decision.preemptions:
            if preempt.job_id in self.running:
                self.preempt(preempt.job_id, now, preempt.reason)
        if decision.starts or decision.preemptions:
            self._top_up(now)
            self._request_pass(now + self.timing.pass_interval_s)
        if self.every_pass:
            self._request_pass(now + self.timing.pass_interval_s)
        self._sample(now)
        return decision

    # -------------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """What must hold at every instant; raises :class:`InvariantError` naming what broke."""
        cluster = ClusterState(self.nodes)
        for lease in self.leases.values():
            try:
                cluster.allocate(lease.placement)
            except CapacityError as error:
                raise InvariantError(f"t={self.now}: lease {lease.id} over-allocates: {error}") from None
        usage = Usage.from_leases(self.leases.values())
        for group in self.scenario.groups:
            limits = self.quotas.for_group(group.name).batch
            held = usage.of_group(group.name)
            if limits.max_gpus is not None and held.batch_milli > limits.max_gpus * MILLI_PER_GPU:
                raise InvariantError(f"t={self.now}: group {group.name} holds {held.batch_gpus} batch GPUs")
            if limits.max_running_jobs is not None and held.batch_jobs > limits.max_running_jobs:
                raise InvariantError(f"t={self.now}: group {group.name} runs {held.batch_jobs} jobs")
        for user, held in usage.users.items():
            servers = self.quotas.for_user(user).interactive.max_servers
            if servers is not None and held.servers > servers:
                raise InvariantError(f"t={self.now}: user {user} holds {held.servers} servers")
        places = (self.queued, self.running, self.stopping, self.ended)
        seen: dict[str, str] = {}
        for place in places:
            for job_id, run in place.items():
                if job_id in seen:
                    raise InvariantError(f"t={self.now}: job {job_id} is both {seen[job_id]} and {run.state}")
                seen[job_id] = run.state
        if set(seen) != set(self.runs):
            raise InvariantError(f"t={self.now}: jobs unaccounted for: {sorted(set(self.runs) - set(seen))}")
        for place, states in zip(
            places, ({"queued"}, {"running"}, {"stopping"}, {"succeeded", "failed"}), strict=True
        ):
            for run in place.values():
                if run.state not in states:
                    raise InvariantError(f"t={self.now}: job {run.job.id} is {run.state} among {states}")
        expected = {s.id for s in self.sessions.values() if s.state == "holding"}
        if expected != set(self.holding):
            raise InvariantError(f"t={self.now}: sessions {sorted(expected ^ set(self.holding))} misfiled")
        expected |= {run.lease_id for run in (*self.running.values(), *self.stopping.values())}
        if expected != set(self.leases):
            raise InvariantError(f"t={self.now}: leases {sorted(set(self.leases) ^ expected)} held by nobody")

    # ----------------------------------------------------------------------- figures

    def _result(self) -> WeekResult:
        days = self.scenario.days
        origin = self.origin

        def measured(time: float | None) -> bool:
            return time is not None and origin < time <= self.end

        completed = [
            run for run in self.ended.values() if run.state == "succeeded" and measured(run.ended_at)
        ]
        waits = [
            run.first_started_at - run.job.submitted_at
            for run in self.runs.values()
            if measured(run.first_started_at)
        ]
        asked = [s for s in self.sessions.values() if s.asked_at is not None and s.asked_at >= origin]
        granted = [s for s in asked if s.granted_at is not None]
        refused = [s for s in asked if s.state == "refused"]
        slice_waits = [s.granted_at - s.asked_at for s in granted]
        cards_days = self.total_gpus * days
        figures = {
            "runs_per_week": len(completed) * 7 / days,
            "runs_completed": len(completed),
            "runs_failed": sum(
                1 for run in self.ended.values() if run.state == "failed" and measured(run.ended_at)
            ),
            "busy_hours_per_card_per_day": self.gpu_seconds["busy"] / 3600 / cards_days,
            "allocated_hours_per_card_per_day": self.gpu_seconds["allocated"] / 3600 / cards_days,
            "utilisation": self.gpu_seconds["busy"] / (self.total_gpus * self.scenario.duration_s),
            "allocated_gpu_hours": self.gpu_seconds["allocated"] / 3600,
            "busy_gpu_hours": self.gpu_seconds["busy"] / 3600,
            "training_gpu_hours": self.gpu_seconds["training"] / 3600,
            "interactive_gpu_hours": self.gpu_seconds["interactive"] / 3600,
            "mean_queue_wait_s": fmean(waits) if waits else 0.0,
            "p95_queue_wait_s": float(np.percentile(waits, 95)) if waits else 0.0,
            "interactive_requests": len(asked),
            "interactive_refused": len(refused),
            "interactive_delayed": sum(1 for wait in slice_waits if wait > 0),
            "max_interactive_wait_s": max(slice_waits, default=0.0),
            "preemptions": self.preemptions,
            "gpu_hours_lost_to_preemption": self.lost_gpu_s / 3600,
            "passes": self.passes,
        }
        pools = {DEV_POOL: len(self.dev_uuids), TRAIN_POOL: self.total_gpus - len(self.dev_uuids)}
        return WeekResult(
            self.scenario.name, self.policy.name, figures, self.timeline, self.history, self.passes, pools
        )


def replay_week(
    scenario: Scenario,
    policy: str,
    seed: int = 0,
    *,
    check_invariants: bool = False,
    every_pass: bool = False,
) -> WeekResult:
    return WeekReplay(scenario, policy, seed, check_invariants=check_invariants, every_pass=every_pass).run()


def compare(scenario: Scenario, policies: Iterable[str], seed: int = 0) -> dict[str, WeekResult]:
    """Every policy over the same scenario and seed, in one run."""
    return {name: replay_week(scenario, name, seed) for name in policies}


COUNTS = frozenset(
    {"interactive_refused", "interactive_requests", "interactive_delayed", "preemptions", "runs_completed"}
    | {"runs_failed", "passes"}
)
JSON_KEYS = (
    "runs_per_week",
    "busy_hours_per_card_per_day",
    "max_interactive_wait_s",
    "interactive_refused",
    "p95_queue_wait_s",
    "preemptions",
    "gpu_hours_lost_to_preemption",
)


def as_json(scenario: Scenario, results: dict[str, WeekResult]) -> dict:
    """The ``--json`` shape: the issue's keys first, then every other figure."""
    policies = {}
    for name, result in results.items():
        figures = {key: result.figures[key] for key in JSON_KEYS}
        figures.update({key: value for key, value in result.figures.items() if key not in figures})
        for key, value in figures.items():
            figures[key] = int(value) if key in COUNTS else float(value)
        policies[name] = figures
    return {"scenario": scenario.name, "policies": policies}
