"""Durable batch jobs: what was submitted, and every step of each job's life with its reason.

Jobs live in the ledger's database and their writes take the allocator lock (``Ledger._write``),
so a job's transitions and the grants of its leases are serialised with every other allocation:
the scheduler never sees a job running without the lease it was granted, or the other way round,
in an order that could not have happened. The service keeps no job state of its own, so a
restart finds the queue and the running jobs as they were.

A job moves only along these edges; any other transition raises :class:`JobStateError`::

    queued -> running -> succeeded | failed | cancelled
              running -> preempted -> queued | cancelled
    queued -> cancelled | failed            (failed: it can never start)

A job cancelled while running or checkpointing is ``cancelled`` at once; its lease is given back
once its process is gone (``spawner.service.jobs``), so its GPUs are never lent twice.

Each transition, and the submission itself (from no state to ``queued``), is one row of
``job_events`` with its time and reason.

A submission may carry an idempotency key (:meth:`JobStore.submit_checked`): the same key from the
same owner answers the job it created the first time, so a client retrying after a lost answer
creates nothing twice. The key, the owner's limits (queued jobs, payload bytes of unfinished
jobs) and the new job are checked and written in one transaction under the allocator lock, so
concurrent submissions can neither pass a limit together nor both use one key. Many jobs go in
together the same way (:meth:`JobStore.submit_many`): one transaction, all of them or none, the
limits counted across the batch itself.

The paths that run at every request read plain rows of the columns they need (SQLAlchemy Core),
never ORM objects: a submission inserts its three rows, a listing reads no payloads or
provenance, and the scheduler's view of the queue (:meth:`JobStore.queue`) reads ten columns.

A job's payload is what it needs to start (again): once it has ended it is dropped from the row
(set to ``""``), so the database holds the scripts and cells of unfinished jobs only; its
provenance stays.

A job is ``running`` only once its process has started. A start that a crash of the service cut
short before that leaves the job ``queued``; the next service undoes what the start had done
(:meth:`JobStore.undo_launch` forgets its grant, see ``spawner.service.launches``) and starts it
again under the same run id.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Integer, Text, bindparam, case, cast, func, literal, literal_column, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from ..core.scheduler import BatchJob
from ..core.vocabulary import PAYLOAD_KINDS, TERMINAL_STATES, UNFINISHED_STATES, JobState, Priority
from .bulk_read import (
    as_json_objects,
    as_separated_json_objects,
    as_separated_values,
    one_step_reads,
    read_json_objects,
    read_separated,
)
from .listed_objects import JobVersion, ListedObjects, job_version
from .models import JobEventRow, JobRow, JobSubmissionRow, LeaseRow
from .store import Ledger

JOB_ID_PREFIX = "job-"
DEFAULT_TIME_LIMIT_S = 24 * 3600.0
"""A job submitted without a time limit may run a day; backfill needs every job to have one."""


FINAL_STATES = TERMINAL_STATES

LEGAL_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.queued: frozenset({JobState.running, JobState.cancelled, JobState.failed}),
    JobState.running: frozenset(
        {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.preempted}
    ),
    JobState.preempted: frozenset({JobState.queued, JobState.cancelled}),
    JobState.succeeded: frozenset(),
    JobState.failed: frozenset(),
    JobState.cancelled: frozenset(),
}

RUN_FIELDS = ("started_at", "ended_at", "exit_code", "lease_id", "node", "gpu_uuids", "pool", "borrowed")
"""The columns a transition may set: where and how the current run of the job went."""


class JobStateError(ValueError):
    """A transition the state machine does not allow, e.g. a finished job asked to run again."""


class UnknownJobError(LookupError):
    """No job has the id given."""


@dataclass(frozen=True)
class JobSpec:
    """What a submission asks for; the job's id, times and state are the store's to set.

    ``gpus`` whole GPUs on one node (0 for a CPU job), of one of ``gpu_models`` if any are named.
    ``provenance`` is kept as given (cell text, working directory, package hash ...), so that a
    result can be traced back to what produced it.
    """

    owner: str
    group: str | None
    name: str
    payload: str
    workdir: str
    environment: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    gpus: int = 1
    gpu_models: Iterable[str] = ()
    cpu_milli: int = 0
    memory_mib: int = 0
    priority: str | Priority = "normal"
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    provenance: Mapping[str, Any] = field(default_factory=dict)
    payload_kind: str = "script"

    def __post_init__(self) -> None:
        object.__setattr__(self, "environment", dict(self.environment))
        object.__setattr__(self, "provenance", dict(self.provenance))
        object.__setattr__(self, "gpu_models", tuple(sorted(set(self.gpu_models))))
        object.__setattr__(self, "priority", _priority_name(self.priority))
        if not self.owner:
            raise ValueError("a job needs an owner")
        if self.gpus < 0:
            raise ValueError(f"a job asks for 0 or more GPUs, got {self.gpus}")
        if self.cpu_milli < 0 or self.memory_mib < 0:
            raise ValueError("cpu_milli and memory_mib must be 0 or more")
        if not self.time_limit_s > 0:
            raise ValueError(f"a job's time limit must be more than 0 seconds, got {self.time_limit_s}")
        if self.payload_kind not in PAYLOAD_KINDS:
            raise ValueError(
                f"payload_kind must be one of {', '.join(PAYLOAD_KINDS)}, got {self.payload_kind!r}"
            )
        bad_environment = [key for key, value in self.environment.items() if not isinstance(value, str)]
        if bad_environment:
            raise ValueError(f"environment values must be strings: {', '.join(sorted(bad_environment))}")


@dataclass(frozen=True)
class JobRecord:
    """A job as the ledger holds it: its submission, its state and its current (or last) run."""

    id: str
    owner: str
    group: str | None
    name: str
    payload_kind: str
    payload: str
    workdir: str
    environment: dict[str, str]
    image: str | None
    gpus: int
    gpu_models: tuple[str, ...]
    cpu_milli: int
    memory_mib: int
    priority: str
    time_limit_s: float
    state: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    reason: str
    lease_id: str | None
    node: str | None
    gpu_uuids: tuple[str, ...]
    pool: str | None
    borrowed: bool
    attempts: int
    provenance: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        """A record from a :class:`JobRow` or a plain row of ``JOB_COLUMNS`` (same names)."""
        values = {name: getattr(row, name) for name in _RECORD_FIELDS}
        values["gpu_models"] = tuple(row.gpu_models)
        values["gpu_uuids"] = tuple(row.gpu_uuids)
        values["environment"] = dict(row.environment)
        values["provenance"] = dict(row.provenance)
        return cls(**values)

    @property
    def final(self) -> bool:
        return JobState(self.state) in FINAL_STATES

    def as_batch_job(self) -> BatchJob:
        """The job as the pure scheduler sees it, in its queue order (submission time)."""
        return BatchJob(
            id=self.id,
            owner=self.owner,
            group=self.group,
            gpus=self.gpus,
            priority=Priority[self.priority],
            submitted_at=self.created_at,
            time_limit_s=self.time_limit_s,
            gpu_models=frozenset(self.gpu_models),
            cpu_milli=self.cpu_milli,
            memory_mib=self.memory_mib,
        )

    def to_dict(self, include_payload: bool = False, include_provenance: bool = True) -> dict[str, Any]:
        """JSON-ready; the script is left out unless asked for, and listings may leave out the
        provenance too (a cell's carries the whole package list). Shallow: ``asdict``'s deep copy
        of the provenance cost more than reading the job."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        values["gpu_models"] = list(self.gpu_models)
        values["gpu_uuids"] = list(self.gpu_uuids)
        if not include_payload:
            del values["payload"]
        if not include_provenance:
            del values["provenance"]
        return values


class ListedJob(NamedTuple):
    """A job as a listing shows it: ``JobRecord.to_dict(include_provenance=False)`` as the text of
    a JSON object, with the fields a listing is sorted and completed by."""

    created_at: float
    id: str
    state: str
    json_object: str


_listed_job = functools.partial(tuple.__new__, ListedJob)
"""A :class:`ListedJob` from a tuple of its fields, called from C (``map``): a listing makes
hundreds, and a Python call per job was a tenth of the service's GIL time under load."""


_RECORD_FIELDS = tuple(attribute.name for attribute in fields(JobRecord))
"""The names of a record's fields, which are also the names of :class:`JobRow`'s attributes."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One transition; ``from_state`` is ``None`` for the submission."""

    at: float
    from_state: str | None
    to_state: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SubmissionLimits:
    """What one owner may have waiting at once; 0 leaves a figure unbounded."""

    max_queued_jobs: int = 0
    """Jobs in state ``queued``, the new one included."""
    max_payload_bytes: int = 0
    """Payload bytes (scripts, cells) of the owner's unfinished jobs, the new one included."""


@dataclass(frozen=True)
class SubmissionUsage:
    """What one owner has waiting now, as :class:`SubmissionLimits` counts it."""

    queued_jobs: int
    payload_bytes: int


@dataclass(frozen=True)
class SubmissionRefusal:
    """Why a submission was not queued: ``rule`` is ``"idempotency_key"`` (the key was used for
    another body), ``"max_queued_jobs"`` or ``"max_payload_bytes"``; ``limit`` and ``usage`` are
    the figures of a limit (usage before this job), ``job_id`` the job a reused key names."""

    rule: str
    limit: int = 0
    usage: int = 0
    job_id: str | None = None


@dataclass(frozen=True)
class Submission:
    """What :meth:`JobStore.submit_checked` did: queued ``record`` (``created``), found the job an
    earlier submission under the same key created (``record``, not ``created``), or refused."""

    record: JobRecord | None = None
    created: bool = False
    refusal: SubmissionRefusal | None = None


@dataclass(frozen=True)
class BatchItem:
    """One job of :meth:`JobStore.submit_many`, with what :meth:`JobStore.submit_checked` takes."""

    spec: JobSpec
    idempotency_key: str | None = None
    body_sha256: str | None = None
    payload_bytes: int | None = None
    """What the payload counts against the owner's limit; its UTF-8 size unless given."""


@dataclass(frozen=True)
class BatchSubmission:
    """What :meth:`JobStore.submit_many` did, one :class:`Submission` per job in the batch's order.

    All or nothing: when any job is refused, every job that was not found under its key carries
    ``record=None``, and nothing was written.
    """

    submissions: tuple[Submission, ...]

    @property
    def refusals(self) -> list[tuple[int, SubmissionRefusal]]:
        """The refused jobs by their index in the batch; empty when the batch was accepted."""
        return [(index, item.refusal) for index, item in enumerate(self.submissions) if item.refusal]

    @property
    def accepted(self) -> bool:
        return not self.refusals

    @property
    def records(self) -> list[JobRecord]:
        """Every job of an accepted batch, in its order (new ones and those found under their keys)."""
        return [item.record for item in self.submissions if item.record is not None]


JOB_COLUMNS = tuple(attribute.columns[0].label(attribute.key) for attribute in JobRow.__mapper__.column_attrs)
"""Every column of a job, labelled with its attribute's name, for reads that need no ORM object."""

LISTING_COLUMNS = tuple(column for column in JOB_COLUMNS if column.key not in ("payload", "provenance"))
"""What a listing shows of a job: everything but its payload (never shown) and its provenance
(``GET jobs/{id}`` has it; a cell's holds its whole package list)."""

QUEUE_COLUMNS = (
    JobRow.id,
    JobRow.owner,
    JobRow.group,
    JobRow.gpus,
    JobRow.priority,
    JobRow.created_at,
    JobRow.time_limit_s,
    cast(JobRow.gpu_models, Text),
    JobRow.cpu_milli,
    JobRow.memory_mib,
)
"""What the scheduler needs of a queued job (a :class:`BatchJob`), in its constructor's order."""

_JSON_FIELDS = ("environment", "gpu_models", "gpu_uuids")
"""The JSON columns a listing shows."""

_LISTING_SELECT = tuple(
    cast(column, Text).label(column.key) if column.key in _JSON_FIELDS else column
    for column in LISTING_COLUMNS
)
"""``LISTING_COLUMNS`` with the JSON ones as their text, which :meth:`JobStore.listing` decodes."""

_COLUMN_NAMES = {attribute.key: attribute.columns[0].name for attribute in JobRow.__mapper__.column_attrs}
"""Each job attribute's column name (``group`` is ``group_name``), for Core inserts."""


class JobStore:
    """Batch jobs in a :class:`Ledger`'s database, written under its allocator lock."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.listed_objects = ListedObjects()
        """The JSON objects of job versions listed before (see :meth:`listing`)."""

    def __repr__(self) -> str:
        return f"JobStore({self.ledger!r})"

    # ------------------------------------------------------------------------------- writes

    def submit(self, spec: JobSpec, now: float | None = None) -> JobRecord:
        """Queue a new job under a fresh id, and record its submission as its first event."""
        return self.ledger._write(
            lambda session: _insert(session, self.ledger._now(now), [(spec, None, None, None)])[0]
        )

    def submit_checked(
        self,
        spec: JobSpec,
        *,
        idempotency_key: str | None = None,
        body_sha256: str | None = None,
        payload_bytes: int | None = None,
        limits: SubmissionLimits = SubmissionLimits(),
        now: float | None = None,
    ) -> Submission:
        """Queue ``spec`` unless its key was used before or its owner's limits refuse it.

        One write transaction, under the allocator lock, does it all: a key the owner used before
        answers the job it created then (or a refusal if ``body_sha256`` differs); else the
        owner's queued jobs and the payload bytes of their unfinished jobs are counted with this
        one and checked against ``limits``; else the job, its first event and its submission row
        are written. Concurrent submissions are serialised by the lock, so they cannot pass a
        limit together, and a key is used once. ``payload_bytes`` defaults to the stored
        payload's UTF-8 size.
        """
        item = BatchItem(spec, idempotency_key, body_sha256, payload_bytes)
        return self.submit_many([item], limits=limits, now=now).submissions[0]

    def submit_many(
        self,
        items: Iterable[BatchItem],
        *,
        limits: SubmissionLimits = SubmissionLimits(),
        now: float | None = None,
    ) -> BatchSubmission:
        """Queue every job of ``items`` in one transaction, or none of them, saying why per job.

        Each job is checked as :meth:`submit_checked` checks one, in the batch's order, with the
        limits counted across the batch itself: an owner's earlier jobs in the batch count as
        queued (and their payload bytes as held) when a later one is checked, so a batch cannot
        pass a limit that the same jobs submitted one by one would meet. A job whose key its
        owner used before is answered with the job it made then, and is no refusal (unless its
        ``body_sha256`` differs). If any job is refused, nothing is written and the answer lists
        every refusal; else every new job, its first event and its submission row are written,
        all at the same time ``now``, under the allocator lock.
        """
        batch = list(items)
        return BatchSubmission(
            self.ledger._write(
                lambda session: self._checked(session, batch, limits, now, all_or_nothing=True)
            )
        )

    def submit_each(
        self,
        items: Iterable[BatchItem],
        *,
        limits: SubmissionLimits = SubmissionLimits(),
        now: float | None = None,
    ) -> list[Submission]:
        """Queue the jobs of ``items`` as if each had been given to :meth:`submit_checked` in turn,
        but in one transaction: a refused job is answered with its refusal and the others are
        still queued.

        For submissions that arrive together from different callers (the service's group commit,
        ``service/submission_writer.py``): one transaction, one allocator lock and one commit
        serve them all, and every caller gets the answer that its own submission, made alone
        just after the earlier ones of the group, would have got. Two of them under the same
        owner and key are one job, as two retries one after the other would be.
        """
        batch = list(items)
        return self.ledger._write(
            lambda session: self._checked(session, batch, limits, now, all_or_nothing=False)
        )

    def _checked(
        self,
        session: Session,
        batch: list[BatchItem],
        limits: SubmissionLimits,
        now: float | None,
        *,
        all_or_nothing: bool,
    ) -> tuple[Submission, ...]:
        """The transaction of :meth:`submit_many` (``all_or_nothing``) and :meth:`submit_each`."""
        sizes = [
            _utf8_size(item.spec.payload) if item.payload_bytes is None else item.payload_bytes
            for item in batch
        ]
        answers: list[Submission | None] = [None] * len(batch)
        earlier = _submissions_under(
            session, [(item.spec.owner, item.idempotency_key) for item in batch if item.idempotency_key]
        )
        found: dict[int, str] = {}
        """Jobs of the batch that an earlier submission under their key made: their ids."""
        same_as: dict[int, int] = {}
        """Jobs of the batch under the key of an earlier job of the same batch: that job's index."""
        keyed: dict[tuple[str, str], int] = {}
        usage: dict[str, SubmissionUsage] = {}
        for index, (item, size) in enumerate(zip(batch, sizes, strict=True)):
            owner = item.spec.owner
            key = (owner, item.idempotency_key) if item.idempotency_key else None
            before = earlier.get(key) if key is not None else None
            if before is not None:
                if _other_body(before, item.body_sha256):
                    answers[index] = Submission(
                        refusal=SubmissionRefusal("idempotency_key", job_id=before.job_id)
                    )
                else:
                    found[index] = before.job_id
                continue
            if key is not None and key in keyed:
                same_as[index] = keyed[key]
                continue
            if owner not in usage:
                usage[owner] = _usage_of(session, owner, limits)
            refusal = _over_limits(limits, usage[owner], size)
            if refusal is not None:
                answers[index] = Submission(refusal=refusal)
                continue
            if key is not None:
                keyed[key] = index
            usage[owner] = SubmissionUsage(usage[owner].queued_jobs + 1, usage[owner].payload_bytes + size)
        if all_or_nothing and any(answer is not None for answer in answers):
            return tuple(answer or Submission() for answer in answers)
        records = _records_by_id(session, found.values())
        for index, job_id in found.items():
            answers[index] = Submission(record=records[job_id], created=False)
        new = [index for index, answer in enumerate(answers) if answer is None and index not in same_as]
        created = _insert(
            session,
            self.ledger._now(now),
            [
                (batch[index].spec, batch[index].idempotency_key, batch[index].body_sha256, sizes[index])
                for index in new
            ],
        )
        for index, record in zip(new, created, strict=True):
            answers[index] = Submission(record=record, created=True)
        for index, first in same_as.items():
            made = answers[first]
            assert made is not None and made.record is not None
            if _other_body(batch[first], batch[index].body_sha256):
                answers[index] = Submission(
                    refusal=SubmissionRefusal("idempotency_key", job_id=made.record.id)
                )
            else:
                answers[index] = Submission(record=made.record, created=False)
        return tuple(answer or Submission() for answer in answers)

    def find_submission(
        self, owner: str, idempotency_key: str, body_sha256: str | None = None
    ) -> Submission | None:
        """What an earlier submission of ``owner`` under ``idempotency_key`` came to, None if there
        was none: its job (not ``created``), or the refusal of a different body, as
        :meth:`submit_checked` would answer. A read, so that a retry is answered before anything
        else is checked; ``submit_checked`` looks again under the lock."""

        return self.find_submissions(owner, [idempotency_key], body_sha256)[0]

    def find_submissions(
        self, owner: str, idempotency_keys: Sequence[str], body_sha256: str | None = None
    ) -> list[Submission | None]:
        """:meth:`find_submission` for many keys of one owner at once (a batch's), in their order."""

        def work(session: Session) -> list[Submission | None]:
            earlier = _submissions_under(session, [(owner, key) for key in idempotency_keys])
            found = [earlier.get((owner, key)) for key in idempotency_keys]
            records = _records_by_id(
                session,
                [row.job_id for row in found if row is not None and not _other_body(row, body_sha256)],
            )
            return [
                None
                if row is None
                else Submission(refusal=SubmissionRefusal("idempotency_key", job_id=row.job_id))
                if _other_body(row, body_sha256)
                else Submission(record=records[row.job_id], created=False)
                for row in found
            ]

        return self.ledger._read(work)

    def usage(self, owner: str) -> SubmissionUsage:
        """What ``owner`` has waiting now: queued jobs, and payload bytes of unfinished jobs."""
        return self.ledger._read(lambda session: _usage_of(session, owner))

    def undo_launch(self, job_id: str, lease_id: str, reason: str, now: float | None = None) -> JobRecord:
        """Forget the grant of a run that never started, and say so in the job's events.

        A service that crashed while it started a job leaves the job ``queued`` with its next
        run's lease granted (and maybe released since), although no process ever ran. The job is
        still queued and starts again under the same run id; a lease id names one grant, so that
        grant is removed from the ledger here. Nothing ran on it, so nothing is owed: the
        GPU-seconds of a released one were charged already, a live one charges none. Only the
        lease of the run the job would start next may be undone, and only while it is queued.
        """

        def work(session: Session) -> JobRecord:
            row = session.get(JobRow, job_id)
            if row is None:
                raise UnknownJobError(f"no job {job_id!r}")
            if row.state != JobState.queued.value or lease_id != f"{job_id}-{row.attempts + 1}":
                raise JobStateError(
                    f"job {job_id} is {row.state} at attempt {row.attempts}: {lease_id} is not the run it"
                    " would start next, so its launch is not undone"
                )
            lease = session.get(LeaseRow, lease_id)
            if lease is not None:
                if lease.holder != job_id:
                    raise JobStateError(f"lease {lease_id} is held by {lease.holder}, not by job {job_id}")
                session.delete(lease)
            _add_event(session, job_id, self.ledger._now(now), row.state, row.state, reason)
            session.flush()
            return JobRecord.from_row(row)

        return self.ledger._write(work)

    def transition(
        self, job_id: str, to_state: JobState | str, reason: str, now: float | None = None, **run_fields: Any
    ) -> JobRecord:
        """Move a job to ``to_state`` and record why; ``run_fields`` set the columns of its run.

        ``run_fields`` are among ``RUN_FIELDS``. What follows from the state is filled in unless
        given: on ``running`` the start time (and one more attempt counted); on a final state the
        end time; back to ``queued`` the previous run's lease and placement are cleared, since a
        queued job holds nothing. A final state also drops the payload (see the module's docstring).
        """
        target = _state(to_state)
        unknown = sorted(set(run_fields) - set(RUN_FIELDS))
        if unknown:
            raise TypeError(f"transition() got fields it cannot set: {', '.join(unknown)}")
        if "gpu_uuids" in run_fields:
            run_fields["gpu_uuids"] = list(run_fields["gpu_uuids"])

        def work(session: Session) -> JobRecord:
            at = self.ledger._now(now)
            row = session.get(JobRow, job_id)
            if row is None:
                raise UnknownJobError(f"no job {job_id!r}")
            source = JobState(row.state)
            if target not in LEGAL_TRANSITIONS[source]:
                raise JobStateError(
                    f"job {job_id} cannot go from {source.value} to {target.value}"
                    + (" (it has finished)" if source in FINAL_STATES else "")
                )
            updates = _implied_fields(target, at) | run_fields
            if target is JobState.running:
                row.attempts += 1
            for name, value in updates.items():
                setattr(row, name, value)
            row.state, row.reason = target.value, reason
            if target in FINAL_STATES:
                row.payload = ""  # it never starts again; the database keeps unfinished jobs' payloads only
            _add_event(session, job_id, at, source.value, target.value, reason)
            session.flush()
            return JobRecord.from_row(row)

        return self.ledger._write(work)

    # -------------------------------------------------------------------------------- reads

    def get(self, job_id: str) -> JobRecord | None:
        def work(session: Session) -> JobRecord | None:
            row = session.get(JobRow, job_id)
            return None if row is None else JobRecord.from_row(row)

        return self.ledger._read(work)

    def list(
        self,
        owner: str | None = None,
        states: Iterable[JobState | str] | None = None,
        limit: int | None = None,
    ) -> list[JobRecord]:
        """Jobs newest first, of one owner or of everyone, in some states or in any; the newest
        ``limit`` of them if given."""
        return self._records(_list_query(JOB_COLUMNS, owner, states, limit))

    def listing(
        self,
        owner: str | None = None,
        states: Iterable[JobState | str] | None = None,
        limit: int | None = None,
    ) -> list[ListedJob]:
        """What :meth:`list` finds, newest first, each job as the JSON object of
        ``JobRecord.to_dict(include_provenance=False)``, read straight from ``LISTING_COLUMNS``.

        The listing endpoint's path: a user's listing returns hundreds of jobs, which are only
        passed on to the client, and a listing shows mostly the jobs the one before it showed. It
        reads which versions of the jobs it shows (see :mod:`.listed_objects`) and has only the
        versions not listed before written as JSON, in the same read transaction, so that both
        reads see the same rows. SQLite writes those objects itself (see
        :func:`~.bulk_read.as_separated_json_objects`), so that no Python object is made per
        field, neither here nor to encode the answer; other databases' rows are encoded here.
        """

        def work(session: Session) -> list[ListedJob]:
            connection = session.connection()
            wanted = None if states is None else tuple(sorted(_state(state).value for state in states))
            query = _listing_versions(wanted, owner is not None, limit is not None)
            parameters = {"owner": owner, "limit": limit}
            created_at: Iterable[float]
            if one_step_reads(connection):
                values = read_separated(connection, _listing_versions_text(query), **parameters)
                texts, ids, job_states, versions = (values[offset::4] for offset in range(4))
                created_at = map(float, texts)
            else:
                rows = connection.execute(query, parameters).all()
                created_at, ids, job_states, versions = ([row[offset] for row in rows] for offset in range(4))
            objects = self.listed_objects.find(versions)
            if None in objects:
                objects = self._written(connection, ids, versions, objects)
            # Newest first, ties by id; built and sorted by C code, no Python step per job.
            listed = sorted(zip(created_at, ids, job_states, objects, strict=True), reverse=True)
            return list(map(_listed_job, listed))

        return self.ledger._read(work)

    def _written(
        self,
        connection: Any,
        ids: Sequence[str],
        versions: Sequence[JobVersion],
        objects: Sequence[str | None],
    ) -> list[str]:
        """``objects`` (the kept JSON objects of a listing's jobs, ``ids`` at ``versions``), with
        those not kept written, in the caller's read transaction, and kept from now on."""
        missing = [job_id for job_id, found in zip(ids, objects, strict=True) if found is None]
        if one_step_reads(connection):
            written = read_separated(connection, _json_objects_by_id(), ids=json.dumps(missing))
            written_versions = map(job_version, written[0::4], written[1::4], written[2::4])
            fresh = dict(zip(written_versions, written[3::4], strict=True))
        else:
            fresh = _encoded_objects(
                connection.execute(select(*_LISTING_SELECT).where(JobRow.id.in_(missing)))
            )
        self.listed_objects.keep(fresh)
        return [
            fresh[version] if found is None else found
            for version, found in zip(versions, objects, strict=True)
        ]

    def queue(self) -> list[BatchJob]:
        """The queue as the scheduler sees it, oldest first: the columns of a :class:`BatchJob`
        only. A pass reads the whole queue every few seconds, thousands of jobs on a busy day, so
        no payload, environment or provenance is read for it; :meth:`get` the jobs it starts."""
        query = (
            select(*QUEUE_COLUMNS)
            .where(JobRow.state == JobState.queued.value)
            .order_by(JobRow.created_at, JobRow.id)
        )

        def work(session: Session) -> list[BatchJob]:
            connection = session.connection()
            if one_step_reads(connection):
                rows = [tuple(job.values()) for job in read_json_objects(connection, _json_queue())]
                rows.sort(key=lambda row: (row[5], row[0]))  # (created_at, id), as the query orders
            else:
                rows = connection.execute(query)
            models: dict[str, frozenset[str]] = {}  # one set per distinct list of GPU models
            queue = []
            for row in rows:
                (job_id, owner, group, gpus, priority, created_at, time_limit_s, gpu_models, cpu, memory) = (
                    row
                )
                wanted = models.get(gpu_models) if isinstance(gpu_models, str) else frozenset(gpu_models)
                if wanted is None:
                    wanted = models[gpu_models] = frozenset(json.loads(gpu_models))
                queue.append(
                    BatchJob(
                        job_id,
                        owner,
                        group,
                        gpus,
                        Priority[priority],
                        created_at,
                        time_limit_s,
                        wanted,
                        cpu,
                        memory,
                    )
                )
            return queue

        return self.ledger._read(work)

    def queued(self) -> list[JobRecord]:
        """The queue, oldest first: the order the scheduler's fair share starts from."""
        query = (
            select(*JOB_COLUMNS)
            .where(JobRow.state == JobState.queued.value)
            .order_by(JobRow.created_at, JobRow.id)
        )
        return self._records(query)

    def running(self) -> list[JobRecord]:
        """Running jobs in the order they started."""
        query = (
            select(*JOB_COLUMNS)
            .where(JobRow.state == JobState.running.value)
            .order_by(JobRow.started_at, JobRow.id)
        )
        return self._records(query)

    def events(self, job_id: str) -> list[JobEvent]:
        """The job's submission and transitions in the order they happened (empty if unknown)."""
        query = select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.number)

        def work(session: Session) -> list[JobEvent]:
            return [
                JobEvent(row.at, row.from_state, row.to_state, row.reason) for row in session.scalars(query)
            ]

        return self.ledger._read(work)

    def _records(self, query: Any) -> list[JobRecord]:
        """Records from plain rows of ``JOB_COLUMNS``: a listing reads hundreds of jobs, and ORM
        objects, which nothing here changes, take a fifth longer to build."""
        return self.ledger._read(lambda session: [JobRecord.from_row(row) for row in session.execute(query)])


