"""The queue as one scheduling pass left it: every waiting job's place and reason, read as a whole.

Each pass publishes a new :class:`QueueSnapshot` and never edits one that readers may hold, so a
listing (or a page) takes every position from the same pass, and says which (``as_of``): two
waiting jobs never share a place, and no place is skipped. A reader who picked job A's position
from one pass and job B's from the next could see both at place 1 after the queue changed between
the passes; reading one snapshot object cannot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import orjson

NOT_WAITING: Mapping[str, object] = MappingProxyType(
    {"queue_position": None, "jobs_ahead": None, "waiting_reason": None, "queue_as_of": None}
)
"""The queue fields of a job that is not waiting in the snapshot."""

NOT_WAITING_JSON = orjson.dumps(dict(NOT_WAITING)).decode()[1:-1]
""":data:`NOT_WAITING` as the members of a JSON object, to append to one
(see :meth:`QueueSnapshot.json_members`)."""


@dataclass(frozen=True)
class QueuePlace:
    """Where one waiting job stands in a snapshot, as the caller sees it."""

    position: int
    """0-based place among the waiting jobs the caller can see (their own, or everyone's)."""
    jobs_ahead: int
    """Waiting jobs of anyone ahead of it in the whole queue."""
    reason: str
    as_of: float


@dataclass(frozen=True)
class QueueSnapshot:
    """The jobs one pass left waiting, first to last, with their owners and waiting reasons."""

    as_of: float = 0.0
    """``time.time()`` of the pass."""
    order: tuple[str, ...] = ()
    owners: Mapping[str, str] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)
    _ahead: dict[str, int] = field(init=False, repr=False, compare=False)
    _own_rank: dict[str, int] = field(init=False, repr=False, compare=False)
    _fields_everyone: dict[str, Mapping[str, object]] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )
    _fields_own: dict[str, Mapping[str, object]] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )
    _listed_everyone: dict[str, tuple[str, str]] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )
    _listed_own: dict[str, tuple[str, str]] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        ahead = {job_id: index for index, job_id in enumerate(self.order)}
        per_owner: dict[str, int] = {}
        own_rank = {}
        for job_id in self.order:
            owner = self.owners.get(job_id, "")
            own_rank[job_id] = per_owner.get(owner, 0)
            per_owner[owner] = own_rank[job_id] + 1
        object.__setattr__(self, "_ahead", ahead)
        object.__setattr__(self, "_own_rank", own_rank)

    @classmethod
    def of_pass(
        cls, as_of: float, order: Iterable[str], waiting: Mapping[str, str], owners: Mapping[str, str]
    ) -> QueueSnapshot:
        """The snapshot of a pass: ``order`` is the pass's whole order (started jobs too),
        ``waiting`` the reason of each job it left waiting."""
        kept = tuple(job_id for job_id in order if job_id in waiting)
        return cls(as_of, kept, {job_id: owners[job_id] for job_id in kept}, dict(waiting))

    def place(self, job_id: str, everyone: bool) -> QueuePlace | None:
        """Where ``job_id`` waits, counted among everyone's jobs or only among its owner's; None
        when this pass did not leave it waiting (it started, ended, or came after the pass)."""
        ahead = self._ahead.get(job_id)
        if ahead is None:
            return None
        position = ahead if everyone else self._own_rank[job_id]
        return QueuePlace(position, ahead, self.reasons[job_id], self.as_of)

    def json_fields(self, job_id: str, everyone: bool) -> Mapping[str, object]:
        """The API's four queue fields of ``job_id`` (``queue_position``, ``jobs_ahead``,
        ``waiting_reason``, ``queue_as_of``), all null when the pass did not leave it waiting.

        Made per job and view on first use, and shared (callers copy them into their answer): a
        pass serves many answers, and each names a few jobs of a queue of thousands (a submission
        answers one, which is never in the snapshot)."""
        view = self._fields_everyone if everyone else self._fields_own
        fields = view.get(job_id)
        if fields is None:
            place = self.place(job_id, everyone)
            if place is None:
                return NOT_WAITING
            fields = view[job_id] = _queue_fields(place)
        return fields

    def json_members(self, job_id: str, everyone: bool) -> str:
        """:meth:`json_fields` as the members of a JSON object (``"queue_position":3,...``, no
        braces), to put in a job's JSON object as a listing writes it."""
        place = self.place(job_id, everyone)
        if place is None:
            return NOT_WAITING_JSON
        return orjson.dumps(_queue_fields(place)).decode()[1:-1]

    def listed_objects(self, everyone: bool) -> dict[str, tuple[str, str]]:
        """The jobs this snapshot completed for listings in one view (everyone's places or the
        owners'), by id: the JSON object the ledger wrote, and that object with the job's queue
        fields put in (see :meth:`complete`).

        A pass's snapshot serves every listing until the next pass, a few hundred listings of a
        few hundred jobs each on a busy hub, and a job's text is the same in all of them as long
        as the ledger's object is: a listing looks each job up here and compares the ledger's
        text (a memory comparison) instead of writing the job again. A job whose object changed
        (it started, it was cancelled) no longer matches and is written anew."""
        return self._listed_everyone if everyone else self._listed_own

    def complete(self, job_id: str, queued: bool, json_object: str, everyone: bool) -> str:
        """``json_object`` (the ledger's JSON object of ``job_id``, a job in the queue or not)
        with its four queue fields as the last members, kept in :meth:`listed_objects`."""
        members = self.json_members(job_id, everyone) if queued else NOT_WAITING_JSON
        text = f"{json_object[:-1]},{members}}}"
        self.listed_objects(everyone)[job_id] = (json_object, text)
        return text

    def without(self, job_id: str) -> QueueSnapshot:
        """This snapshot less a job that left the queue between passes (a cancel), so that the
        places after it close up instead of leaving a gap until the next pass."""
        if job_id not in self._ahead:
            return self
        order = tuple(other for other in self.order if other != job_id)
        owners = {other: self.owners[other] for other in order}
        reasons = {other: self.reasons[other] for other in order}
        return QueueSnapshot(self.as_of, order, owners, reasons)

    def __len__(self) -> int:
        return len(self.order)


def _queue_fields(place: QueuePlace | None) -> dict[str, object]:
    """The API's four queue fields of a job waiting at ``place``."""
    assert place is not None, "a job of the snapshot's order has a place in it"
    return {
        "queue_position": place.position,
        "jobs_ahead": place.jobs_ahead,
        "waiting_reason": place.reason,
        "queue_as_of": place.as_of,
    }
