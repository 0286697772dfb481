"""The batch scheduling loop: the live side of ``core.scheduler``.

:class:`BatchScheduler` is built with its collaborators: the job service (the store's jobs, their
state changes and stops), the allocator (every grant, the nodes batch work may use), and the
executor. Every ``interval_seconds`` one pass (under the job service's lock, so that a cancel never
races a start):

1. polls the executor for every running job, and finishes those that exited (succeeded or
   failed, with the exit code and "time limit reached" when the executor stopped them) or whose
   process vanished, giving back their leases. An executor with a watch (:meth:`Executor.run_ends`,
   the Kubernetes Jobs') reports ends as they happen: a pass runs at once and polls, and between
   reports the running jobs are polled only every ``resync_seconds``, in case the watch missed one;
2. builds the scheduler's view: the nodes batch work may use (the allocator moves the dev GPUs it
   holds for interactive slices out of the pools), the live leases (interactive slices and
   anything not held by a running job just occupy their GPUs), running jobs with their
   placements, the queue, each group's guaranteed and borrowable GPUs, and each group's decayed
   GPU usage;
3. asks ``core.scheduler.schedule`` for a decision (through ``core.incremental``, which keeps the
   sorted queue between passes and decides exactly as it does), the same code the simulator replays;
4. applies it: the allocator grants a lease on the chosen placement for every start, then the
   process starts; for every preemption a ``preempted`` record and the stop signal, while a
   background task waits out the grace period, gives the lease back and queues the job again
   (``JobService.preempt``), so a job checkpointing for 30 s holds up neither this pass nor the API;
5. returns what it decided (:class:`PassResult`: starts, preemptions, finished jobs, and the
   waiting jobs' places and reasons as a :class:`QueueSnapshot`), which the loop publishes where
   ``GET jobs/{id}`` reads it, and writes each group's decayed usage to the ledger (through the
   allocator), where the next service (after a restart) reads it back.

A job being preempted still holds its GPUs until its process is gone: the pass counts it as
running and ``stopping``, so that nothing else is placed on its GPUs and nobody else is preempted
for the same need. The scheduler is also the allocator's :class:`~.allocator.Borrowers`: when an
interactive slice needs dev GPUs that batch jobs borrowed, the allocator decides which jobs go and
the scheduler preempts them.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from tornado.ioloop import PeriodicCallback
from traitlets import Float
from traitlets.config import LoggingConfigurable

from spawner.core import fair_share, scheduler
from spawner.core.incremental import IncrementalScheduler
from spawner.core.quota import QuotaPolicy
from spawner.core.scheduler import GroupShare, RunningJob, Start, describe_duration
from spawner.core.units import Lease, WorkloadClass
from spawner.core.vocabulary import TERMINAL_STATES, JobState
from spawner.ledger import LeaseConflictError, LedgerError
from spawner.ledger.jobs import JobRecord

from . import launches
from .allocator import Allocator
from .executor.base import ExecutionState, Executor
from .holdings import running_jobs
from .jobs import JobService
from .queue_view import QueueSnapshot
from .runs import run_id

LOST = "the job's process vanished"
LOST_IN_RESTART = "lost when the service restarted"


def group_shares(policy: QuotaPolicy, groups: Sequence[str | None]) -> dict[str | None, GroupShare]:
    """Each group's batch guarantee and borrowing limit, as the scheduler weighs them."""
    shares: dict[str | None, GroupShare] = {}
    for group in set(groups):
        if group is None:
            shares[None] = GroupShare()
            continue
        batch = policy.for_group(group).batch
        shares[group] = GroupShare(batch.guaranteed_gpus, batch.borrowing_limit_gpus)
    return shares


@dataclass(frozen=True)
class PassResult:
    """What one scheduling pass decided and did."""

    decision: scheduler.Decision
    started: tuple[str, ...]
    """Jobs whose process started in this pass."""
    preempted: tuple[str, ...]
    """Jobs whose preemption this pass began."""
    finished: tuple[JobRecord, ...]
    """Jobs that ended since the last pass (exited, timed out, or lost)."""
    queue: QueueSnapshot
    """The jobs the pass left waiting, in its order, with their reasons."""
    waiting: tuple[scheduler.BatchJob, ...]
    """The jobs themselves, as the scheduler saw them."""
    usage: dict[str | None, float]
    """Each group's decayed GPU-seconds, as the pass weighed them."""