# ------------------------------------------------------------------------------- helpers


def _state(state: JobState | str) -> JobState:
    try:
        return JobState(state)
    except ValueError:
        known = ", ".join(member.value for member in JobState)
        raise ValueError(f"unknown job state {state!r}; the states are {known}") from None


def _priority_name(priority: str | Priority) -> str:
    if isinstance(priority, Priority):
        return priority.name
    if priority not in Priority.__members__:
        known = ", ".join(Priority.__members__)
        raise ValueError(f"unknown priority {priority!r}; the priorities are {known}")
    return priority


def _implied_fields(target: JobState, at: float) -> dict[str, Any]:
    if target is JobState.running:
        return {"started_at": at, "ended_at": None, "exit_code": None}
    if target in FINAL_STATES:
        return {"ended_at": at}
    if target is JobState.queued:
        return {
            "started_at": None,
            "ended_at": None,
            "exit_code": None,
            "lease_id": None,
            "node": None,
            "gpu_uuids": [],
            "pool": None,
            "borrowed": False,
        }
    return {}


@functools.lru_cache(maxsize=64)
def _listing_versions(states: tuple[str, ...] | None, by_owner: bool, limited: bool) -> Select:
    """Which job versions a listing of :meth:`JobStore.listing` shows: created_at, id, state and
    :func:`~.listed_objects.job_version` per job, newest first. Built once per shape: ``owner``
    and ``limit`` are its parameters (constructing the statement cost more than running it)."""
    version = JobRow.id + "/" + JobRow.state + "/" + cast(JobRow.attempts, Text)  # see job_version
    query = select(JobRow.created_at, JobRow.id, JobRow.state, version).order_by(
        JobRow.created_at.desc(), JobRow.id.desc()
    )
    if by_owner:
        query = query.where(JobRow.owner == bindparam("owner"))
    if states is not None:
        # One parameter per state, each with its value (not an expanding list): the statement
        # is built per tuple of states anyway, and SQLite then runs it as compiled once.
        query = query.where(JobRow.state.in_([literal(state) for state in states]))
    if limited:
        query = query.limit(bindparam("limit", type_=Integer))
    return query


