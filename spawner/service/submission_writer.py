"""Group commit for single submissions: those that arrive while one is being written go in the next
transaction together.

Every ``POST jobs`` is one ledger transaction, and the ledger's writers take turns
(``Ledger._write``): under many concurrent clients the submissions queued on that turn, each
paying for its own transaction, its own trip to a worker thread and its own commit, while the
event loop sat idle. A database's group commit is the answer to the same problem: the first
submission is written at once, as before; the ones that arrive while it is being written wait
for it anyway, so they are written next, together, in one transaction
(:meth:`~spawner.ledger.jobs.JobStore.submit_each`). Nothing waits longer than it did behind the
ledger's lock, and each caller gets the answer its own submission would have got alone: limits
are counted across the group in arrival order, and a refusal refuses only its own job.

A group whose transaction fails is written again one submission at a time, so that one bad
submission cannot fail the others that happened to arrive with it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from spawner.ledger.jobs import BatchItem, JobStore, Submission, SubmissionLimits

Call = Callable[..., Awaitable[Any]]
"""How the writer runs a blocking ledger call: ``JobService.call`` (a worker thread)."""


@dataclass
class _Waiting:
    item: BatchItem
    limits: SubmissionLimits
    answer: asyncio.Future[Submission]


class SubmissionWriter:
    """Writes the single submissions of one service, grouping those that arrive together."""

    def __init__(self, store: JobStore, call: Call, max_group: int = 256):
        self.store = store
        self.call = call
        self.max_group = max_group
        """The most submissions one transaction writes: a bound on how long one commit holds the
        ledger's lock (the batch endpoint writes up to ``JobService.max_jobs_per_batch``)."""
        self._waiting: list[_Waiting] = []
        self._writing: asyncio.Task[None] | None = None

    async def submit(self, item: BatchItem, limits: SubmissionLimits) -> Submission:
        """``JobStore.submit_checked(item, limits)``, written with whatever arrives meanwhile."""
        answer: asyncio.Future[Submission] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(item, limits, answer))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_all())
        # A caller that goes away (a closed connection) leaves its submission to be written: the
        # writer, not the caller, owns it from here, as a worker thread owned it before.
        return await asyncio.shield(answer)

    async def _write_all(self) -> None:
        group: list[_Waiting] = []
        try:
            while self._waiting:
                group = self._waiting[: self.max_group]
                del self._waiting[: self.max_group]
                # Submissions under other limits (a setting changed between them) go in their own
                # transaction, each with the limits it was checked against.
                by_limits: dict[SubmissionLimits, list[_Waiting]] = {}
                for waiting in group:
                    by_limits.setdefault(waiting.limits, []).append(waiting)
                for limits, same_limits in by_limits.items():
                    await self._write(same_limits, limits)
        except BaseException:
            # Cancelled as the service stops: whoever still waits is told, not left hanging.
            for waiting in group + self._waiting:
                _settle(waiting.answer, error=RuntimeError("the service stopped before the job was queued"))
            self._waiting.clear()
            raise
        finally:
            self._writing = None

    async def _write(self, group: list[_Waiting], limits: SubmissionLimits) -> None:
        try:
            submissions = await self.call(
                functools.partial(self.store.submit_each, limits=limits), [waiting.item for waiting in group]
            )
        except Exception as error:
            if len(group) == 1:
                _settle(group[0].answer, error=error)
                return
            for waiting in group:
                await self._write([waiting], limits)
            return
        for waiting, submission in zip(group, submissions, strict=True):
            _settle(waiting.answer, submission=submission)


def _settle(
    answer: asyncio.Future[Submission], submission: Submission | None = None, error: Exception | None = None
) -> None:
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(submission)
