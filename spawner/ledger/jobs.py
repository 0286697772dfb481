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
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..core.scheduler import BatchJob, Priority
from .models import JobEventRow, JobRow
from .store import Ledger

JOB_ID_PREFIX = "job-"
DEFAULT_TIME_LIMIT_S = 24 * 3600.0
"""A job submitted without a time limit may run a day; backfill needs every job to have one."""


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    preempted = "preempted"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})

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

PAYLOAD_KINDS = ("script", "cell")
"""A job's payload: a Python script, or a cell packed by %%submit (kept as the service received it)."""


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
        values = {attribute.name: getattr(row, attribute.name) for attribute in fields(cls)}
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


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One transition; ``from_state`` is ``None`` for the submission."""

    at: float
    from_state: str | None
    to_state: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


JOB_COLUMNS = tuple(attribute.columns[0].label(attribute.key) for attribute in JobRow.__mapper__.column_attrs)
"""Every column of a job, labelled with its attribute's name, for reads that need no ORM object."""


class JobStore:
    """Batch jobs in a :class:`Ledger`'s database, written under its allocator lock."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def __repr__(self) -> str:
        return f"JobStore({self.ledger!r})"

    # ------------------------------------------------------------------------------- writes

    def submit(self, spec: JobSpec, now: float | None = None) -> JobRecord:
        """Queue a new job under a fresh id, and record its submission as its first event."""

        def work(session: Session) -> JobRecord:
            created_at = self.ledger._now(now)
            job_id = _new_job_id(session)
            row = JobRow(
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
                gpu_models=list(spec.gpu_models),
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
                gpu_uuids=[],
                pool=None,
                borrowed=False,
                attempts=0,
                provenance=dict(spec.provenance),
            )
            session.add(row)
            session.flush()  # the job before its event, which refers to it
            session.add(
                JobEventRow(
                    job_id=job_id,
                    number=0,
                    at=created_at,
                    from_state=None,
                    to_state=row.state,
                    reason="submitted",
                )
            )
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
        queued job holds nothing.
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
            number = session.scalar(select(func.count()).where(JobEventRow.job_id == job_id))
            session.add(
                JobEventRow(
                    job_id=job_id,
                    number=number,
                    at=at,
                    from_state=source.value,
                    to_state=target.value,
                    reason=reason,
                )
            )
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
        query = select(*JOB_COLUMNS).order_by(JobRow.created_at.desc(), JobRow.id.desc())
        if owner is not None:
            query = query.where(JobRow.owner == owner)
        if states is not None:
            query = query.where(JobRow.state.in_([_state(state).value for state in states]))
        if limit is not None:
            query = query.limit(limit)
        return self._records(query)

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


def _new_job_id(session: Session) -> str:
    """A fresh id: 48 random bits, drawn again in the unlikely case that it is taken."""
    while True:
        job_id = JOB_ID_PREFIX + secrets.token_hex(6)
        if session.get(JobRow, job_id) is None:
            return job_id
