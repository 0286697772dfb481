"""Durable batch jobs: submission, the state machine, events, and surviving a restart."""

from __future__ import annotations

import contextlib
import json
import re

import pytest

from spawner.core.scheduler import BatchJob, Priority
from spawner.ledger import Ledger
from spawner.ledger.jobs import (
    LEGAL_TRANSITIONS,
    JobEvent,
    JobSpec,
    JobState,
    JobStateError,
    JobStore,
    UnknownJobError,
)

Q, R, P, S, F, C = (
    JobState.queued,
    JobState.running,
    JobState.preempted,
    JobState.succeeded,
    JobState.failed,
    JobState.cancelled,
)
PATHS_TO = {Q: [], R: [R], P: [R, P], S: [R, S], F: [R, F], C: [C]}
"""A way to reach each state from a fresh submission."""


def spec(owner: str = "ana", **overrides) -> JobSpec:
    values = dict(
        owner=owner,
        group="vision",
        name="train resnet",
        payload="import torch\nprint(torch.cuda.device_count())\n",
        workdir="/home/ana/project",
        environment={"EPOCHS": "3"},
        gpus=2,
        gpu_models=["A100"],
        cpu_milli=4000,
        memory_mib=16384,
        priority="high",
        time_limit_s=7200.0,
        provenance={
            "cell": "%%submit --gpus 2\ntrain()",
            "cwd": "/home/ana/project",
            "packages": "sha256:ab",
        },
    )
    values.update(overrides)
    return JobSpec(**values)


@pytest.fixture
def store(ledger: Ledger) -> JobStore:
    return JobStore(ledger)


def drive(store: JobStore, job_id: str, path: list[JobState]) -> None:
    for state in path:
        store.transition(job_id, state, f"to {state.value}")


def test_submit_records_the_whole_spec_queued(store: JobStore, clock) -> None:
    record = store.submit(spec())

    assert re.fullmatch(r"job-[0-9a-f]{12}", record.id)
    assert record.state == "queued" and record.reason == "submitted"
    assert record.created_at == clock.now and record.started_at is None and record.ended_at is None
    assert record.attempts == 0 and record.lease_id is None and record.gpu_uuids == () and not record.borrowed
    assert (record.owner, record.group, record.name, record.payload_kind) == (
        "ana",
        "vision",
        "train resnet",
        "script",
    )
    assert record.payload.startswith("import torch") and record.workdir == "/home/ana/project"
    assert record.environment == {"EPOCHS": "3"} and record.image is None
    assert (record.gpus, record.gpu_models, record.cpu_milli, record.memory_mib) == (
        2,
        ("A100",),
        4000,
        16384,
    )
    assert (record.priority, record.time_limit_s) == ("high", 7200.0)
    assert record.provenance["packages"] == "sha256:ab"
    assert store.get(record.id) == record
    assert store.get("job-000000000000") is None


def test_job_ids_are_distinct(store: JobStore) -> None:
    ids = {store.submit(spec()).id for _ in range(20)}
    assert len(ids) == 20


def test_cpu_job_and_priority_enum_accepted(store: JobStore) -> None:
    record = store.submit(spec(gpus=0, gpu_models=(), priority=Priority.low))
    assert (record.gpus, record.priority) == (0, "low")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"priority": "urgent"}, "unknown priority 'urgent'"),
        ({"gpus": -1}, "0 or more GPUs"),
        ({"time_limit_s": 0}, "time limit"),
        ({"owner": ""}, "owner"),
        ({"cpu_milli": -5}, "cpu_milli"),
        ({"payload_kind": "notebook"}, "payload_kind must be one of script, cell"),
        ({"environment": {"N": 3}}, "environment values must be strings: N"),
    ],
)
def test_invalid_specs_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**overrides)


