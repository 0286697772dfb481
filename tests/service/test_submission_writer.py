"""The group commit of single submissions (``spawner/service/submission_writer.py``), on a real
SQLite ledger: submissions that arrive together share a transaction, and each is answered as if
it had been written alone."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from spawner.ledger import Ledger
from spawner.ledger.jobs import BatchItem, JobSpec, JobStore, SubmissionLimits
from spawner.service.submission_writer import SubmissionWriter


class CountingStore(JobStore):
    """A real store that also counts its transactions of ``submit_each`` and their sizes."""

    def __init__(self, ledger: Ledger):
        super().__init__(ledger)
        self.groups: list[int] = []

    def submit_each(self, items, **kwargs):
        items = list(items)
        self.groups.append(len(items))
        return super().submit_each(items, **kwargs)


async def in_thread(function, *args, **kwargs):
    return await asyncio.to_thread(functools.partial(function, *args, **kwargs))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    with contextlib.closing(Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")) as ledger:
        ledger.create_schema()
        yield CountingStore(ledger)


def spec(owner: str = "ana", payload: str = "print(1)\n") -> JobSpec:
    return JobSpec(owner, None, "train", payload, "/tmp", gpus=1)


async def submit_together(writer: SubmissionWriter, items: list[BatchItem], limits=SubmissionLimits()):
    return await asyncio.gather(*(writer.submit(item, limits) for item in items))


def test_submissions_that_arrive_together_share_transactions(store: CountingStore) -> None:
    writer = SubmissionWriter(store, in_thread)
    answers = asyncio.run(
        submit_together(writer, [BatchItem(spec(f"user{index % 3}")) for index in range(40)])
    )
    assert all(answer.created for answer in answers)
    assert len({answer.record.id for answer in answers}) == 40 == len(store.list())
    assert sum(store.groups) == 40 and len(store.groups) < 40


def test_a_group_never_exceeds_its_bound(store: CountingStore) -> None:
    writer = SubmissionWriter(store, in_thread, max_group=4)
    asyncio.run(submit_together(writer, [BatchItem(spec()) for _ in range(13)]))
    assert max(store.groups) <= 4 and sum(store.groups) == 13


def test_each_submission_gets_its_own_refusal_with_the_group_counted_in_arrival_order(
    store: CountingStore,
) -> None:
    writer = SubmissionWriter(store, in_thread)
    limits = SubmissionLimits(max_queued_jobs=3)
    answers = asyncio.run(submit_together(writer, [BatchItem(spec()) for _ in range(6)], limits))
    assert [answer.created for answer in answers] == [True, True, True, False, False, False]
    assert {answer.refusal.rule for answer in answers[3:]} == {"max_queued_jobs"}
    assert len(store.list()) == 3


def test_one_submission_that_cannot_be_written_fails_alone(store: CountingStore) -> None:
    """A submission the transaction cannot take (here its payload size is not a number) fails its
    own caller only; the others of its group are written again one by one and queued."""
    writer = SubmissionWriter(store, in_thread)

    async def scenario():
        first = asyncio.ensure_future(writer.submit(BatchItem(spec()), SubmissionLimits()))
        await asyncio.sleep(0)  # the first is being written: the next three form a group
        rest = [
            writer.submit(BatchItem(spec("ana")), SubmissionLimits()),
            writer.submit(BatchItem(spec("chen"), payload_bytes="many"), SubmissionLimits()),
            writer.submit(BatchItem(spec("ben")), SubmissionLimits()),
        ]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    first, ana, broken, ben = asyncio.run(scenario())
    assert first.created and ana.created and ben.created
    assert isinstance(broken, TypeError)
    assert sorted(job.owner for job in store.list()) == ["ana", "ana", "ben"]
    assert 3 in store.groups  # the group was tried whole first


def test_a_caller_that_goes_away_leaves_its_submission_written(store: CountingStore) -> None:
    writer = SubmissionWriter(store, in_thread)

    async def scenario():
        leaving = asyncio.ensure_future(writer.submit(BatchItem(spec("ana")), SubmissionLimits()))
        await asyncio.sleep(0)
        leaving.cancel()
        return await writer.submit(BatchItem(spec("ben")), SubmissionLimits())

    assert asyncio.run(scenario()).created
    assert sorted(job.owner for job in store.list()) == ["ana", "ben"]