@functools.lru_cache(maxsize=64)
def _listing_versions_text(query: Select) -> Select:
    """:func:`_listing_versions`'s query as one text, for SQLite (see
    :func:`~.bulk_read.as_separated_values`), built once per query."""
    return as_separated_values(query)


@functools.lru_cache(maxsize=1)
def _json_objects_by_id() -> Select:
    """The listing's JSON object (``LISTING_COLUMNS``) of each job whose id is in the JSON array
    ``ids``, behind its id, state and attempts, for SQLite."""
    chosen = select(literal_column("value")).select_from(func.json_each(bindparam("ids")))
    query = select(*LISTING_COLUMNS).where(JobRow.id.in_(chosen))
    return as_separated_json_objects(query, ("id", "state", "attempts"))


@functools.lru_cache(maxsize=1)
def _json_queue() -> Select:
    """The scheduler's queue (``QUEUE_COLUMNS``, oldest first) as one JSON text, for SQLite."""
    columns = [column.label(f"c{index}") for index, column in enumerate(QUEUE_COLUMNS)]
    return as_json_objects(select(*columns).where(JobRow.state == JobState.queued.value))


def _encoded_objects(result: Any) -> dict[JobVersion, str]:
    """Rows of ``_LISTING_SELECT`` as a listing's JSON objects by version, encoded here (databases
    other than SQLite)."""
    names = tuple(result.keys())
    json_at = [names.index(name) for name in _JSON_FIELDS]
    decoded: dict[str, Any] = {}  # most jobs' environments and GPU lists are alike
    objects = {}
    for row in result:
        values = list(row)
        for at in json_at:
            text = values[at]
            value = decoded.get(text) if isinstance(text, str) else text
            if value is None:
                value = decoded[text] = json.loads(text)
            values[at] = value
        job = dict(zip(names, values, strict=True))
        objects[job_version(job["id"], job["state"], str(job["attempts"]))] = orjson.dumps(job).decode()
    return objects