def test_list_newest_first_with_filters_and_queue_oldest_first(store: JobStore, clock) -> None:
    first = store.submit(spec("ana"))
    clock.advance(1)
    second = store.submit(spec("ben"))
    clock.advance(1)
    third = store.submit(spec("ana"))
    clock.advance(1)
    store.transition(second.id, R, "started")
    clock.advance(1)
    store.transition(first.id, R, "started")

    assert [job.id for job in store.list()] == [third.id, second.id, first.id]
    assert [job.id for job in store.list(owner="ana")] == [third.id, first.id]
    assert [job.id for job in store.list(states=["running"])] == [second.id, first.id]
    assert [job.id for job in store.list(owner="ana", states=[Q])] == [third.id]
    assert store.list(states=[]) == []
    assert store.list(owner="nobody") == []
    assert [job.id for job in store.queued()] == [third.id]
    assert [job.id for job in store.running()] == [second.id, first.id]
    with pytest.raises(ValueError, match="unknown job state 'done'"):
        store.list(states=["done"])


def test_as_batch_job_and_to_dict(store: JobStore) -> None:
    record = store.submit(spec())

    assert record.as_batch_job() == BatchJob(
        id=record.id,
        owner="ana",
        group="vision",
        gpus=2,
        priority=Priority.high,
        submitted_at=record.created_at,
        time_limit_s=7200.0,
        gpu_models=frozenset({"A100"}),
        cpu_milli=4000,
        memory_mib=16384,
    )
    listed = record.to_dict()
    assert "payload" not in listed
    assert listed["gpu_models"] == ["A100"] and listed["state"] == "queued"
    assert json.loads(json.dumps(listed)) == listed
    full = record.to_dict(include_payload=True)
    assert full["payload"] == record.payload
    assert set(full) - set(listed) == {"payload"}


# -------------------------------------------------------------------------- state machine

LEGAL = [(source, target) for source, targets in LEGAL_TRANSITIONS.items() for target in targets]
ILLEGAL = [(source, target) for source in JobState for target in JobState if (source, target) not in LEGAL]


def test_the_state_machine_is_the_documented_one() -> None:
    assert set(LEGAL) == {(Q, R), (Q, C), (Q, F), (R, S), (R, F), (R, C), (R, P), (P, Q), (P, C)}


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=lambda state: state.value)
def test_legal_transitions(store: JobStore, clock, source: JobState, target: JobState) -> None:
    job = store.submit(spec())
    drive(store, job.id, PATHS_TO[source])
    clock.advance(10)
    fields = {"exit_code": 0} if target is S else {}

    record = store.transition(job.id, target, "because", **fields)

    assert record.state == target.value and record.reason == "because"
    assert store.get(job.id) == record
    assert store.events(job.id)[-1] == JobEvent(clock.now, source.value, target.value, "because")
    if target in (S, F, C):
        assert record.ended_at == clock.now and record.final
    else:
        assert record.ended_at is None and not record.final


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=lambda state: state.value)
def test_illegal_transitions_raise_and_change_nothing(
    store: JobStore, source: JobState, target: JobState
) -> None:
    job = store.submit(spec())
    drive(store, job.id, PATHS_TO[source])
    before, events = store.get(job.id), store.events(job.id)

    with pytest.raises(JobStateError, match=f"job {job.id} cannot go from {source.value} to {target.value}"):
        store.transition(job.id, target, "no")

    assert store.get(job.id) == before
    assert store.events(job.id) == events


