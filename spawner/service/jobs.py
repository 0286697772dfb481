"""Batch jobs in the service: submitting, reading, cancelling, and the steps the scheduler takes.

:class:`JobService` is the one place that touches the job store, the executor and the leases of
jobs together. Every store and ledger call runs in a worker thread; everything that changes a
job's state (the scheduler's pass, a cancel) holds :attr:`JobService.lock`, so that a cancel
never lands between a job's grant and its start.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from traitlets import Float, Int, List, Unicode, default
from traitlets.config import LoggingConfigurable

from spawner.core import quota
from spawner.core.scheduler import TRAIN_POOL, Waiting
from spawner.core.units import Lease, Node
from spawner.ledger.jobs import JobRecord, JobSpec, JobStore
from spawner.ledger.store import Ledger

from .allocator import Allocator
from .executor.base import ExecutionSpec, ExecutionStatus, Executor, UnknownJob
from .hub_users import HubUser
from .job_request import JobBody, JobBodyError, parse_duration
from .metrics import ServiceMetrics
from .paths import state_dir

Result = TypeVar("Result")

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "preempted")
SCRIPT_NAME = "script.py"


def run_id(record: JobRecord, attempt: int | None = None) -> str | None:
    """The id of a job's run (its lease and its executor job): ``<job id>-<attempt>``.

    Each start is a new run, so a job started again after a preemption gets a new lease and a
    fresh executor directory; ``attempt`` defaults to the latest run (None before the first).
    """
    attempt = record.attempts if attempt is None else attempt
    return f"{record.id}-{attempt}" if attempt else None


def describe_duration(seconds: float) -> str:
    """``43200`` -> ``12h``, ``5400`` -> ``1h30m``, ``42`` -> ``42s``."""
    seconds = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def largest_gang(nodes: list[Node], gpu_models: frozenset[str]) -> int:
    """The most GPUs (of ``gpu_models``, if given) one training node has."""
    return max(
        (
            sum(
                1
                for gpu in node.gpus
                if TRAIN_POOL in gpu.pools and (not gpu_models or gpu.model in gpu_models)
            )
            for node in nodes
        ),
        default=0,
    )


class JobService(LoggingConfigurable):
    """Submission rules and the job operations behind the REST API and the scheduler."""

    high_priority_groups = List(
        Unicode(),
        help="JupyterHub groups whose members may submit jobs with priority 'high' (admins always may).",
    ).tag(config=True)

    max_payload_bytes = Int(
        1024 * 1024,
        help="The largest job script (bytes, UTF-8) a submission may carry; data belongs in files.",
    ).tag(config=True)

    default_time_limit = Unicode(
        "12h",
        help="Time limit of a job that does not give one: '12h', '30m' or seconds.",
    ).tag(config=True)

    cancel_grace_seconds = Float(
        10.0,
        help="Seconds a cancelled running job has between SIGTERM and SIGKILL.",
    ).tag(config=True)

    log_follow_seconds = Float(
        20.0,
        help="How long ``GET jobs/{id}/logs?follow=1`` waits for new output before answering empty.",
    ).tag(config=True)

    log_chunk_bytes = Int(
        65536,
        help="The most log bytes one ``GET jobs/{id}/logs`` returns; ask again from next_offset.",
    ).tag(config=True)

    scripts_dir = Unicode(
        help="""
        Where each job's script is written (``<dir>/<job id>/script.py``); it is also the working
        directory of a job that gives none. Default: $GPUSLICE_STATE_DIR/job-scripts.
        """,
    ).tag(config=True)

    @default("scripts_dir")
    def _default_scripts_dir(self) -> str:
        return str(state_dir() / "job-scripts")

    python = Unicode(
        sys.executable,
        help="The Python interpreter that runs job scripts; default: the service's own.",
    ).tag(config=True)

    def __init__(self, store: JobStore, allocator: Allocator, executor: Executor, **kwargs: Any):
        super().__init__(**kwargs)
        self.store = store
        self.allocator = allocator
        self.executor = executor
        self.lock = asyncio.Lock()
        self.waiting: dict[str, Waiting] = {}
        """The last scheduling pass's position and reason for every job it left in the queue."""
        self.metrics = ServiceMetrics()
        """Queue, wait, preemption and outcome figures, served at .../metrics."""

    @property
    def ledger(self) -> Ledger:
        return self.allocator.ledger

    async def call(self, function: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        return await asyncio.to_thread(functools.partial(function, *args, **kwargs))

    # ---------------------------------------------------------------------------- submitting

    async def submit(self, user: HubUser, body: JobBody) -> JobRecord:
        if body.priority == "high" and not (user.admin or set(user.groups) & set(self.high_priority_groups)):
            allowed = ", ".join(sorted(self.high_priority_groups)) or "no group"
            raise JobBodyError(
                f"priority: 'high' is for members of {allowed} and admins, and user {user.name} is neither; "
                "submit with priority 'normal' or 'low'"
            )
        nodes = await self.call(self.ledger.nodes)
        largest = largest_gang(nodes, body.gpu_models)
        if body.gpus > largest:
            models = "/".join(sorted(body.gpu_models)) + " " if body.gpu_models else ""
            raise JobBodyError(
                f"gpus: no training node has {body.gpus} {models}GPUs; the largest has {largest}; "
                f"ask for {largest} or fewer"
                + ("" if largest else " (there is no training GPU: ask an admin to add a train pool)")
            )
        spec = JobSpec(
            owner=user.name,
            group=quota.charge_group(user.groups, self.allocator.profiles.quotas),
            name=body.name,
            payload=body.script,
            workdir=body.workdir or "",
            environment=body.environment,
            image=None,
            gpus=body.gpus,
            gpu_models=sorted(body.gpu_models),
            cpu_milli=0,
            memory_mib=0,
            priority=body.priority,
            time_limit_s=body.time_limit_s,
            provenance=body.provenance,
        )
        record = await self.call(self.store.submit, spec)
        self.log.info("job %s (%s) of %s queued: %d GPUs", record.id, record.name, record.owner, record.gpus)
        return record

    def default_time_limit_s(self) -> float:
        return parse_duration(self.default_time_limit)

    # ------------------------------------------------------------------------------- reading

    async def get(self, job_id: str) -> JobRecord | None:
        return await self.call(self.store.get, job_id)

    async def list(self, owner: str | None, states: list[str] | None) -> list[JobRecord]:
        return await self.call(self.store.list, owner=owner, states=states)

    async def events(self, job_id: str) -> list[Any]:
        return await self.call(self.store.events, job_id)

    async def read_log(self, record: JobRecord, offset: int, follow: bool) -> dict[str, Any]:
        """Log text from ``offset``; with ``follow`` wait up to ``log_follow_seconds`` for some."""
        deadline = time.monotonic() + (self.log_follow_seconds if follow else 0)
        while True:
            data, next_offset = await self._read_log(run_id(record), offset)
            if data or record.state in TERMINAL_STATES or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
            record = await self.get(record.id) or record
        text, used = _complete_utf8(data, final=record.state in TERMINAL_STATES)
        next_offset = offset + used if used < len(data) else next_offset
        done = record.state in TERMINAL_STATES and len(data) < self.log_chunk_bytes
        return {"data": text, "next_offset": next_offset, "done": done, "state": record.state}

    async def _read_log(self, job_id: str | None, offset: int) -> tuple[bytes, int]:
        try:
            return await self.executor.read_log(job_id or "", offset, self.log_chunk_bytes)
        except (UnknownJob, ValueError):
            return b"", offset  # not started yet: no log so far

    # ------------------------------------------------------------------------ state changes

    async def transition(self, job_id: str, state: str, reason: str, **fields: Any) -> JobRecord:
        record = await self.call(self.store.transition, job_id, state, reason, **fields)
        # Every change of a job's state passes here, so this is where the metrics see it.
        if state == "running":
            self.metrics.observe_start(record.group, record.priority, record.started_at - record.created_at)
        elif state == "preempted":
            self.metrics.observe_preemption(record.group)
        elif state in ("succeeded", "failed", "cancelled"):
            self.metrics.observe_outcome(record.group, state)
        return record

    async def release(self, lease_id: str) -> Lease | None:
        return await self.call(self.ledger.release, lease_id)

    async def finish(self, record: JobRecord, state: str, reason: str, exit_code: int | None) -> JobRecord:
        """End a running job: record how, then give its GPUs back."""
        ended = await self.transition(record.id, state, reason, ended_at=time.time(), exit_code=exit_code)
        if record.lease_id:
            await self.release(record.lease_id)
        self.log.info("job %s of %s %s: %s", record.id, record.owner, state, reason)
        return ended

    async def cancel(self, job_id: str, by: str) -> JobRecord:
        """Cancel a queued or running job (stopping its process); a finished job stays as it is."""
        async with self.lock:
            record = await self.get(job_id)
            if record.state in TERMINAL_STATES:
                return record
            reason = f"cancelled by {by}"
            if record.state == "running":
                await self.executor.stop(run_id(record), self.cancel_grace_seconds)
                return await self.finish(record, "cancelled", reason, exit_code=None)
            self.waiting.pop(job_id, None)
            return await self.transition(record.id, "cancelled", reason, ended_at=time.time())

    async def preempt(self, job_id: str, reason: str, grace_s: float) -> None:
        """Stop a running job that must yield its GPUs, and put it back in the queue."""
        record = await self.get(job_id)
        if record is None or record.state != "running":
            return
        await self.executor.stop(run_id(record), grace_s)
        await self.transition(record.id, "preempted", reason, ended_at=time.time())
        if record.lease_id:
            await self.release(record.lease_id)
        await self.transition(record.id, "queued", "back in the queue after preemption")
        self.log.info("job %s of %s preempted: %s", record.id, record.owner, reason)

    async def launch(self, record: JobRecord, lease: Lease) -> None:
        """Write the job's script beside its work and start its process on the lease's GPUs."""
        workdir = Path(record.workdir) if record.workdir else Path(self.scripts_dir) / record.id
        script = await self.call(_write_script, Path(self.scripts_dir) / record.id, record.payload)
        await self.executor.start(
            ExecutionSpec(
                job_id=lease.id,
                owner=record.owner,
                argv=[self.python, str(script)],
                workdir=str(workdir),
                environment=dict(record.environment),
                gpu_uuids=list(lease.placement.gpu_uuids),
                time_limit_s=record.time_limit_s,
            )
        )

    async def process_status(self, record: JobRecord) -> ExecutionStatus | None:
        """What the executor knows of a running job's process; None if it never started one."""
        try:
            return await self.executor.status(run_id(record) or "")
        except (UnknownJob, ValueError):
            return None


def _complete_utf8(data: bytes, final: bool) -> tuple[str, int]:
    """Decode ``data`` up to its last whole character, unless it is the log's end."""
    if final:
        return data.decode("utf-8", errors="replace"), len(data)
    for cut in range(len(data), max(len(data) - 4, 0) - 1, -1):
        try:
            return data[:cut].decode("utf-8"), cut
        except UnicodeDecodeError as error:
            if error.start < cut - 4:
                break
    return data.decode("utf-8", errors="replace"), len(data)


def _write_script(directory: Path, payload: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / SCRIPT_NAME
    script.write_text(payload, encoding="utf-8")
    return script
