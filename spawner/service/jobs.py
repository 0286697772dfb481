"""Batch jobs in the service: submitting, reading, cancelling, and the steps the scheduler takes.

:class:`JobService` is the one place that touches the job store, the executor and the leases of
jobs together. Every store and ledger call runs in a worker thread; everything that changes a
job's state (the scheduler's pass, a cancel) holds :attr:`JobService.lock`, so that a cancel
never lands between a job's grant and its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from traitlets import Float, Int, List, Unicode, default
from traitlets.config import LoggingConfigurable

from spawner.core import quota
from spawner.core.scheduler import DEV_POOL, TRAIN_POOL, largest_gang
from spawner.core.units import Lease
from spawner.ledger.jobs import JobRecord, JobSpec, JobStore, Submission, SubmissionLimits
from spawner.ledger.store import Ledger

from . import job_files
from .allocator import Allocator
from .executor.base import ExecutionSpec, ExecutionState, ExecutionStatus, Executor, UnknownJob
from .executor.jobdir import nofollow
from .hub_users import HubUser
from .job_files import UntrustedFile
from .job_request import CellPayload, JobBody, JobBodyError, parse_duration
from .metrics import ServiceMetrics
from .paths import state_dir
from .payload import (
    JOB_FILES_VARIABLE,
    KEY_VARIABLE,
    RESULTS_DIR,
    RESULTS_VARIABLE,
    SUMMARY_FILE,
    VALUES_FILE,
    job_key,
    load_or_create_master_key,
    write_signed_payload,
)
from .queue_view import QueueSnapshot
from .submissions import (
    IdempotencyConflict,
    SubmissionRefused,
    body_digest,
    conflict_message,
    limit_message,
    payload_size,
)

Result = TypeVar("Result")

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "preempted")
SCRIPT_NAME = "script.py"


@dataclass
class Stopping:
    """A stop under way (a preemption or a cancel): the job has its stop signal, and its process
    is not gone yet, so it still holds its GPUs."""

    job_id: str
    started: float
    """``time.monotonic()`` when the stop signal went out."""
    grace_s: float
    task: asyncio.Task | None = None

    def seconds_left(self) -> float:
        """How long the job may still take to checkpoint before it is killed."""
        return max(0.0, self.started + self.grace_s - time.monotonic())


def run_id(record: JobRecord, attempt: int | None = None) -> str | None:
    """The id of a job's run (its lease and its executor job): ``<job id>-<attempt>``.

    Each start is a new run, so a job started again after a preemption gets a new lease and a
    fresh executor directory; ``attempt`` defaults to the latest run (None before the first).
    """
    attempt = record.attempts if attempt is None else attempt
    return f"{record.id}-{attempt}" if attempt else None


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

    max_cell_payload_bytes = Int(
        64 * 1024 * 1024,
        help="""The largest %%submit cell payload (bytes, decoded) a submission may carry.

        It holds the cell's functions, classes, local modules and small data values; bigger data
        belongs in files the cell reads. The notebook refuses single values over its own limit
        (``SubmitMagics.max_value_bytes``) before sending anything.
        """,
    ).tag(config=True)

    max_queued_jobs_per_user = Int(
        200,
        help="""How many jobs one user may have waiting in the queue at once; 0: no limit.

        A submission past it is refused (400) with the limit and the user's count; jobs that run,
        or checkpoint to go back to the queue, do not count. Checked in the ledger transaction
        that queues the job, so concurrent submissions cannot pass it together.
        """,
    ).tag(config=True)

    max_payload_bytes_per_user = Int(
        256 * 1024 * 1024,
        help="""How many bytes of scripts and %%submit cells one user's unfinished jobs may hold; 0: no limit.

        Counted as ``max_payload_bytes`` and ``max_cell_payload_bytes`` count (a script's UTF-8
        bytes, a cell's decoded bytes; the database keeps a cell in base64, about 4/3 of that)
        over the user's queued, running and checkpointing jobs, the new one included: the
        service keeps these to start the jobs (again), and drops a job's payload once it has
        ended. A submission past it is refused (400) with the limit and the user's usage.
        """,
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
        help="""The Python interpreter that runs job scripts and cells; default: the service's own.

        Cells run through ``spawner.service.runner``, so this interpreter needs this package and
        cloudpickle, and the Python version (major.minor) of the notebooks' kernels.
        """,
    ).tag(config=True)

    signing_key_dir = Unicode(
        help="""Where the master key signing cell payloads is kept (created once, mode 0600).

        Default: $GPUSLICE_STATE_DIR. Each job gets a key derived from it and its id.
        """,
    ).tag(config=True)

    @default("signing_key_dir")
    def _default_signing_key_dir(self) -> str:
        return str(state_dir())

    def __init__(self, store: JobStore, allocator: Allocator, executor: Executor, **kwargs: Any):
        super().__init__(**kwargs)
        self.store = store
        self.allocator = allocator
        self.executor = executor
        self.lock = asyncio.Lock()
        self.queue = QueueSnapshot()
        """The last scheduling pass's places and reasons of the jobs it left waiting; each pass
        replaces it whole, so a reader holding it sees one pass."""
        self.metrics = ServiceMetrics()
        """Queue, wait, preemption and outcome figures, served at .../metrics."""
        self.preemptions: dict[str, Stopping] = {}
        """Preemptions under way (stop signal sent, process not yet gone), by job id."""
        self.cancellations: dict[str, Stopping] = {}
        """Cancelled jobs whose process is still stopping (their lease not yet given back), by job id."""

    @property
    def ledger(self) -> Ledger:
        return self.allocator.ledger

    async def call(self, function: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        return await asyncio.to_thread(functools.partial(function, *args, **kwargs))

    # ---------------------------------------------------------------------------- submitting

    async def submit(self, user: HubUser, body: JobBody, idempotency_key: str | None = None) -> Submission:
        """Queue ``body`` as a job of ``user``: the :class:`Submission` with the job, ``created``
        unless an earlier submission under ``idempotency_key`` had made it (see :mod:`.submissions`).

        :class:`JobBodyError` (400) for a body that cannot run or that a limit refuses,
        :class:`IdempotencyConflict` (409) for a key used before for another body.
        """
        digest = None
        if idempotency_key is not None:
            digest = await self.call(body_digest, body)
            # A retry is answered before anything is checked again: the job exists whatever the
            # rules say now (a limit reached since, a GPU gone from the inventory).
            earlier = await self.call(self.store.find_submission, user.name, idempotency_key, digest)
            if earlier is not None:
                return self._answer_retry(earlier, idempotency_key)
        if body.priority == "high" and not (user.admin or set(user.groups) & set(self.high_priority_groups)):
            allowed = ", ".join(sorted(self.high_priority_groups)) or "no group"
            raise JobBodyError(
                f"priority: 'high' is for members of {allowed} and admins, and user {user.name} is neither; "
                "submit with priority 'normal' or 'low'"
            )
        nodes = await self.call(self.ledger.nodes)
        on_train = largest_gang(nodes, body.gpu_models, TRAIN_POOL)
        on_dev = largest_gang(nodes, body.gpu_models, DEV_POOL)
        if body.gpus > max(on_train, on_dev):
            # Idle dev GPUs take batch jobs as borrowed work, so only a job that no node of either
            # pool could hold is impossible.
            models = "/".join(sorted(body.gpu_models)) + " " if body.gpu_models else ""
            largest = max(on_train, on_dev)
            raise JobBodyError(
                f"gpus: no node has {body.gpus} {models}GPUs (a job's GPUs are all on one node): the "
                f"largest training node has {on_train}, the largest dev node has {on_dev} (lent to batch "
                f"jobs while idle); ask for {largest} or fewer"
                + ("" if largest else " (there is no GPU for batch jobs: ask an admin to add one)")
            )
        policy = self.allocator.profiles.quotas
        group = quota.charge_group(user.groups, policy)
        never = quota.batch_never_starts(policy, user.name, group, body.gpus, body.time_limit_s)
        if never is not None:
            raise JobBodyError(never)
        spec = JobSpec(
            owner=user.name,
            group=group,
            name=body.name,
            payload=body.stored_payload(),
            payload_kind=body.kind,
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
        size = payload_size(body)
        submission = await self.call(
            self.store.submit_checked,
            spec,
            idempotency_key=idempotency_key,
            body_sha256=digest,
            payload_bytes=size,
            limits=SubmissionLimits(self.max_queued_jobs_per_user, self.max_payload_bytes_per_user),
        )
        if submission.refusal is not None and submission.refusal.rule != "idempotency_key":
            raise SubmissionRefused(limit_message(user.name, submission.refusal, size))
        if not submission.created:
            return self._answer_retry(submission, idempotency_key or "")
        record = submission.record
        self.log.info("job %s (%s) of %s queued: %d GPUs", record.id, record.name, record.owner, record.gpus)
        return submission

    def _answer_retry(self, submission: Submission, key: str) -> Submission:
        """The job an earlier submission under ``key`` made, or IdempotencyConflict for another body."""
        if submission.refusal is not None:
            raise IdempotencyConflict(conflict_message(key, submission.refusal))
        record = submission.record
        self.log.info("job %s of %s: submitted again under its idempotency key", record.id, record.owner)
        return submission

    def default_time_limit_s(self) -> float:
        return parse_duration(self.default_time_limit)

    # ------------------------------------------------------------------------------- reading

    async def get(self, job_id: str) -> JobRecord | None:
        return await self.call(self.store.get, job_id)

    async def list(
        self, owner: str | None, states: list[str] | None, limit: int | None = None
    ) -> list[JobRecord]:
        return await self.call(self.store.list, owner=owner, states=states, limit=limit)

    async def events(self, job_id: str) -> list[Any]:
        return await self.call(self.store.events, job_id)

    async def read_log(self, record: JobRecord, offset: int, follow: bool) -> dict[str, Any]:
        """Log text from ``offset``; with ``follow`` wait up to ``log_follow_seconds`` for some.

        The log of a job is the logs of all its runs in order, each run after the first opened by a
        marker line that says why it ran again, and offsets address that whole text: a run before
        the latest has ended and its log no longer grows, so every offset keeps meaning the same
        byte however many runs follow, and a client following the log loses and repeats nothing.
        """
        deadline = time.monotonic() + (self.log_follow_seconds if follow else 0)
        while True:
            data, next_offset = await self._read_log(record, offset)
            if data or record.state in TERMINAL_STATES or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
            record = await self.get(record.id) or record
        text, used = _complete_utf8(data, final=record.state in TERMINAL_STATES)
        next_offset = offset + used if used < len(data) else next_offset
        done = record.state in TERMINAL_STATES and len(data) < self.log_chunk_bytes
        return {"data": text, "next_offset": next_offset, "done": done, "state": record.state}

    async def _read_log(self, record: JobRecord, offset: int) -> tuple[bytes, int]:
        """Up to ``log_chunk_bytes`` of the job's whole log (all runs) from ``offset``."""
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        segments = await self._log_segments(record)
        wanted = self.log_chunk_bytes
        chunks: list[bytes] = []
        start = 0
        for segment in segments:
            if wanted <= 0:
                break
            if isinstance(segment, bytes):
                if offset < start + len(segment):
                    piece = segment[max(0, offset - start) : max(0, offset - start) + wanted]
                    chunks.append(piece)
                    wanted -= len(piece)
                start += len(segment)
                continue
            run, size = segment
            if size is not None and offset >= start + size:
                start += size
                continue
            piece = await self._read_run_log(
                run,
                max(0, offset - start),
                wanted if size is None else min(wanted, start + size - max(offset, start)),
            )
            chunks.append(piece)
            wanted -= len(piece)
            if size is None:
                break  # the latest run: nothing follows it yet
            start += size
        data = b"".join(chunks)
        return data, offset + len(data)

    async def _log_segments(self, record: JobRecord) -> list[bytes | tuple[str, int | None]]:
        """The job's log as pieces: for each run ``(run id, its size)``, the latest with size None
        (it may still grow), and between runs the marker line as bytes."""
        if record.attempts <= 1:
            run = run_id(record)
            return [(run, None)] if run else []
        events = await self.events(record.id)
        why = [event.reason for event in events if event.to_state == "preempted"]
        segments: list[bytes | tuple[str, int | None]] = []
        for attempt in range(1, record.attempts + 1):
            run = run_id(record, attempt)
            if attempt == record.attempts:
                segments.append((run, None))
                break
            size, last_byte = await self.call(_log_size_and_last_byte, self.executor.log_path(run))
            segments.append((run, size))
            reason = why[attempt - 1] if attempt - 1 < len(why) else "it was started again"
            marker = f"--- run {attempt + 1} (after preemption: {reason}) ---\n"
            if size and last_byte != b"\n":
                marker = "\n" + marker  # the marker starts a line of its own
            segments.append(marker.encode("utf-8"))
        return segments

    async def _read_run_log(self, run: str, offset: int, limit: int) -> bytes:
        try:
            data, _ = await self.executor.read_log(run, offset, limit)
        except (UnknownJob, ValueError):
            return b""  # not started yet: no log so far
        return data

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
        """Cancel a queued, running or checkpointing job and return at once; a finished job stays
        as it is.

        The job is ``cancelled`` from now on. A process it still has gets its stop signal from a
        background task that waits up to ``cancel_grace_seconds`` (then kills it) and only then
        gives the lease back, so the GPUs are never lent while the process still runs on them.
        Nothing waits for that here: the lock is held for the ledger writes only, so a cancel
        never holds up the scheduling pass, another cancel, or a notebook's request for a slice.
        """
        async with self.lock:
            record = await self.get(job_id)
            if record.state in TERMINAL_STATES:
                return record
            reason = f"cancelled by {by}"
            self.queue = self.queue.without(job_id)
            cancelled = await self.transition(record.id, "cancelled", reason, ended_at=time.time())
            if record.state == "running":
                # The stop signal goes out before the answer, so that it reaches the job even if
                # the service ends right after; waiting for the process is left to the background.
                with contextlib.suppress(UnknownJob, ValueError):
                    await self.executor.request_stop(run_id(record) or "", self.cancel_grace_seconds)
                self.stop_in_background(record, self.cancel_grace_seconds)
            # A checkpointing job's preemption task stops the process and gives the lease back;
            # seeing the job cancelled, it does not queue it again.
            self.log.info("job %s of %s %s", record.id, record.owner, reason)
            return cancelled

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
        if record is None or record.state != "running":
            return False
        record = await self.transition(record.id, "preempted", reason)
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
                if current is None or current.state != "preempted":
                    # cancelled while it checkpointed: it stays so, and its GPUs are free now
                    self.log.info("job %s stopped after its preemption, and stays cancelled", record.id)
                    return
                await self.transition(record.id, "queued", "back in the queue after preemption")
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

    async def launch(self, record: JobRecord, lease: Lease) -> None:
        """Write the job's files (script, or signed cell payload) and start it on the lease's GPUs.

        A script runs as ``python script.py``; a cell as ``python -m spawner.service.runner
        cell.json``, with its derived key and its results directory in its environment. Each run
        starts with an empty results directory, so a rerun after a preemption never shows the
        results of the run before.
        """
        files = self.job_files_dir(record.id)
        owners = self._file_owners(record)
        workdir = Path(record.workdir) if record.workdir else files
        environment = {
            **record.environment,
            JOB_FILES_VARIABLE: str(files),
            RESULTS_VARIABLE: str(files / RESULTS_DIR),
        }
        if record.payload_kind == "cell":
            cell = CellPayload.from_stored(record.payload)
            key = job_key(await self.call(self.master_key), record.id)
            path = await self.call(_write_cell, files, owners, key, record.id, cell)
            argv = [self.python, "-m", "spawner.service.runner", str(path)]
            environment[KEY_VARIABLE] = key.hex()
        else:
            script = await self.call(_write_script, files, owners, record.payload)
            argv = [self.python, str(script)]
        await self.executor.start(
            ExecutionSpec(
                job_id=lease.id,
                owner=record.owner,
                argv=argv,
                workdir=str(workdir),
                environment=environment,
                gpu_uuids=list(lease.placement.gpu_uuids),
                time_limit_s=record.time_limit_s,
            )
        )

    def job_files_dir(self, job_id: str) -> Path:
        """The directory of a job's own files: script or payload, and results.

        When jobs run as their owners it is the owner's (see :mod:`.executor.local` for the rule
        that follows): the service touches what is in it only through :mod:`.job_files`.
        """
        return Path(self.scripts_dir).absolute() / job_id

    def _file_owners(self, record: JobRecord) -> frozenset[int]:
        """The uids whose files in a job's results the service trusts: the account the job runs as
        (none if it has none; with jobs run as the service, the service's own)."""
        uid = self.executor.job_uid(record.owner)
        return frozenset() if uid is None else frozenset({uid})

    def master_key(self) -> bytes:
        """The key cell payloads are signed under (blocking file access: call in a thread)."""
        return load_or_create_master_key(Path(self.signing_key_dir))

    # ----------------------------------------------------------------------------- results

    async def result_summary(self, record: JobRecord) -> dict[str, Any] | None:
        """The runner's JSON summary of a cell job's results; None if it wrote none (yet).

        Only JSON is read here: the values themselves are a pickle the service never loads. A
        summary that is not a regular file the job wrote (a link the job left in its place, say)
        counts as none; the service does not follow it.
        """
        try:
            data = await self._read_result(record, SUMMARY_FILE)
        except FileNotFoundError:
            return None
        except UntrustedFile as error:
            self.log.warning("job %s: its result summary was not read: %s", record.id, error)
            return None
        try:
            summary = json.loads(data.decode("utf-8"))
        except ValueError:
            return None
        return summary if isinstance(summary, dict) else None

    async def result_values(self, record: JobRecord) -> bytes:
        """The pickled values of a cell job, as the runner wrote them (the service never loads them).

        FileNotFoundError if there are none; :class:`UntrustedFile` if what is there is not a
        regular file of the job's account (a link to a file the job could not read itself).
        """
        return await self._read_result(record, VALUES_FILE)

    async def _read_result(self, record: JobRecord, name: str) -> bytes:
        """One file of a job's results, read without following a link (see :func:`.job_files.read_file`)."""
        owners = self._file_owners(record)
        return await self.call(
            job_files.read_file,
            self.job_files_dir(record.id),
            (RESULTS_DIR, name),
            owners=owners,
            directory_owners=owners | {os.geteuid()},
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


@contextlib.contextmanager
def _fresh_job_files(directory: Path, owners: frozenset[int]) -> Iterator[int]:
    """The job's files directory, open, without the results of an earlier run.

    Created private to the service on the first run; on a later one it may be the owner's (the
    executor gave it away), so it is opened without following a link and only an empty results
    directory of the service's own is put in it (the executor gives that away too). The
    descriptor is for writing the job's file through; it is closed on leaving.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    # scripts_dir is the admin's path (it may be a link); from there on nothing is followed.
    parent = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if owners - {os.geteuid()}:
            _check_private(parent, directory.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory.name, 0o700, dir_fd=parent)
        mine = owners | {os.geteuid()}
        with job_files.opened_directory(directory.name, dir_fd=parent, owners=mine) as files:
            job_files.remove(files, RESULTS_DIR)
            os.mkdir(RESULTS_DIR, 0o700, dir_fd=files)
            yield files
    finally:
        os.close(parent)


def _check_private(fd: int, path: Path) -> None:
    """Refuse to put a job's files in ``JobService.scripts_dir`` if another account could write it:
    the job files directories there are root's to create and hand over."""
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise UntrustedFile(
            f"JobService.scripts_dir {path} is writable by others (uid {info.st_uid}, mode"
            f" {stat.S_IMODE(info.st_mode):o}); it must be the service's alone (chmod go-w) when jobs run"
            " as their owners"
        )


def _log_size_and_last_byte(path: Path) -> tuple[int, bytes]:
    """The size of an ended run's log and its last byte (b"" when it is empty or missing)."""
    try:
        with open(path, "rb", opener=nofollow) as file:
            size = file.seek(0, 2)
            if size == 0:
                return 0, b""
            file.seek(size - 1)
            return size, file.read(1)
    except FileNotFoundError:
        return 0, b""


def _write_script(directory: Path, owners: frozenset[int], payload: str) -> Path:
    with _fresh_job_files(directory, owners) as files:
        job_files.replace_file(files, SCRIPT_NAME, payload.encode("utf-8"))
    return directory / SCRIPT_NAME


def _write_cell(directory: Path, owners: frozenset[int], key: bytes, job_id: str, cell: CellPayload) -> Path:
    with _fresh_job_files(directory, owners) as files:
        return write_signed_payload(directory, key, job_id, cell.python, cell.payload, dir_fd=files)