def _list_query(
    columns: Iterable[Any], owner: str | None, states: Iterable[JobState | str] | None, limit: int | None
) -> Select:
    query = select(*columns).order_by(JobRow.created_at.desc(), JobRow.id.desc())
    if owner is not None:
        query = query.where(JobRow.owner == owner)
    if states is not None:
        query = query.where(JobRow.state.in_([_state(state).value for state in states]))
    if limit is not None:
        query = query.limit(limit)
    return query


def _insert(
    session: Session,
    created_at: float,
    jobs: Sequence[tuple[JobSpec, str | None, str | None, int | None]],
) -> list[JobRecord]:
    """Write new queued jobs, each with its first event and its submission row, in three Core
    inserts (many rows each); ``jobs`` are (spec, idempotency key, body digest, payload bytes).
    The caller holds the lock."""
    if not jobs:
        return []
    ids = _new_job_ids(session, len(jobs))
    records = [_new_record(job_id, spec, created_at) for job_id, (spec, *_) in zip(ids, jobs, strict=True)]
    connection = session.connection()
    connection.execute(
        JobRow.__table__.insert(),
        [
            {_COLUMN_NAMES[name]: value for name, value in _row_values(record, spec).items()}
            for record, (spec, *_) in zip(records, jobs, strict=True)
        ],
    )
    # The job before its event and submission, which refer to it.
    connection.execute(
        JobEventRow.__table__.insert(),
        [
            {
                "job_id": job_id,
                "number": 0,
                "at": created_at,
                "from_state": None,
                "to_state": "queued",
                "reason": "submitted",
            }
            for job_id in ids
        ],
    )
    connection.execute(
        JobSubmissionRow.__table__.insert(),
        [
            {
                "job_id": job_id,
                "owner": spec.owner,
                "idempotency_key": key,
                "body_sha256": digest,
                "payload_bytes": _utf8_size(spec.payload) if size is None else size,
                "created_at": created_at,
            }
            for job_id, (spec, key, digest, size) in zip(ids, jobs, strict=True)
        ],
    )
    return records


