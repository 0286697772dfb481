"""The batch scheduling loop: the live side of ``core.scheduler``.

Every ``interval_seconds`` one pass (under the job service's lock, so that a cancel never races a
start):

1. polls the executor for every running job, and finishes those that exited (succeeded or
   failed, with the exit code and "time limit reached" when the executor stopped them) or whose
   process vanished, giving back their leases;
2. builds the scheduler's view from the ledger: nodes, the live leases (interactive slices and
   anything not held by a running job just occupy their GPUs), running jobs with their
   placements, the queue, each group's guaranteed and borrowable GPUs, and each group's decayed
   GPU usage;
3. asks ``core.scheduler.schedule`` for a decision, the same code the simulator replays;
4. applies it: a lease on the chosen placement for every start, then the process; for every
   preemption a ``preempted`` record and the stop signal, while a background task waits out the
   grace period, gives the lease back and queues the job again (``JobService.preempt``), so a
   job checkpointing for 30 s holds up neither this pass nor the API;
5. keeps the waiting reasons and queue positions for ``GET jobs/{id}``, and writes each group's
   decayed usage to the ledger, where the next service (after a restart) reads it back.

A job being preempted still holds its GPUs until its process is gone: the pass counts it as
running and ``stopping``, so that nothing else is placed on its GPUs and nobody else is preempted
for the same need. Dev GPUs taken back for an interactive slice (:meth:`reclaim_for_interactive`)
stay reserved for that slice for a while after their borrower stopped, so that the next pass does
not lend them out again before the spawner's retry arrives.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from tornado.ioloop import PeriodicCallback
from traitlets import Float
from traitlets.config import LoggingConfigurable

from spawner.core import scheduler
from spawner.core.quota import QuotaPolicy
from spawner.core.scheduler import GroupShare, RunningJob, Start, describe_duration
from spawner.core.units import Lease, Node, SliceRequest, WorkloadClass
from spawner.ledger import LeaseConflictError, LedgerError
from spawner.ledger.jobs import JobRecord

from . import launches
from .executor.base import ExecutionState
from .jobs import TERMINAL_STATES, JobService, run_id
from .queue_view import QueueSnapshot

RESERVED_POOL = "reserved-for-interactive"
"""The pool a reclaimed dev GPU is in for the scheduler while it waits for its interactive slice:
no batch request asks for it, so no pass lends the GPU out again meanwhile."""

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
class GPUHoldings:
    """What holds which GPUs at one moment, as the pass and the interactive reclaim read it."""

    nodes: list[Node]
    leases: dict[str, Lease]
    """Every live lease by id."""
    running: list[JobRecord]
    preempted: list[JobRecord]
    stopping_records: list[JobRecord]
    """Jobs still holding GPUs while they stop: checkpointing for a preemption, or cancelled."""
    stopping: set[str]
    """Ids of those jobs, whose GPUs come back without anyone else being stopped."""


@dataclass(frozen=True)
class InteractiveHold:
    """Dev GPUs taken back for one interactive request, kept from batch jobs until ``until``."""

    gpu_uuids: tuple[str, ...]
    until: float
    """``time.monotonic()`` after which the GPUs may be lent to batch jobs again."""


@dataclass(frozen=True)
class Reclaiming:
    """What ``POST leases`` answers while batch jobs give back the dev GPUs a slice needs."""

    jobs: int
    gpus: list[str]
    retry_after_s: int
    ready_within_s: float

    def message(self) -> str:
        jobs = f"{self.jobs} batch job{'s' if self.jobs != 1 else ''}"
        gpus = f"dev GPU{'s' if len(self.gpus) != 1 else ''} {', '.join(self.gpus)}"
        return (
            f"stopping {jobs} that borrowed the {gpus} (a stop signal to checkpoint, then the end); "
            f"the slice is ready within ~{max(1, math.ceil(self.ready_within_s))} s: ask again then"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "status": 409,
            "reason": "reclaiming",
            "message": self.message(),
            "retry_after": self.retry_after_s,
            "stopping_jobs": self.jobs,
            "gpus": self.gpus,
        }


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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.usage: dict[str | None, float] = defaultdict(float)
        self._usage_at: float | None = None
        self._usage_loaded = False
        self._callback: PeriodicCallback | None = None
        self.held_for_interactive: dict[str, InteractiveHold] = {}
        """Dev GPUs reclaimed for an interactive slice, by the lease id the slice is asked under."""

    # ------------------------------------------------------------------------------- running

    async def poll_running(self, jobs: JobService, lost_reason: str = LOST) -> list[JobRecord]:
        """Finish every running job whose process exited or vanished; the jobs it finished."""
        finished = []
        for record in await jobs.call(jobs.store.running):
            status = await jobs.process_status(record)
            if status is not None and status.state is ExecutionState.running:
                continue
            if status is None or status.state is ExecutionState.lost:
                finished.append(await jobs.finish(record, "failed", lost_reason, exit_code=None))
                continue
            if status.timed_out:
                state = "failed"
                reason = f"time limit reached ({describe_duration(record.time_limit_s)})"
            elif status.exit_code == 0:
                state, reason = "succeeded", "the script exited with code 0"
            elif status.exit_code is not None and status.exit_code < 0:
                state, reason = "failed", f"the script was killed by signal {-status.exit_code}"
            else:
                state, reason = "failed", f"the script exited with code {status.exit_code}"
            finished.append(await jobs.finish(record, state, reason, exit_code=status.exit_code))
        return finished

    # ----------------------------------------------------------------------------- one pass

    async def _gpu_holdings(self, jobs: JobService) -> GPUHoldings:
        """The nodes, every live lease by id, and the jobs holding GPUs: the running ones and those
        stopping (checkpointing for a preemption, or cancelled and not yet gone); the pass and
        the interactive reclaim both start here."""
        ledger = jobs.ledger
        stops = jobs.stopping()
        nodes, leases, running_records, preempted_records, cancelling = await asyncio.gather(
            jobs.call(ledger.nodes),
            jobs.call(ledger.list_leases),
            jobs.call(jobs.store.running),
            jobs.call(jobs.store.list, states=["preempted"]),
            asyncio.gather(*(jobs.call(jobs.store.get, job_id) for job_id in list(jobs.cancellations))),
        )
        stopping_records = preempted_records + [
            record for record in cancelling if record is not None and record.state != "preempted"
        ]
        return GPUHoldings(
            nodes,
            {lease.id: lease for lease in leases},
            running_records,
            preempted_records,
            stopping_records,
            {record.id for record in stopping_records} | set(stops),
        )

    async def schedule_once(self, jobs: JobService, now: float | None = None) -> scheduler.Decision:
        """One whole pass; the caller holds ``jobs.lock``."""
        now = time.time() if now is None else now
        finished = await self.poll_running(jobs)
        await self._load_usage(jobs)
        holdings, queued_records = await asyncio.gather(
            self._gpu_holdings(jobs), jobs.call(jobs.store.queued)
        )
        nodes, by_id = holdings.nodes, holdings.leases
        for record in holdings.preempted:
            # After a restart (or a failed stop) nobody is finishing this preemption: resume it.
            if record.id not in jobs.preemptions:
                jobs.resume_preemption(record, self.preemption_grace_seconds)
        holding = holdings.running + holdings.stopping_records
        running = self._running_jobs(holding, by_id)
        stopping = holdings.stopping
        released = await self._release_orphans(jobs, by_id.values(), {record.id for record in holding})
        occupied = [lease.placement for lease in by_id.values() if lease.id not in released]
        self._decay_usage(running, finished, now)
        queue = [record.as_batch_job() for record in queued_records]
        shares = group_shares(jobs.allocator.profiles.quotas, [job.group for job in queue] + list(self.usage))
        decision = await asyncio.to_thread(
            scheduler.schedule,
            self._without_held_gpus(nodes),
            running,
            queue,
            shares,
            dict(self.usage),
            now,
            occupied,
            jobs.allocator.policy_name,
            stopping,
        )
        waiting = {job_id: place.reason for job_id, place in decision.waiting.items()}
        records = {record.id: record for record in queued_records}
        for start in decision.starts:
            refused = await self._start(jobs, records[start.job.id], start, now)
            if refused is not None:
                waiting[start.job.id] = refused  # it keeps its place in the pass's order
        for preempt in decision.preemptions:
            await jobs.preempt(preempt.job_id, preempt.reason, self.preemption_grace_seconds)
        jobs.queue = QueueSnapshot.of_pass(
            now, decision.order, waiting, {record.id: record.owner for record in queued_records}
        )
        jobs.metrics.observe_queue(
            (record.group, record.priority) for record in queued_records if record.id in waiting
        )
        jobs.metrics.observe_fair_share(self.usage)
        await self._save_usage(jobs, now)
        return decision

    @staticmethod
    def _running_jobs(records, leases_by_id: dict[str, Lease]) -> list[RunningJob]:
        """The scheduler's view of jobs holding GPUs; their leases are taken out of ``leases_by_id``."""
        running: list[RunningJob] = []
        for record in records:
            lease = leases_by_id.pop(record.lease_id, None) if record.lease_id else None
            if lease is None:
                continue
            running.append(
                RunningJob(
                    record.as_batch_job(),
                    lease.placement,
                    record.started_at or lease.created_at,
                    record.borrowed,
                    record.pool or scheduler.TRAIN_POOL,
                )
            )
        return running

    # ------------------------------------------------------------------- fair-share usage

    async def _load_usage(self, jobs: JobService) -> None:
        """The usage the last service saved, once, before the first pass decides anything."""
        if self._usage_loaded:
            return
        saved, updated_at = await jobs.call(jobs.ledger.fair_share_usage)
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

    async def _save_usage(self, jobs: JobService, now: float) -> None:
        try:
            await jobs.call(jobs.ledger.save_fair_share_usage, dict(self.usage), now)
        except LedgerError as error:
            self.log.warning("fair-share usage not saved this pass (%s); the next pass saves it", error)

    def _decay_usage(self, running: Sequence[RunningJob], finished: Sequence[JobRecord], now: float) -> None:
        """Decay every group's usage, and add what its jobs used since the last pass: those still
        holding GPUs, and those that ended in between (however short)."""
        since = now if self._usage_at is None else self._usage_at
        self._usage_at = now
        elapsed = now - since
        runs = [(job.job.group, job.job.gpus, job.started_at, None) for job in running]
        runs += [(record.group, record.gpus, record.started_at, record.ended_at) for record in finished]
        used = scheduler.gpu_seconds_between(runs, since, now)
        for group in set(self.usage) | set(used):
            rate = used.get(group, 0.0) / elapsed if elapsed > 0 else 0.0
            self.usage[group] = scheduler.decayed_usage(
                self.usage[group], rate, elapsed, self.usage_half_life_seconds
            )

    async def _release_orphans(
        self, jobs: JobService, leases: Iterable[Lease], holding_ids: set[str]
    ) -> set[str]:
        """Give back batch leases whose job no longer holds GPUs; the leases released now.

        A queued job's lease (the service died between a grant and the start; a run found alive
        was adopted at start-up) is released at once. An ended job's lease (the service died while
        a cancelled job stopped, or between a job's end and its release) may still have a process
        on its GPUs: that run is stopped first, in the background, and its lease released after,
        so the GPUs are never lent while something still runs on them.
        """
        released = set()
        for lease in leases:
            if lease.workload != WorkloadClass.batch or lease.holder in holding_ids:
                continue
            record = await jobs.call(jobs.store.get, lease.holder)
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

    async def _start(self, jobs: JobService, record, start: Start, now: float) -> str | None:
        """Grant the lease and start the process; the reason it could not, else None.

        The job is ``running`` only once the executor has started its process; a crash before
        that leaves it queued, and the next service undoes the start (see :mod:`.launches`).
        """
        job = start.job
        lease_id = run_id(record, record.attempts + 1)

        def grant():
            return jobs.call(
                jobs.allocator.ledger.grant,
                lease_id,
                job.id,
                job.owner,
                job.group,
                WorkloadClass.batch,
                job.request(start.pool),
                start.placement,
                jobs.allocator.profiles.quotas,
                preemptible=start.borrowed,
                now=now,
                expected_gpu_hours=scheduler.expected_gpu_hours(job),
            )

        try:
            try:
                result = await grant()
            except LeaseConflictError:
                # Its run id was granted before: a start a crash cut short that recovery did not
                # see (it failed), and whose lease a pass has released since. Adopt the run if it
                # has a process; else the start is undone, and its run id free for this grant.
                if await self._adopt(jobs, record):
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
                record.id, "failed", f"the job could not start: {error}", ended_at=time.time()
            )
            return None
        await jobs.transition(
            record.id,
            "running",
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

    # ------------------------------------------------------------ dev GPUs for interactive

    def _without_held_gpus(self, nodes: list[Node]) -> list[Node]:
        """``nodes`` with the GPUs held for interactive slices moved to a pool no job asks for."""
        self._forget_expired_holds()
        held = {uuid for hold in self.held_for_interactive.values() for uuid in hold.gpu_uuids}
        if not held:
            return nodes
        return [
            replace(
                node,
                gpus=tuple(
                    replace(gpu, pools=frozenset({RESERVED_POOL})) if gpu.uuid in held else gpu
                    for gpu in node.gpus
                ),
            )
            for node in nodes
        ]

    def _forget_expired_holds(self) -> None:
        now = time.monotonic()
        for lease_id in [key for key, hold in self.held_for_interactive.items() if hold.until <= now]:
            del self.held_for_interactive[lease_id]

    def interactive_granted(self, lease_id: str) -> None:
        """The slice asked for under ``lease_id`` got its lease: its reclaimed GPUs are its own now."""
        self.held_for_interactive.pop(lease_id, None)

    async def reclaim_for_interactive(
        self, jobs: JobService, lease_id: str, slice_request: SliceRequest
    ) -> Reclaiming | None:
        """Take dev GPUs back from the batch jobs borrowing them so ``slice_request`` fits.

        Called when an interactive slice found no capacity. ``core.scheduler.reclaim_for_interactive``
        decides which jobs must go (counting those already stopping first, so a retry of the same
        request never stops another job); they are preempted here, their GPUs held for this
        request, and the answer says how long the caller should wait. None when stopping batch jobs
        would not make room, so the slice is refused as usual.
        """
        async with jobs.lock:
            holdings = await self._gpu_holdings(jobs)
            nodes, by_id, stopping = holdings.nodes, holdings.leases, holdings.stopping
            running = self._running_jobs(holdings.running + holdings.stopping_records, by_id)
            victims = await asyncio.to_thread(
                scheduler.reclaim_for_interactive,
                nodes,
                [lease.placement for lease in by_id.values()],
                running,
                slice_request,
                jobs.allocator.policy_name,
                stopping,
            )
            if not victims:
                return None
            gpu_names = {gpu.uuid: f"{node.name}:{gpu.index}" for node in nodes for gpu in node.gpus}
            uuids = tuple(dict.fromkeys(uuid for victim in victims for uuid in victim.placement.gpu_uuids))
            names = [gpu_names.get(uuid, uuid) for uuid in uuids]
            for victim in victims:
                if victim.job.id not in stopping:
                    await jobs.preempt(
                        victim.job.id,
                        f"an interactive slice needs the dev GPU {', '.join(names)} it borrowed",
                        self.preemption_grace_seconds,
                    )
            stops = jobs.stopping()
            left = max(
                (stops[victim.job.id].seconds_left() for victim in victims if victim.job.id in stops),
                default=0.0,
            )
            self.held_for_interactive[lease_id] = InteractiveHold(
                uuids, time.monotonic() + left + self.interactive_hold_seconds
            )
        return Reclaiming(
            jobs=len(victims), gpus=names, retry_after_s=min(max(1, math.ceil(left)), 10), ready_within_s=left
        )

    # -------------------------------------------------------------------------------- timing

    async def recover(self, jobs: JobService) -> None:
        """At service start: keep the jobs whose processes still run, finish the others, adopt
        the runs a crash left started but not yet recorded as running, and put back in the queue
        the jobs whose start it cut short before any process ran (see :mod:`.launches`)."""
        async with jobs.lock:
            for record in await jobs.call(jobs.store.queued):
                try:
                    await self._adopt(jobs, record)
                except Exception:
                    # One job's trouble holds up no other's; the pass tries its start again.
                    self.log.exception("job %s: recovering its start failed", record.id)
            await self.poll_running(jobs, lost_reason=LOST_IN_RESTART)

    async def _adopt(self, jobs: JobService, record) -> bool:
        """Make a queued job ``running`` if its next run has a process (started before a crash);
        undo a start that never got so far. Whether the job was adopted."""
        lease_id = run_id(record, record.attempts + 1)
        if not await launches.run_was_started(jobs, record, lease_id):
            return False  # the usual case: the job never got as far as its process
        held = await jobs.call(jobs.ledger.record, lease_id)
        placement = held.lease.placement if held is not None else None
        record = await jobs.transition(
            record.id,
            "running",
            "its process was found running after the service restarted",
            lease_id=lease_id,
            node=placement.node if placement else None,
            gpu_uuids=list(placement.gpu_uuids) if placement else [],
            pool=held.lease.request.pool if held else None,
            borrowed=held.lease.preemptible if held else False,
        )
        if held is None or not held.live:
            await jobs.executor.stop(lease_id, 0)
            await jobs.finish(record, "failed", f"{LOST_IN_RESTART} (its lease was gone)", exit_code=None)
        self.log.info("job %s: adopted run %s after a restart", record.id, lease_id)
        return True

    def start(self, jobs: JobService) -> asyncio.Task:
        """Recover, then run a pass now and every ``interval_seconds``; failures are logged."""

        async def tick() -> None:
            try:
                async with jobs.lock:
                    await self.schedule_once(jobs)
            except Exception:
                self.log.exception(
                    "the batch scheduling pass failed; trying again in %ss", self.interval_seconds
                )

        async def begin() -> None:
            try:
                await self.recover(jobs)
            except Exception:
                self.log.exception("recovering the running jobs failed; the next pass polls them again")
            if self.interval_seconds > 0:
                self._callback = PeriodicCallback(tick, self.interval_seconds * 1000)
                self._callback.start()
                await tick()

        return asyncio.get_running_loop().create_task(begin())

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
