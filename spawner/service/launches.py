"""A job's start that a crash cut short: how the next service tells it apart, and puts it back in line.

Starting a job takes steps no single transaction covers: the ledger grants the run's lease, the
service writes the job's files, the executor makes the run's directory and spec, spawns the
supervisor and records its pid, the supervisor starts the job's process and records that pid, and
only then is the job ``running`` in the ledger: a job is running only once its process has
started. A service killed in between leaves the job ``queued`` with part of that done. Before its
first pass the next service (``BatchScheduler.recover``) looks at every queued job's next run:

- **A process was started** (its pid was recorded, or its supervisor lives, or it ended with an
  exit record): the run is adopted and the job is ``running`` (the pass then finishes it if it
  ended meanwhile).
- **No process was ever started** (no run directory, or one without a job's pid, exit record or
  live supervisor): the launch is undone. The run directory is set aside (renamed
  ``<run>.cut-short-<time>``, kept for its ``supervisor.err``), the ledger forgets the run's grant
  (:meth:`~spawner.ledger.jobs.JobStore.undo_launch`, with an event saying so), and the job,
  still ``queued``, is started by a later pass under the same run id like any other.

A supervisor spawned just before the crash may not have had its pid recorded yet, and may be
about to start the job: the executor would call such a run lost. So a run directory without a
recorded process is undone only if no live process names it on its command line; a supervisor
found that way is recorded now, and the run adopted.

Tests reach the second case deterministically by making what a kill leaves: a grant and a run
directory with its spec, and no process (``tests/service/test_lost_launch.py``).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from spawner.ledger.jobs import JobRecord

from .executor import LocalExecutor, jobdir
from .executor.base import ExecutionState, Executor, UnknownJob

if TYPE_CHECKING:
    from .jobs import JobService

CUT_SHORT = "its start was cut short when the service stopped (no process had started); back in the queue"


async def run_was_started(jobs: JobService, executor: Executor, record: JobRecord, run: str) -> bool:
    """Whether the queued job's run ``run`` got as far as a process (then adopt it); if it did
    not, whatever the start left (a grant, a run directory) is undone here and the job waits on."""
    try:
        status = await executor.status(run)
    except UnknownJob:
        status = None
    if status is not None and not (status.state is ExecutionState.lost and status.pid is None):
        return True
    directory = executor.job_dir(run) if isinstance(executor, LocalExecutor) else None
    if status is not None and directory is not None:
        supervisor = await asyncio.to_thread(unrecorded_supervisor, directory)
        if supervisor is not None:
            await asyncio.to_thread(executor.record_supervisor, directory, supervisor)
            jobs.log.info("job %s: run %s: supervisor pid %d found unrecorded", record.id, run, supervisor)
            return True
    held = await jobs.allocator.record(run)
    left_behind = directory is not None and await asyncio.to_thread(os.path.lexists, directory)
    if held is None and not left_behind:
        return False  # the usual case: the job never got as far as its grant
    if left_behind:
        aside = await asyncio.to_thread(set_aside, directory)
        jobs.log.warning("job %s: run %s started no process; its directory is now %s", record.id, run, aside)
    await jobs.call(jobs.store.undo_launch, record.id, run, CUT_SHORT)
    jobs.log.warning("job %s: %s (lease %s forgotten)", record.id, CUT_SHORT, run)
    return False


def unrecorded_supervisor(directory: Path) -> int | None:
    """The pid of a live process whose command line names ``directory`` (a supervisor of the run)."""
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return None  # no process table to search (not Linux)
    for entry in entries:
        if entry.name.isdigit() and jobdir.command_line_mentions(int(entry.name), str(directory)):
            return int(entry.name)
    return None


def set_aside(directory: Path) -> Path:
    """Rename a run directory no process ever used, freeing its run id; the new name."""
    aside = directory.with_name(f"{directory.name}.cut-short-{time.time_ns()}")
    os.rename(directory, aside)
    return aside