def _new_record(job_id: str, spec: JobSpec, created_at: float) -> JobRecord:
    """The record of a job just submitted: queued, never run."""
    return JobRecord(
        id=job_id,
        owner=spec.owner,
        group=spec.group,
        name=spec.name,
        payload_kind=spec.payload_kind,
        payload=spec.payload,
        workdir=spec.workdir,
        environment=dict(spec.environment),
        image=spec.image,
        gpus=spec.gpus,
        gpu_models=tuple(spec.gpu_models),
        cpu_milli=spec.cpu_milli,
        memory_mib=spec.memory_mib,
        priority=str(spec.priority),
        time_limit_s=float(spec.time_limit_s),
        state=JobState.queued.value,
        created_at=created_at,
        started_at=None,
        ended_at=None,
        exit_code=None,
        reason="submitted",
        lease_id=None,
        node=None,
        gpu_uuids=(),
        pool=None,
        borrowed=False,
        attempts=0,
        provenance=dict(spec.provenance),
    )


def _row_values(record: JobRecord, spec: JobSpec) -> dict[str, Any]:
    """The row of a new job, by attribute name: the record's values, lists where JSON holds them."""
    values = {name: getattr(record, name) for name in _RECORD_FIELDS}
    values["gpu_models"] = list(record.gpu_models)
    values["gpu_uuids"] = []
    return values


