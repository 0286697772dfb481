"""The JSON objects of jobs that listings showed, kept by job version so that the next listing
of the same jobs reads three short values per job instead of having the database write each job
again.

A user's listing (``GET jobs``) shows up to hundreds of jobs, and a notebook or a page asks for it
again every few seconds, while most of those jobs have not changed. Writing every listed job as
JSON again (SQLite writes it, other databases' rows are encoded by the service) cost several
milliseconds of CPU per listing, the largest single cost of the service under load. A job's row
changes only through the job state machine (:meth:`~.jobs.JobStore.transition`), and every
transition changes its state; the one cycle of
the machine (queued, running, preempted, queued) passes through ``running``, which counts one more
attempt. So ``(id, state, attempts)`` names one version of a row for good, whichever process wrote
it: a kept object is served only for the very version it was written from, and a job that changed
since is read again. Nothing here has to be told about writes. The database writes the version as
one text (:func:`job_version`), so that finding a listing's kept objects is one lookup of one
string per job.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping

JobVersion = str
"""A job's id, state and attempts as one text, ``job-1f2e/queued/0`` (see :func:`job_version`)."""


def job_version(job_id: str, state: str, attempts: str) -> JobVersion:
    """The version text of a job, as the listing's statement writes it in SQL (ids and states
    hold no ``/``)."""
    return f"{job_id}/{state}/{attempts}"


KEPT_OBJECTS = 20_000
"""How many job versions are kept at most, the oldest kept dropped first: twice the longest
listing the API serves (10,000 jobs), so that a listing never drops what it needs itself, at
roughly a kilobyte each."""


class ListedObjects:
    """Job versions and their JSON objects, shared by the threads that read listings."""

    def __init__(self, capacity: int = KEPT_OBJECTS):
        self.capacity = capacity
        self._objects: dict[JobVersion, str] = {}
        self._adding = threading.Lock()

    def find(self, versions: Iterable[JobVersion]) -> list[str | None]:
        """The kept object of each version, None where it is not kept; one dictionary lookup per
        job, called from C."""
        return list(map(self._objects.get, versions))

    def keep(self, objects: Mapping[JobVersion, str]) -> None:
        """Keep ``objects``, dropping the oldest kept beyond :attr:`capacity`."""
        with self._adding:
            self._objects.update(objects)
            excess = len(self._objects) - self.capacity
            if excess > 0:
                for version in list(itertools.islice(self._objects, excess)):
                    del self._objects[version]

    def __len__(self) -> int:
        return len(self._objects)