def test_a_run_its_preemption_and_requeue(store: JobStore, clock) -> None:
    job = store.submit(spec())
    submitted_at = clock.now
    clock.advance(5)
    running = store.transition(
        job.id,
        R,
        "placed on train",
        lease_id="lease-1",
        node="train",
        gpu_uuids=("train-gpu0", "train-gpu1"),
        pool="train",
        borrowed=True,
    )
    assert (running.started_at, running.attempts) == (clock.now, 1)
    assert (running.lease_id, running.node, running.gpu_uuids, running.pool, running.borrowed) == (
        "lease-1",
        "train",
        ("train-gpu0", "train-gpu1"),
        "train",
        True,
    )
    clock.advance(5)
    preempted = store.transition(job.id, P, "a guaranteed job of nlp needs train-gpu0")
    assert preempted.lease_id == "lease-1"  # the executor still has to release it
    clock.advance(5)
    requeued = store.transition(job.id, Q, "requeued after preemption")
    assert (requeued.lease_id, requeued.node, requeued.gpu_uuids, requeued.pool) == (None, None, (), None)
    assert requeued.started_at is None and not requeued.borrowed and requeued.attempts == 1
    assert [job.id for job in store.queued()] == [job.id]
    clock.advance(5)
    again = store.transition(
        job.id, R, "placed again", lease_id="lease-2", node="train", gpu_uuids=["train-gpu1"]
    )
    assert (again.attempts, again.lease_id, again.gpu_uuids) == (2, "lease-2", ("train-gpu1",))
    clock.advance(5)
    done = store.transition(job.id, S, "exited 0", exit_code=0)
    assert (done.exit_code, done.ended_at, done.started_at) == (0, clock.now, clock.now - 5)

    assert store.events(job.id) == [
        JobEvent(submitted_at, None, "queued", "submitted"),
        JobEvent(submitted_at + 5, "queued", "running", "placed on train"),
        JobEvent(submitted_at + 10, "running", "preempted", "a guaranteed job of nlp needs train-gpu0"),
        JobEvent(submitted_at + 15, "preempted", "queued", "requeued after preemption"),
        JobEvent(submitted_at + 20, "queued", "running", "placed again"),
        JobEvent(submitted_at + 25, "running", "succeeded", "exited 0"),
    ]


def test_explicit_now_and_failure_exit_code(store: JobStore) -> None:
    job = store.submit(spec(), now=100.0)
    store.transition(job.id, R, "started", now=110.0)
    failed = store.transition(job.id, F, "exited 3", now=150.0, exit_code=3)
    assert (failed.created_at, failed.started_at, failed.ended_at, failed.exit_code) == (
        100.0,
        110.0,
        150.0,
        3,
    )
    assert [event.at for event in store.events(job.id)] == [100.0, 110.0, 150.0]


def test_a_job_that_can_never_start_fails_from_the_queue(store: JobStore) -> None:
    job = store.submit(spec(gpus=16))
    failed = store.transition(job.id, F, "no node has 16 GPUs of the allowed models")
    assert failed.state == "failed" and failed.attempts == 0 and failed.started_at is None
    assert failed.reason == "no node has 16 GPUs of the allowed models"


def test_misuse_of_transition(store: JobStore) -> None:
    job = store.submit(spec())
    with pytest.raises(UnknownJobError, match="no job 'job-nothere'"):
        store.transition("job-nothere", R, "start")
    with pytest.raises(ValueError, match="unknown job state 'done'"):
        store.transition(job.id, "done", "?")
    with pytest.raises(TypeError, match="cannot set: owner"):
        store.transition(job.id, R, "start", owner="ben")
    assert store.get(job.id).state == "queued"
    assert len(store.events(job.id)) == 1
    assert store.events("job-nothere") == []


def test_jobs_and_events_survive_a_restart(ledger_url: str, ledger: Ledger, clock) -> None:
    store = JobStore(ledger)
    waiting = store.submit(spec("ana"))
    clock.advance(1)
    started = store.submit(spec("ben"))
    store.transition(started.id, R, "started", lease_id="lease-ben", node="train", gpu_uuids=["train-gpu0"])
    clock.advance(1)
    finished = store.submit(spec("chen"))
    store.transition(finished.id, C, "cancelled by chen")
    before = {job.id: (job, store.events(job.id)) for job in store.list()}
    ledger.close()

    with contextlib.closing(Ledger(ledger_url, clock=clock)) as reopened:
        reopened.create_schema()  # what every start does; must keep what is there
        again = JobStore(reopened)
        assert [job.id for job in again.queued()] == [waiting.id]
        assert [job.id for job in again.running()] == [started.id]
        assert again.running()[0].lease_id == "lease-ben"
        assert {job.id: (job, again.events(job.id)) for job in again.list()} == before
        # and the restarted store goes on from there
        assert again.transition(started.id, S, "exited 0", exit_code=0).attempts == 1
        assert len(again.events(started.id)) == 3