def _add_event(
    session: Session, job_id: str, at: float, from_state: str | None, to_state: str, reason: str
) -> None:
    """One more event of the job, numbered after its earlier ones (under the allocator lock)."""
    number = session.scalar(select(func.count()).where(JobEventRow.job_id == job_id))
    session.add(
        JobEventRow(
            job_id=job_id, number=number, at=at, from_state=from_state, to_state=to_state, reason=reason
        )
    )


def _submissions_under(
    session: Session, keys: Sequence[tuple[str, str | None]]
) -> dict[tuple[str, str], JobSubmissionRow]:
    """The earlier submissions under the (owner, idempotency key) pairs given, by pair (plain
    rows with ``job_id`` and ``body_sha256``)."""
    wanted = {(owner, key) for owner, key in keys if key is not None}
    if not wanted:
        return {}
    found: dict[tuple[str, str], Any] = {}
    by_owner: dict[str, list[str]] = {}
    for owner, key in wanted:
        by_owner.setdefault(owner, []).append(key)
    for owner, owner_keys in by_owner.items():
        for start in range(0, len(owner_keys), 500):  # a bound on the statement's parameters
            rows = session.execute(
                select(
                    JobSubmissionRow.idempotency_key, JobSubmissionRow.job_id, JobSubmissionRow.body_sha256
                ).where(
                    JobSubmissionRow.owner == owner,
                    JobSubmissionRow.idempotency_key.in_(owner_keys[start : start + 500]),
                )
            )
            for row in rows:
                found[owner, row.idempotency_key] = row
    return found


