"""Removing the checkpoints of jobs that ended a while ago.

Every job's ``$GPUSLICE_CHECKPOINT_DIR`` is ``<its files directory>/checkpoint`` (see
:func:`spawner.service.executor.base.execution_environment`): kept across the job's runs, so that
a run after a preemption resumes where the last one saved. Once the job has ended for good its
checkpoint is of use only to someone who wants to look at it, or to start a new job from it by
hand, so it is kept for ``retention_seconds`` after the job ended and then removed; a training
checkpoint can be many gigabytes.

The directory may be the job's owner's (jobs run as their owners), so it is removed through
:func:`spawner.service.job_files.remove` by descriptor, never following a link the job left there.
The job's results (values, summary) stay: only the checkpoint goes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from tornado.ioloop import PeriodicCallback
from traitlets import Float
from traitlets.config import LoggingConfigurable

from spawner.core.vocabulary import TERMINAL_STATES

from . import job_files
from .executor.base import CHECKPOINT_DIR
from .job_files import UntrustedFile
from .jobs import JobService


class CheckpointRetention(LoggingConfigurable):
    """Removes the checkpoint directories of jobs that ended more than ``retention_seconds`` ago."""

    retention_seconds = Float(
        7 * 24 * 3600.0,
        help="""How long a job's checkpoint directory is kept after the job has ended (seconds).

        While a job is queued, running or preempted its checkpoint is always kept: a preempted
        job resumes from it. Afterwards it is kept this long (a week by default) for its owner to
        look at or start again from, then removed. 0 removes it at the first sweep after the end.
        """,
    ).tag(config=True)

    interval_seconds = Float(
        3600.0,
        help="How often the service looks for checkpoints past their retention time (seconds).",
    ).tag(config=True)

    def expired(self, ended: Iterable[tuple[str, str, float | None]], now: float) -> list[str]:
        """The ids among ``ended`` (job id, state, ended at) whose checkpoints are past retention."""
        return [
            job_id
            for job_id, state, ended_at in ended
            if state in TERMINAL_STATES and ended_at is not None and ended_at + self.retention_seconds <= now
        ]

    def remove(self, folders: dict[str, Path]) -> list[str]:
        """Remove ``<files>/checkpoint`` of each job in ``folders`` (job id -> files directory) by
        descriptor; the ids whose checkpoint was removed. Blocking: call in a thread, once per
        sweep (thousands of ended jobs are thousands of ``stat`` calls, not thousands of hops)."""
        removed = []
        for job_id, files in folders.items():
            if not os.path.lexists(files / CHECKPOINT_DIR):
                continue
            try:
                with job_files.opened_directory(files) as directory:
                    job_files.remove(directory, CHECKPOINT_DIR)
            except (OSError, UntrustedFile) as error:
                self.log.warning("job %s: its checkpoint could not be removed: %s", job_id, error)
                continue
            self.log.info(
                "job %s: checkpoint removed (%gs after the job ended)", job_id, self.retention_seconds
            )
            removed.append(job_id)
        return removed

    async def sweep(self, jobs: JobService, now: float | None = None) -> list[str]:
        """Remove the checkpoints past retention; the ids of the jobs whose checkpoint was removed."""
        now = time.time() if now is None else now
        records = await jobs.call(jobs.store.list, states=[state.value for state in TERMINAL_STATES])
        due = self.expired(((record.id, record.state, record.ended_at) for record in records), now)
        return await jobs.call(self.remove, {job_id: jobs.job_files_dir(job_id) for job_id in due})

    def start(self, jobs: JobService) -> PeriodicCallback:
        """Sweep every ``interval_seconds`` on the running loop; the caller stops the callback."""

        async def sweep() -> None:
            try:
                await self.sweep(jobs)
            except Exception:  # a database hiccup: the next sweep tries again
                self.log.exception(
                    "removing expired checkpoints failed; trying again in %gs", self.interval_seconds
                )

        callback = PeriodicCallback(sweep, self.interval_seconds * 1000)
        callback.start()
        return callback
