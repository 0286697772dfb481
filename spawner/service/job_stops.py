"""Stopping jobs' runs: preemptions and cancellations under way, each waited out in the background.

A stopped job keeps its lease until its process is gone, so that its GPUs are never lent while
something still runs on them; neither the scheduling pass nor an HTTP request waits for the grace
period. :class:`JobStops` is the part of :class:`~.jobs.JobService` that does this.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from spawner.core.vocabulary import JobState
from spawner.ledger.jobs import JobRecord

from .executor.base import ExecutionState, UnknownJob
from .runs import Stopping, run_id

if TYPE_CHECKING:
    from .executor.base import Executor


class JobStops:
    """Preemptions and cancellations under way, for the job service that it is part of.

    The job service provides what a stop needs: ``executor``, ``lock``, ``log``, ``get``,
    ``transition`` (a state change, seen by the metrics) and ``release`` (a lease given back
    through the allocator), and the two registries :attr:`preemptions` and :attr:`cancellations`.
    """

    executor: Executor
    lock: asyncio.Lock
    preemptions: dict[str, Stopping]
    """Preemptions under way (stop signal sent, process not yet gone), by job id."""
    cancellations: dict[str, Stopping]
    """Cancelled jobs whose process is still stopping (their lease not yet given back), by job id."""

    def stop_in_background(self, record: JobRecord, grace_s: float) -> Stopping:
        """Stop the latest run of a job that has ended (it was cancelled, or the service restarted
        while it stopped) and then give its lease back; the job's state is not touched.

        If the process outlives its kill, the lease is kept and the next scheduling pass tries
        again (:meth:`BatchScheduler._release_orphans`).
        """
        running = self.cancellations.get(record.id)
        if running is not None:
            return running
        stopping = Stopping(record.id, time.monotonic(), grace_s)
        self.cancellations[record.id] = stopping

        async def stop() -> None:
            try:
                # A run's executor job and its lease share one id (see run_id).
                run = record.lease_id or run_id(record) or ""
                if await self._stop_run(run, record.id, grace_s) and record.lease_id:
                    await self.release(record.lease_id)
                    self.log.info("job %s: its process is gone; lease %s given back", record.id, run)
            except Exception:
                self.log.exception("job %s: stopping its process failed; the next pass retries", record.id)
            finally:
                self.cancellations.pop(record.id, None)

        stopping.task = asyncio.get_running_loop().create_task(stop())
        return stopping

    def stopping(self) -> dict[str, Stopping]:
        """Every stop under way, preemptions and cancellations, by job id."""
        return {**self.cancellations, **self.preemptions}

    def seconds_left(self, job_ids: Iterable[str]) -> float:
        """How long the slowest of these jobs may still take to stop (0 for those not stopping)."""
        stops = self.stopping()
        return max((stops[job_id].seconds_left() for job_id in job_ids if job_id in stops), default=0.0)

    async def preempt(self, job_id: str, reason: str, grace_s: float) -> bool:
        """Send a running job that must yield its GPUs its stop signal, and return at once.

        The job is ``preempted`` from now on (the API shows it checkpointing) and keeps its lease,
        so nothing else is placed on its GPUs while it writes its checkpoint; a background task
        waits up to ``grace_s`` for the process to exit (then kills it), gives the lease back and
        puts the job back in the queue. Neither the scheduling pass nor an HTTP request waits for
        the grace period. Whether this call started a preemption (False: the job is not running,
        or its preemption is already under way). The caller holds :attr:`lock`, as for every
        change of a job's state; the background task takes it for its own.
        """
        if job_id in self.preemptions:
            return False
        record = await self.get(job_id)
        if record is None or record.state != JobState.running:
            return False
        record = await self.transition(record.id, JobState.preempted, reason)
        self.log.info("job %s of %s preempted (grace %gs): %s", record.id, record.owner, grace_s, reason)
        self.resume_preemption(record, grace_s)
        return True

    def resume_preemption(self, record: JobRecord, grace_s: float) -> Stopping:
        """Finish the preemption of a ``preempted`` job in the background (after a restart too)."""
        running = self.preemptions.get(record.id)
        if running is not None:
            return running
        preemption = Stopping(record.id, time.monotonic(), grace_s)
        self.preemptions[record.id] = preemption
        preemption.task = asyncio.get_running_loop().create_task(self._finish_preemption(record, grace_s))
        return preemption

    async def _finish_preemption(self, record: JobRecord, grace_s: float) -> None:
        """Wait for the process to go, then release its lease and queue the job again (unless it
        was cancelled meanwhile).

        If the process cannot be stopped (the executor failed, or it outlived the kill), the job
        stays ``preempted`` with its lease, and the next scheduling pass tries again.
        """
        try:
            if not await self._stop_run(run_id(record) or "", record.id, grace_s):
                return
            async with self.lock:
                if record.lease_id:
                    await self.release(record.lease_id)
                current = await self.get(record.id)
                if current is None or current.state != JobState.preempted:
                    # cancelled while it checkpointed: it stays so, and its GPUs are free now
                    self.log.info("job %s stopped after its preemption, and stays cancelled", record.id)
                    return
                await self.transition(record.id, JobState.queued, "back in the queue after preemption")
            self.log.info("job %s stopped after its preemption; back in the queue", record.id)
        except Exception:
            self.log.exception(
                "job %s: finishing its preemption failed; the next pass tries again", record.id
            )
        finally:
            self.preemptions.pop(record.id, None)

    async def _stop_run(self, run: str, job_id: str, grace_s: float) -> bool:
        """SIGTERM, up to ``grace_s`` to checkpoint, then SIGKILL; whether the process is gone."""
        try:
            status = await self.executor.stop(run, grace_s)
        except (UnknownJob, ValueError):
            return True  # its process never started, so there is nothing to stop
        if status.state is ExecutionState.running:
            self.log.warning("job %s still runs after its stop; the next pass tries again", job_id)
            return False
        return True