def _other_body(earlier: Any, body_sha256: str | None) -> bool:
    """Whether a submission under a key used before asks for something else than the first."""
    return body_sha256 is not None and earlier.body_sha256 is not None and body_sha256 != earlier.body_sha256


def _records_by_id(session: Session, job_ids: Iterable[str]) -> dict[str, JobRecord]:
    """The records of the jobs named, by id, read in a few queries of at most 500 ids each."""
    ids = list(job_ids)
    records = {}
    for start in range(0, len(ids), 500):
        for row in session.execute(select(*JOB_COLUMNS).where(JobRow.id.in_(ids[start : start + 500]))):
            records[row.id] = JobRecord.from_row(row)
    return records


def _over_limits(
    limits: SubmissionLimits, usage: SubmissionUsage, payload_bytes: int
) -> SubmissionRefusal | None:
    """The limit a new job of ``payload_bytes`` would pass, given what its owner has waiting."""
    if limits.max_queued_jobs and usage.queued_jobs + 1 > limits.max_queued_jobs:
        return SubmissionRefusal("max_queued_jobs", limits.max_queued_jobs, usage.queued_jobs)
    if limits.max_payload_bytes and usage.payload_bytes + payload_bytes > limits.max_payload_bytes:
        return SubmissionRefusal("max_payload_bytes", limits.max_payload_bytes, usage.payload_bytes)
    return None