class BatchScheduler(LoggingConfigurable):
    """Starts queued jobs where ``core.scheduler`` says, and finishes the ones that end."""

    interval_seconds = Float(
        2.0,
        help="How often (seconds) the queue is scheduled and running jobs are polled; 0 turns it off.",
    ).tag(config=True)

    preemption_grace_seconds = Float(
        30.0,
        help="""
        Seconds a preempted job has between its stop signal (SIGTERM: checkpoint now) and being
        killed; it then goes back to the queue.
        """,
    ).tag(config=True)

    usage_half_life_seconds = Float(
        7 * 86400.0,
        help="""
        Half-life of the GPU usage that fair share weighs between groups: a group's GPU-seconds
        count half as much after this long. Saved in the ledger after every pass (one row per
        group), so a restarted service carries on from where the last one stopped.
        """,
    ).tag(config=True)

    interactive_hold_seconds = Float(
        60.0,
        help="""
        Seconds a dev GPU taken back from batch jobs for an interactive slice stays reserved for
        that slice once its borrowers are gone (on top of their grace period), waiting for the
        spawner to ask again. After that, idle, it may be lent to batch jobs again.
        """,
    ).tag(config=True)

    resync_seconds = Float(
        300.0,
        help="""
        With an executor that reports run ends from a watch (the Kubernetes Job executor), how
        often (seconds) every running job is still polled, in case the watch missed an end. Each
        reported end starts a pass that polls at once; while the watch is broken every pass polls.
        Executors without a watch are polled at every pass.
        """,
    ).tag(config=True)

    watch_retry_seconds = Float(
        5.0, help="Seconds before a broken watch of run ends (see resync_seconds) is opened again."
    ).tag(config=True)

    def __init__(self, jobs: JobService, allocator: Allocator, executor: Executor, **kwargs):
        super().__init__(**kwargs)
        self.jobs = jobs
        self.allocator = allocator
        self.executor = executor
        self.usage: dict[str | None, float] = defaultdict(float)
        self._usage_at: float | None = None
        self._usage_loaded = False
        self._callback: PeriodicCallback | None = None
        self._watching = False  # the executor's watch of run ends is open
        self._end_reported = False  # it reported an end no pass has polled for yet
        self._polled_at = float("-inf")
        self._pass_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        # The sorted queue and the cluster's capacity, kept from pass to pass: a pass costs what
        # changed since the last one, and decides exactly as core.scheduler.schedule would.
        self.incremental = IncrementalScheduler()

    # ------------------------------------------------------------------------------- running

    async def poll_running(self, lost_reason: str = LOST) -> list[JobRecord]:
        """Finish every running job whose process exited or vanished; the jobs it finished."""
        jobs = self.jobs
        finished = []
        for record in await jobs.running():
            status = await jobs.process_status(record)
            if status is not None and status.state is ExecutionState.running:
                continue
            if status is None or status.state is ExecutionState.lost:
                finished.append(await jobs.finish(record, JobState.failed, lost_reason, exit_code=None))
                continue
            if status.timed_out:
                state = JobState.failed
                reason = f"time limit reached ({describe_duration(record.time_limit_s)})"
            elif status.exit_code == 0:
                state, reason = JobState.succeeded, "the script exited with code 0"
            elif status.exit_code is not None and status.exit_code < 0:
                state, reason = JobState.failed, f"the script was killed by signal {-status.exit_code}"
            else:
                state, reason = JobState.failed, f"the script exited with code {status.exit_code}"
            finished.append(await jobs.finish(record, state, reason, exit_code=status.exit_code))
        return finished

    # ----------------------------------------------------------------------------- one pass

    async def schedule_once(self, now: float | None = None) -> PassResult:
        """One whole pass, and what it decided; the caller holds ``jobs.lock`` and publishes the
        result (:meth:`JobService.publish`)."""
        jobs = self.jobs
        now = time.time() if now is None else now
        finished = await self.poll_running() if self._poll_due() else []
        await self._load_usage()
        # The queue as the scheduler weighs it, without payloads: a busy day queues thousands of
        # jobs, and only those this pass starts are read whole (see _start).
        (nodes, leases), holding, queue = await asyncio.gather(
            self.allocator.holdings(), jobs.holding_jobs(), jobs.queue_view()
        )
        by_id = {lease.id: lease for lease in leases}
        for record in holding.preempted:
            # After a restart (or a failed stop) nobody is finishing this preemption: resume it.
            if record.id not in jobs.preemptions:
                jobs.resume_preemption(record, self.preemption_grace_seconds)
        running = running_jobs(holding.holding, by_id)
        released = await self._release_orphans(by_id.values(), {record.id for record in holding.holding})
        occupied = [lease.placement for lease in by_id.values() if lease.id not in released]
        self._decay_usage(running, finished, now)
        shares = group_shares(self.allocator.quotas, [job.group for job in queue] + list(self.usage))
        decision = await asyncio.to_thread(
            self.incremental.schedule,
            self.allocator.nodes_for_batch(nodes),
            running,
            queue,
            shares,
            dict(self.usage),
            now,
            occupied,
            self.allocator.policy_name,
            holding.stopping,
        )
        waiting = {job_id: place.reason for job_id, place in decision.waiting.items()}
        started = []
        for start in decision.starts:
            record = await jobs.get(start.job.id)
            if record is None or record.state != JobState.queued:
                continue  # the pass holds the lock: only a hand-edited ledger gets here
            refused = await self._start(record, start, now)
            if refused is not None:
                waiting[start.job.id] = refused  # it keeps its place in the pass's order
            else:
                started.append(start.job.id)
        preempted = []
        for preempt in decision.preemptions:
            if await jobs.preempt(preempt.job_id, preempt.reason, self.preemption_grace_seconds):
                preempted.append(preempt.job_id)
        snapshot = QueueSnapshot.of_pass(now, decision.order, waiting, {job.id: job.owner for job in queue})
        await self._save_usage(now)
        return PassResult(
            decision,
            tuple(started),
            tuple(preempted),
            tuple(finished),
            snapshot,
            tuple(job for job in queue if job.id in waiting),
            dict(self.usage),
        )

    # ------------------------------------------------------------------- fair-share usage

    async def _load_usage(self) -> None:
        """The usage the last service saved, once, before the first pass decides anything."""
        if self._usage_loaded:
            return
        saved, updated_at = await self.allocator.fair_share_usage()
        for group, gpu_seconds in saved.items():
            self.usage[group] = gpu_seconds
        self._usage_at = updated_at
        self._usage_loaded = True
        if saved:
            self.log.info(
                "fair-share usage of %d group(s) read back from the ledger: %s",
                len(saved),
                ", ".join(f"{group or '(none)'}={seconds:.0f} GPU-s" for group, seconds in saved.items()),
            )

    async def _save_usage(self, now: float) -> None:
        try:
            await self.allocator.save_fair_share_usage(self.usage, now)
        except LedgerError as error:
            self.log.warning("fair-share usage not saved this pass (%s); the next pass saves it", error)

    def _decay_usage(self, running: Sequence[RunningJob], finished: Sequence[JobRecord], now: float) -> None:
        """Decay every group's usage, and add what its jobs used since the last pass: those still
        holding GPUs, and those that ended in between (however short)."""
        runs = [(job.job.group, job.job.gpus, job.started_at, None) for job in running]
        runs += [(record.group, record.gpus, record.started_at, record.ended_at) for record in finished]
        half_life = self.usage_half_life_seconds
        self.usage.update(fair_share.advance(self.usage, runs, self._usage_at, now, half_life))
        self._usage_at = now

    async def _release_orphans(self, leases: Iterable[Lease], holding_ids: set[str]) -> set[str]:
        """Give back batch leases whose job no longer holds GPUs; the leases released now.

        A queued job's lease (the service died between a grant and the start; a run found alive
        was adopted at start-up) is released at once. An ended job's lease (the service died while
        a cancelled job stopped, or between a job's end and its release) may still have a process
        on its GPUs: that run is stopped first, in the background, and its lease released after,
        so the GPUs are never lent while something still runs on them.
        """
        jobs = self.jobs
        released = set()
        for lease in leases:
            if lease.workload != WorkloadClass.batch or lease.holder in holding_ids:
                continue
            record = await jobs.get(lease.holder)
            if record is None:
                continue
            if record.state in TERMINAL_STATES:
                jobs.stop_in_background(replace(record, lease_id=lease.id), jobs.cancel_grace_seconds)
                self.log.info("job %s %s: stopping run %s, then releasing", record.id, record.state, lease.id)
                continue
            await jobs.release(lease.id)
            released.add(lease.id)
            self.log.info("released lease %s: job %s is not running", lease.id, lease.holder)
        return released

    async def _start(self, record: JobRecord, start: Start, now: float) -> str | None:
        """Have the allocator grant the lease, and start the process; the reason it could not, else None.

        The job is ``running`` only once the executor has started its process; a crash before
        that leaves it queued, and the next service undoes the start (see :mod:`.launches`).
        """
        jobs = self.jobs
        job = start.job
        lease_id = run_id(record, record.attempts + 1)

        def grant():
            return self.allocator.grant_batch(
                lease_id, job, start.pool, start.placement, preemptible=start.borrowed, now=now
            )

        try:
            try:
                result = await grant()
            except LeaseConflictError:
                # Its run id was granted before: a start a crash cut short that recovery did not
                # see (it failed), and whose lease a pass has released since. Adopt the run if it
                # has a process; else the start is undone, and its run id free for this grant.
                if await self._adopt(record):
                    return None
                result = await grant()
        except LeaseConflictError as error:
            self.log.warning("job %s: %s", job.id, error)
            return f"its lease {lease_id} could not be granted ({error})"
        except LedgerError as error:
            return f"the ledger is busy ({error}); trying again"
        if not result.granted:
            return result.reason
        lease = result.lease
        try:
            await jobs.launch(record, lease)
        except Exception as error:
            self.log.exception("job %s could not start", job.id)
            await jobs.release(lease.id)
            await jobs.transition(
                record.id, JobState.failed, f"the job could not start: {error}", ended_at=time.time()
            )
            return None
        await jobs.transition(
            record.id,
            JobState.running,
            f"started on node {lease.placement.node}"
            + (f" ({start.pool} pool, borrowed GPUs: preemptible)" if start.borrowed else ""),
            started_at=time.time(),
            lease_id=lease.id,
            node=lease.placement.node,
            gpu_uuids=list(lease.placement.gpu_uuids),
            pool=start.pool,
            borrowed=start.borrowed,
        )
        self.log.info("job %s of %s started on %s %s", job.id, job.owner, lease.placement.node, lease_id)
        return None

    # ------------------------------------------- the allocator's Borrowers (dev GPUs lent)

    @property
    def lock(self) -> asyncio.Lock:
        return self.jobs.lock

    async def batch_holdings(self, leases_by_id: dict[str, Lease]) -> tuple[list[RunningJob], set[str]]:
        """The jobs holding GPUs as the scheduler sees them (their leases taken out of
        ``leases_by_id``), and the ids of those already stopping."""
        holding = await self.jobs.holding_jobs()
        return running_jobs(holding.holding, leases_by_id), holding.stopping

    async def preempt(self, job_id: str, reason: str) -> None:
        """Preempt a job that borrowed a dev GPU an interactive slice needs (grace as for any)."""
        await self.jobs.preempt(job_id, reason, self.preemption_grace_seconds)

    def seconds_left(self, job_ids: Iterable[str]) -> float:
        return self.jobs.seconds_left(job_ids)

    # -------------------------------------------------------------------------------- timing

    async def recover(self) -> None:
        """At service start: keep the jobs whose processes still run, finish the others, adopt
        the runs a crash left started but not yet recorded as running, and put back in the queue
        the jobs whose start it cut short before any process ran (see :mod:`.launches`)."""
        async with self.jobs.lock:
            for record in await self.jobs.queued():
                try:
                    await self._adopt(record)
                except Exception:
                    # One job's trouble holds up no other's; the pass tries its start again.
                    self.log.exception("job %s: recovering its start failed", record.id)
            await self.poll_running(lost_reason=LOST_IN_RESTART)
            self._polled_at = time.monotonic()

    async def _adopt(self, record: JobRecord) -> bool:
        """Make a queued job ``running`` if its next run has a process (started before a crash);
        undo a start that never got so far. Whether the job was adopted."""
        jobs = self.jobs
        lease_id = run_id(record, record.attempts + 1)
        if not await launches.run_was_started(jobs, self.executor, record, lease_id):
            return False  # the usual case: the job never got as far as its process
        held = await self.allocator.record(lease_id)
        placement = held.lease.placement if held is not None else None
        record = await jobs.transition(
            record.id,
            JobState.running,
            "its process was found running after the service restarted",
            lease_id=lease_id,
            node=placement.node if placement else None,
            gpu_uuids=list(placement.gpu_uuids) if placement else [],
            pool=held.lease.request.pool if held else None,
            borrowed=held.lease.preemptible if held else False,
        )
        if held is None or not held.live:
            await self.executor.stop(lease_id, 0)
            await jobs.finish(
                record, JobState.failed, f"{LOST_IN_RESTART} (its lease was gone)", exit_code=None
            )
        self.log.info("job %s: adopted run %s after a restart", record.id, lease_id)
        return True

    def _poll_due(self) -> bool:
        """Whether this pass polls the running jobs: always without a watch of run ends; with
        one, when it reported an end, or when ``resync_seconds`` have passed since the last poll."""
        clock = time.monotonic()
        if self._watching and not self._end_reported and clock - self._polled_at < self.resync_seconds:
            return False
        self._end_reported = False
        self._polled_at = clock
        return True

    async def follow_run_ends(self) -> None:
        """Ask for a pass whenever the executor's watch reports an end; reopen a broken watch
        after ``watch_retry_seconds``, polling at every pass meanwhile (ends may be missed)."""
        while True:
            ends = self.executor.run_ends()
            if ends is None:
                return
            try:
                self._watching = True
                async for run in ends:
                    self.log.debug("run %s ended (reported by the executor's watch)", run)
                    self._end_reported = True
                    self._pass_wanted.set()
                raise ConnectionError("the watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._watching = False
                self.log.warning(
                    "the executor's watch of run ends broke (%s); polling every running job at each "
                    "pass until it is reopened in %ss",
                    error,
                    self.watch_retry_seconds,
                )
            await asyncio.sleep(self.watch_retry_seconds)

    async def pass_and_publish(self) -> PassResult:
        """One pass under the job service's lock, its result published where the API reads it."""
        async with self.jobs.lock:
            result = await self.schedule_once()
            self.jobs.publish(result.queue, result.waiting, result.usage)
        return result

    def start(self) -> asyncio.Task:
        """Recover, then run a pass now and every ``interval_seconds``; failures are logged."""

        async def tick() -> None:
            try:
                await self.pass_and_publish()
            except Exception:
                self.log.exception(
                    "the batch scheduling pass failed; trying again in %ss", self.interval_seconds
                )

        async def on_request() -> None:
            while True:
                await self._pass_wanted.wait()
                self._pass_wanted.clear()
                await tick()

        async def begin() -> None:
            try:
                await self.recover()
            except Exception:
                self.log.exception("recovering the running jobs failed; the next pass polls them again")
            if self.interval_seconds > 0:
                loop = asyncio.get_running_loop()
                self._tasks = [loop.create_task(self.follow_run_ends()), loop.create_task(on_request())]
                self._callback = PeriodicCallback(tick, self.interval_seconds * 1000)
                self._callback.start()
                await tick()

        return asyncio.get_running_loop().create_task(begin())

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
        for task in self._tasks:
            task.cancel()
