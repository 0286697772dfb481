"""Batch jobs in the service: submitting, reading, cancelling, and the steps the scheduler takes.

:class:`JobService` is the facade the API handlers and the scheduler call: the one place that
touches the job store, the executor and the leases of jobs together (the leases through the
allocator). Every store call runs in a worker thread; everything that changes a job's state (the
scheduler's pass, a cancel, a reclaim) holds :attr:`JobService.lock`, so that a cancel never
lands between a job's grant and its start. Reading logs is :mod:`.job_logs`'s, a run's files
:mod:`.run_files`'s, and stopping runs (preemptions, cancellations) :mod:`.job_stops`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from traitlets import Float, Int, List, Unicode, default
from traitlets.config import LoggingConfigurable

from spawner.core import quota
from spawner.core.scheduler import BatchJob, largest_gang
from spawner.core.units import Lease, Node
from spawner.core.vocabulary import CELL_PAYLOAD, DEV_POOL, TERMINAL_STATES, TRAIN_POOL, JobState, Priority
from spawner.ledger.jobs import (
    BatchItem,
    BatchSubmission,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStore,
    Submission,
    SubmissionLimits,
)

from . import run_files
from .allocator import Allocator
from .executor.base import ExecutionSpec, ExecutionStatus, Executor, UnknownJob
from .holdings import HoldingJobs
from .hub_users import HubUser
from .job_files import UntrustedFile
from .job_logs import JobLog
from .job_request import CellPayload, JobBody, JobBodyError, parse_duration
from .job_stops import JobStops
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
)
from .queue_view import QueueSnapshot
from .runs import Stopping, run_id
from .submission_writer import SubmissionWriter
from .submissions import (
    IdempotencyConflict,
    SubmissionRefused,
    body_digest,
    conflict_message,
    limit_message,
    payload_size,
)

Result = TypeVar("Result")

__all__ = ["BatchRefused", "JobService", "Stopping", "run_id"]

MAX_KEY_LENGTH = 255
"""The longest idempotency key the ledger stores (a batch's jobs are stored under ``<key>/<index>``)."""


class BatchRefused(JobBodyError):
    """Jobs of a batch that cannot be queued, so none of it was: ``errors`` are (index, sentence)."""

    def __init__(self, errors: list[tuple[int, str]], count: int):
        self.errors = errors
        self.count = count
        super().__init__(f"{len(errors)} of {count} jobs refused; nothing was queued")


class JobService(JobStops, LoggingConfigurable):
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

    max_jobs_per_batch = Int(
        1000,
        help="""The most jobs one ``POST jobs/batch`` may carry; a longer batch is refused (400).

        A batch is queued in one ledger transaction, all of it or none, so its size bounds how long
        that transaction holds the allocator lock (about a millisecond per job on SQLite). The
        body is bounded too, by ``GPUSliceService.max_body_bytes``, and the jobs count against the
        per-user limits like jobs submitted one by one.
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
        self.submission_writer = SubmissionWriter(store, self.call)
        """Writes single submissions, those that arrive together in one transaction."""
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

    async def call(self, function: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        return await asyncio.to_thread(functools.partial(function, *args, **kwargs))

    # ---------------------------------------------------------------------------- submitting

    async def submit(self, user: HubUser, body: JobBody, idempotency_key: str | None = None) -> Submission:
        """Queue ``body`` as a job of ``user``: the :class:`Submission` with the job, ``created``
        unless an earlier submission under ``idempotency_key`` had made it (see :mod:`.submissions`).

        :class:`JobBodyError` (400) for a body that cannot run or that a limit refuses,
        :class:`IdempotencyConflict` (409) for a key used before for another body.

        One ledger transaction on the usual path, shared with the submissions that arrive at the
        same time (:mod:`.submission_writer`): the rules that need no database (priority, gang
        size against the cached inventory, quota) are checked first, and the key, the limits and
        the insert together under the lock. A retry is answered whatever the rules say now (a
        limit reached since, a GPU gone from the inventory): the key is looked up before a rule's
        refusal is given, and before the limits by the store.
        """
        digest = None
        if idempotency_key is not None:
            digest = body_digest(body) if body.cell is None else await self.call(body_digest, body)
        nodes = await self.allocator.nodes()
        try:
            spec = self._spec(user, body, nodes)
        except JobBodyError:
            if idempotency_key is not None:
                earlier = await self.call(self.store.find_submission, user.name, idempotency_key, digest)
                if earlier is not None:
                    return self._answer_retry(earlier, idempotency_key)
            raise
        size = payload_size(body)
        submission = await self.submission_writer.submit(
            BatchItem(spec, idempotency_key, digest, size), self.submission_limits()
        )
        if submission.refusal is not None and submission.refusal.rule != "idempotency_key":
            raise SubmissionRefused(limit_message(user.name, submission.refusal, size))
        if not submission.created:
            return self._answer_retry(submission, idempotency_key or "")
        record = submission.record
        self.log.info("job %s (%s) of %s queued: %d GPUs", record.id, record.name, record.owner, record.gpus)
        return submission

    async def submit_many(
        self, user: HubUser, bodies: list[JobBody | JobBodyError], idempotency_key: str | None = None
    ) -> BatchSubmission:
        """Queue every job of ``bodies`` for ``user`` in one ledger transaction, or none of them.

        Each job is checked as :meth:`submit` checks one, and the per-user limits count the
        batch's own jobs; :class:`BatchRefused` (400) lists every job refused, by index, and then
        nothing was queued. A :class:`JobBodyError` in ``bodies`` is a job the caller could not
        parse: refused as it says, and the others are still checked, so that one answer names
        every job to fix. ``created`` is false on the answer when the batch was queued before
        under ``idempotency_key``: the key covers the whole batch (its jobs are stored under
        ``<key>/<index>`` with the digest of the whole batch), so a retry of the same batch
        answers the same jobs and the same key with another batch is an
        :class:`IdempotencyConflict` (409).
        """
        if len(bodies) > self.max_jobs_per_batch:
            raise JobBodyError(
                f"jobs: {len(bodies)} jobs in one batch, and the limit is {self.max_jobs_per_batch}"
                " (JobService.max_jobs_per_batch); split it into several batches"
            )
        keys: list[str | None] = [None] * len(bodies)
        digest = None
        if idempotency_key is not None:
            longest = MAX_KEY_LENGTH - len(f"/{len(bodies) - 1}")
            if len(idempotency_key) > longest:
                raise JobBodyError(
                    f"Idempotency-Key: a batch of {len(bodies)} jobs takes a key of at most {longest}"
                    " characters (its jobs are stored under <key>/<index>)"
                )
            keys = [f"{idempotency_key}/{index}" for index in range(len(bodies))]
            digest = await self.call(_batch_digest, bodies)
        nodes = await self.allocator.nodes()
        items, errors = [], []
        for index, body in enumerate(bodies):
            if isinstance(body, JobBodyError):
                errors.append((index, str(body)))
                continue
            try:
                spec = self._spec(user, body, nodes)
            except JobBodyError as error:
                errors.append((index, str(error)))
                continue
            items.append(BatchItem(spec, keys[index], digest, payload_size(body)))
        if errors:
            if idempotency_key is not None:
                earlier = await self.call(self.store.find_submissions, user.name, keys, digest)
                if earlier[0] is not None:
                    return self._answer_batch_retry(earlier, idempotency_key)
            raise BatchRefused(errors, len(bodies))
        batch = await self.call(self.store.submit_many, items, limits=self.submission_limits())
        conflicts = [refusal for _, refusal in batch.refusals if refusal.rule == "idempotency_key"]
        if conflicts:
            raise IdempotencyConflict(conflict_message(idempotency_key or "", conflicts[0]))
        if batch.refusals:
            refused = [
                (index, limit_message(user.name, refusal, items[index].payload_bytes or 0))
                for index, refusal in batch.refusals
            ]
            raise BatchRefused(refused, len(bodies))
        created = [item.record for item in batch.submissions if item.created]
        if created:
            self.log.info("%d jobs of %s queued in one batch", len(created), user.name)
        else:
            self.log.info("a batch of %d jobs of %s: submitted again under its key", len(bodies), user.name)
        return batch

    def _answer_batch_retry(self, earlier: list[Submission | None], key: str) -> BatchSubmission:
        """The jobs an earlier batch under ``key`` made, or IdempotencyConflict for another batch."""
        for submission in earlier:
            if submission is None or submission.refusal is not None:
                refusal = submission.refusal if submission is not None else None
                raise IdempotencyConflict(
                    conflict_message(key, refusal)
                    if refusal is not None
                    else f"Idempotency-Key {key!r} was used before for a batch of another length; a retry"
                    " must send the same batch under the same key, and a new batch needs a new key"
                )
        return BatchSubmission(tuple(earlier))  # type: ignore[arg-type] - none is None here

    def _spec(self, user: HubUser, body: JobBody, nodes: list[Node]) -> JobSpec:
        """What ``body`` asks the store to queue for ``user``; :class:`JobBodyError` if no rule that
        needs no database lets it (priority, gang size on ``nodes``, quota)."""
        if body.priority == Priority.high.name and not (
            user.admin or set(user.groups) & set(self.high_priority_groups)
        ):
            allowed = ", ".join(sorted(self.high_priority_groups)) or "no group"
            raise JobBodyError(
                f"priority: 'high' is for members of {allowed} and admins, and user {user.name} is neither; "
                "submit with priority 'normal' or 'low'"
            )
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
        policy = self.allocator.quotas
        group = quota.charge_group(user.groups, policy)
        never = quota.batch_never_starts(policy, user.name, group, body.gpus, body.time_limit_s)
        if never is not None:
            raise JobBodyError(never)
        return JobSpec(
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

    def submission_limits(self) -> SubmissionLimits:
        return SubmissionLimits(self.max_queued_jobs_per_user, self.max_payload_bytes_per_user)

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

    async def listing(
        self, owner: str | None, states: list[str] | None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The jobs :meth:`list` finds, as JSON-ready dictionaries without payload or provenance:
        what ``GET jobs`` shows, read as plain rows (see ``JobStore.listing``)."""
        return await self.call(self.store.listing, owner=owner, states=states, limit=limit)

    async def queued(self) -> list[JobRecord]:
        """The queue, in the order the store keeps it."""
        return await self.call(self.store.queued)

    async def queue_view(self) -> list[BatchJob]:
        """The queue as the scheduler weighs it, oldest first, without payloads (``JobStore.queue``)."""
        return await self.call(self.store.queue)

    async def running(self) -> list[JobRecord]:
        return await self.call(self.store.running)

    async def events(self, job_id: str) -> list[JobEvent]:
        return await self.call(self.store.events, job_id)

    async def read_log(self, record: JobRecord, offset: int, follow: bool) -> dict[str, Any]:
        """Log text from ``offset``; with ``follow`` wait up to ``log_follow_seconds`` for some
        (see :meth:`.job_logs.JobLog.read`)."""
        log = JobLog(self.executor, self.get, self.events, self.log_chunk_bytes, self.log_follow_seconds)
        return await log.read(record, offset, follow)

    async def holding_jobs(self) -> HoldingJobs:
        """The jobs holding GPUs: the running ones and those stopping (checkpointing for a
        preemption, or cancelled and not yet gone)."""
        stops = self.stopping()
        running, preempted, cancelling = await asyncio.gather(
            self.call(self.store.running),
            self.call(self.store.list, states=[JobState.preempted.value]),
            asyncio.gather(*(self.call(self.store.get, job_id) for job_id in list(self.cancellations))),
        )
        stopping_records = preempted + [
            record for record in cancelling if record is not None and record.state != JobState.preempted
        ]
        return HoldingJobs(
            running, preempted, stopping_records, {record.id for record in stopping_records} | set(stops)
        )

    # ------------------------------------------------------------------------ state changes

    async def transition(self, job_id: str, state: str, reason: str, **fields: Any) -> JobRecord:
        record = await self.call(self.store.transition, job_id, state, reason, **fields)
        # Every change of a job's state passes here, so this is where the metrics see it.
        if state == JobState.running:
            self.metrics.observe_start(record.group, record.priority, record.started_at - record.created_at)
        elif state == JobState.preempted:
            self.metrics.observe_preemption(record.group)
        elif state in TERMINAL_STATES:
            self.metrics.observe_outcome(record.group, state)
        return record

    async def release(self, lease_id: str) -> Lease | None:
        return await self.allocator.release(lease_id)

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
            cancelled = await self.transition(record.id, JobState.cancelled, reason, ended_at=time.time())
            if record.state == JobState.running:
                # The stop signal goes out before the answer, so that it reaches the job even if
                # the service ends right after; waiting for the process is left to the background.
                with contextlib.suppress(UnknownJob, ValueError):
                    await self.executor.request_stop(run_id(record) or "", self.cancel_grace_seconds)
                self.stop_in_background(record, self.cancel_grace_seconds)
            # A checkpointing job's preemption task stops the process and gives the lease back;
            # seeing the job cancelled, it does not queue it again.
            self.log.info("job %s of %s %s", record.id, record.owner, reason)
            return cancelled

    def publish(
        self, queue: QueueSnapshot, waiting: Iterable[BatchJob], usage: Mapping[str | None, float]
    ) -> None:
        """What a scheduling pass left, where the API reads it: the places and reasons of the jobs
        it left ``waiting`` (replaced whole, so a reader holding it sees one pass), and the queue
        and fair-share metrics. The caller holds :attr:`lock`, so no cancel lands in between."""
        self.queue = queue
        self.metrics.observe_queue((job.group, job.priority.name) for job in waiting)
        self.metrics.observe_fair_share(usage)

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
        if record.payload_kind == CELL_PAYLOAD:
            cell = CellPayload.from_stored(record.payload)
            key = job_key(await self.call(self.master_key), record.id)
            path = await self.call(run_files.write_cell, files, owners, key, record.id, cell)
            argv = [self.python, "-m", "spawner.service.runner", str(path)]
            environment[KEY_VARIABLE] = key.hex()
        else:
            script = await self.call(run_files.write_script, files, owners, record.payload)
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
        return run_files.parse_summary(data)

    async def result_values(self, record: JobRecord) -> bytes:
        """The pickled values of a cell job, as the runner wrote them (the service never loads them).

        FileNotFoundError if there are none; :class:`UntrustedFile` if what is there is not a
        regular file of the job's account (a link to a file the job could not read itself).
        """
        return await self._read_result(record, VALUES_FILE)

    async def _read_result(self, record: JobRecord, name: str) -> bytes:
        return await self.call(
            run_files.read_result, self.job_files_dir(record.id), name, self._file_owners(record)
        )

    async def process_status(self, record: JobRecord) -> ExecutionStatus | None:
        """What the executor knows of a running job's process; None if it never started one."""
        try:
            return await self.executor.status(run_id(record) or "")
        except (UnknownJob, ValueError):
            return None


def _batch_digest(bodies: list[JobBody | JobBodyError]) -> str:
    """One SHA-256 of a whole batch: of its jobs' digests in order (blocking: call in a thread); a
    job that did not parse counts by its error."""
    digests = (body_digest(body) if isinstance(body, JobBody) else f"refused: {body}" for body in bodies)
    return hashlib.sha256("\n".join(digests).encode("utf-8", "surrogatepass")).hexdigest()