def _usage_of(session: Session, owner: str, limits: SubmissionLimits | None = None) -> SubmissionUsage:
    """The owner's queued jobs, and the payload bytes of their unfinished jobs (for a job queued
    before submissions were recorded, the length of its stored payload).

    Given ``limits``, a figure whose limit is 0 (unbounded) is not counted (0 stands for it):
    nothing would be checked against it.
    """
    count_queued = limits is None or bool(limits.max_queued_jobs)
    count_bytes = limits is None or bool(limits.max_payload_bytes)
    if not (count_queued or count_bytes):
        return SubmissionUsage(0, 0)
    queued, payload_bytes = (
        session.connection().execute(_usage_query(count_queued, count_bytes), {"owner": owner}).one()
    )
    return SubmissionUsage(int(queued or 0), int(payload_bytes or 0))


@functools.lru_cache(maxsize=4)
def _usage_query(count_queued: bool, count_bytes: bool) -> Select:
    """:func:`_usage_of`'s one Core query for both figures, over the owner's unfinished jobs (the
    index on owner and state finds them), with ``owner`` as its parameter: every submission runs
    it inside the allocator's lock, and building the statement anew each time cost more than
    running it."""
    size = func.coalesce(JobSubmissionRow.payload_bytes, func.length(JobRow.payload))
    is_queued = JobRow.state == JobState.queued.value
    figures = (
        func.coalesce(func.sum(case((is_queued, 1), else_=0)), 0) if count_queued else literal(0),
        func.coalesce(func.sum(size), 0) if count_bytes else literal(0),
    )
    query = select(*figures).where(
        JobRow.owner == bindparam("owner"), JobRow.state.in_([state.value for state in UNFINISHED_STATES])
    )
    if count_bytes:
        query = query.select_from(JobRow).outerjoin(JobSubmissionRow, JobSubmissionRow.job_id == JobRow.id)
    return query


_TAKEN_IDS = select(JobRow.id).where(JobRow.id.in_(bindparam("ids", expanding=True)))
"""Which of the ``ids`` given are jobs already (one statement, built once)."""


def _new_job_ids(session: Session, count: int) -> list[str]:
    """``count`` fresh ids: 48 random bits each, drawn again in the unlikely case that one is
    taken (by an earlier job, or by another of the same batch)."""
    ids: list[str] = []
    while len(ids) < count:
        drawn = {JOB_ID_PREFIX + secrets.token_hex(6) for _ in range(count - len(ids))} - set(ids)
        taken = set(session.connection().execute(_TAKEN_IDS, {"ids": list(drawn)}).scalars())
        ids.extend(sorted(drawn - taken))
    return ids


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
