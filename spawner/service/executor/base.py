"""What every batch executor offers the service: start a job on its GPUs, follow it, stop it, read its log.

The service decides *what* runs *where* (queue, quota, placement); an executor only makes it
happen on one kind of infrastructure (local processes here, Kubernetes Jobs later) and reports
back. Its state must outlive the service: after a restart ``status`` finds running jobs again and
the exit codes of those that ended meanwhile, and says ``lost`` for those that vanished untold.
"""

from __future__ import annotations

import enum
import os
from abc import ABCMeta, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from traitlets import Float
from traitlets.config import LoggingConfigurable

from spawner.checkpoint import CHECKPOINT_VARIABLE

from ..payload import JOB_FILES_VARIABLE

CHECKPOINT_DIR = "checkpoint"
"""The job's checkpoint directory, inside its files directory: that one is kept across the runs of
a job (each run only gets fresh results) and is the owner's where jobs run as their owners."""


@dataclass(frozen=True)
class ExecutionSpec:
    """One batch job as the executor needs it: command, account, environment, GPUs, time limit."""

    job_id: str
    owner: str
    """The system user to run as when the executor runs jobs as their owners."""
    argv: list[str]
    workdir: str
    environment: dict[str, str]
    """The job's own variables; the executor adds the GPU ones (see :func:`execution_environment`)."""
    gpu_uuids: list[str]
    time_limit_s: float


class ExecutionState(enum.Enum):
    """Where a job's process stands."""

    running = "running"
    exited = "exited"
    lost = "lost"
    """Gone without an exit code, e.g. the machine rebooted or its supervisor was killed."""


@dataclass(frozen=True)
class ExecutionStatus:
    """What the executor knows of one job's process."""

    state: ExecutionState
    exit_code: int | None
    """The job's exit status; minus the signal number when a signal ended it (as in subprocess)."""
    pid: int | None
    timed_out: bool
    """The executor stopped it at its time limit."""
    stopped: bool
    """It was stopped by :meth:`Executor.stop` (a cancel or a preemption)."""


class UnknownJob(LookupError):
    """The executor has never started a job by this id (or its record was removed)."""


class ExecutionRefused(RuntimeError):
    """The job cannot be started as asked; the message says why and what to change."""


def execution_environment(spec: ExecutionSpec) -> dict[str, str]:
    """The job's environment plus what every batch job sees: its GPUs by UUID and its own id.

    UUIDs stay right when indices differ between the driver and the process, and
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` keeps the in-process order the same as ``nvidia-smi``'s, as for
    notebook slices (:mod:`spawner.enforce.env`). ``PYTHONUNBUFFERED`` makes a Python job's prints
    reach the log as they happen, not when a buffer fills or the job ends. A job with a files
    directory (every job the service runs) gets ``$GPUSLICE_CHECKPOINT_DIR`` in it, for
    :mod:`spawner.checkpoint`: the same for every run of the job, so a run after a preemption
    finds what the run before saved.
    """
    files = spec.environment.get(JOB_FILES_VARIABLE)
    checkpoints = {CHECKPOINT_VARIABLE: str(Path(files) / CHECKPOINT_DIR)} if files else {}
    return {
        **spec.environment,
        **checkpoints,
        "CUDA_VISIBLE_DEVICES": ",".join(spec.gpu_uuids),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPUSLICE_JOB_ID": spec.job_id,
        "PYTHONUNBUFFERED": "1",
    }


class _AbstractConfigurable(ABCMeta, type(LoggingConfigurable)):
    """Traitlets' metaclass with ABCMeta's, so an executor missing a method cannot be created."""


class Executor(LoggingConfigurable, metaclass=_AbstractConfigurable):
    """The interface the service's job runner drives; subclasses run jobs on one kind of infrastructure."""

    grace_seconds = Float(
        30.0,
        help="""Seconds a job has between the stop signal (SIGTERM) and being killed (SIGKILL).

        Long enough for a training loop to write a checkpoint when it is cancelled, preempted or
        reaches its time limit.
        """,
    ).tag(config=True)

    def job_uid(self, owner: str) -> int | None:
        """The uid the jobs of ``owner`` run as, None if they cannot run (no such account).

        Files in a job's results belong to it; the service trusts no other owner's file there (a
        link the job made to someone else's file, say). By default jobs run as the service.
        """
        return os.geteuid()

    @abstractmethod
    async def start(self, spec: ExecutionSpec) -> ExecutionStatus:
        """Start ``spec`` on its GPUs and return its status once its process has been started."""

    @abstractmethod
    async def status(self, job_id: str) -> ExecutionStatus:
        """The job's status, from state that survives a restart of the service."""

    @abstractmethod
    async def stop(self, job_id: str, grace_s: float | None = None) -> ExecutionStatus:
        """Ask the job to stop (SIGTERM), kill it after ``grace_s`` (default ``grace_seconds``).

        Idempotent: stopping a job that has ended returns its status unchanged.
        """

    @abstractmethod
    async def request_stop(self, job_id: str, grace_s: float | None = None) -> bool:
        """Send the stop of :meth:`stop` (SIGTERM now, SIGKILL after ``grace_s``) and return at once,
        whether a running job was asked to stop.

        What it asks for happens even if the service ends right after: a cancel answered to a user
        has already reached the job. Asking again does nothing more.
        """

    def run_ends(self) -> AsyncIterator[str] | None:
        """The ids of runs that ended, as a watch of the infrastructure reports them, for a
        scheduler that then reads their status at once instead of asking about every running job
        at every pass; a run may be named twice, or again after a break. None (this default) when
        the executor has no such watch: the scheduler then asks at every pass."""
        return None

    @abstractmethod
    def log_path(self, job_id: str) -> Path:
        """Where the job's combined stdout and stderr are kept."""

    @abstractmethod
    async def read_log(self, job_id: str, offset: int = 0, limit: int = 65536) -> tuple[bytes, int]:
        """Up to ``limit`` bytes of the log from ``offset``, and the offset to read from next."""
