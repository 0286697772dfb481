"""The simulator and the service make the same decisions on the same recorded queue.

One cluster, one slice and one queue are given to both: the real service (its ledger in SQLite,
its job store, its allocator, ``BatchScheduler.schedule_once`` with real job processes) and
:class:`spawner.sim.week.WeekReplay`. Two passes each: the first fills the train GPUs (one job as
of right, the rest borrowed) and lends the idle dev GPUs; the second, after more submissions,
preempts a borrower for a high-priority job inside its group's guarantee. Every start (job, node,
GPUs, pool, borrowed), preemption, queue order and waiting reason must be the same on both sides,
and so must the slice a developer was placed on.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import replace

import pytest

from spawner.config.profiles import ProfileSet
from spawner.core.units import SliceRequest, WorkloadClass
from spawner.core.vocabulary import DEV_POOL
from spawner.ledger import Ledger
from spawner.ledger.jobs import JobSpec, JobStore
from spawner.service.allocator import Allocator
from spawner.service.executor import LocalExecutor
from spawner.service.jobs import JobService
from spawner.service.scheduling import BatchScheduler
from spawner.sim.scenario import load_scenario
from spawner.sim.week import Session, WeekReplay

SCENARIO = """\
name: recorded
days: 1
warmup_days: 0
timing: {pass_interval_s: 2, preemption_grace_s: 30}
cluster:
  nodes:
    - {name: node, count: 2, gpu_model: V100, gpu_memory_gib: 32, dev_gpus: 2, train_gpus: 2}
groups:
  - {name: vision, guaranteed_gpus: 1, borrowing_limit_gpus: null}
  - {name: speech, guaranteed_gpus: 3, borrowing_limit_gpus: null}
training: {run_hours: 1}
"""

# A job that checkpoints on SIGTERM and keeps its GPUs for the whole grace period, as a real
# training script does: both sides must then see it as stopping in the second pass.
HOLDS_ON = "import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: None)\ntime.sleep(120)\n"

FIRST = [  # owner, group, gpus, priority
    ("ann", "vision", 1, "normal"),
    ("ann", "vision", 1, "normal"),
    ("bob", "vision", 1, "normal"),
    ("bob", "vision", 1, "normal"),
    ("bob", "vision", 1, "low"),
    ("cid", "speech", 2, "normal"),
]
SECOND = [("cid", "speech", 1, "high"), ("ann", "vision", 2, "normal")]


class Service:
    def __init__(self, state, scenario):
        self.ledger = Ledger(f"sqlite:///{state / 'ledger.sqlite'}")
        self.ledger.create_schema()
        self.ledger.sync_inventory(scenario.nodes())
        self.store = JobStore(self.ledger)
        self.executor = LocalExecutor(jobs_dir=str(state / "jobs"), grace_seconds=1.0)
        self.allocator = Allocator(
            self.ledger, ProfileSet((), quotas=scenario.quotas()), None, scenario.placement
        )
        self.jobs = JobService(
            self.store,
            self.allocator,
            self.executor,
            scripts_dir=str(state / "scripts"),
            signing_key_dir=str(state),
        )
        self.scheduler = BatchScheduler(
            self.jobs, self.allocator, self.executor, interval_seconds=0, preemption_grace_seconds=30
        )

    def submit(self, queue, at: float) -> None:
        for number, (owner, group, gpus, priority) in enumerate(queue):
            spec = JobSpec(owner, group, f"{owner}-{number}", HOLDS_ON, "", gpus=gpus, priority=priority)
            self.store.submit(spec, now=at + number)


def starts(decision):
    return [
        (start.job.id, start.placement.node, start.placement.gpu_uuids, start.pool, start.borrowed)
        for start in decision.starts
    ]


def waiting(decision):
    return {job_id: (place.position, place.reason) for job_id, place in decision.waiting.items()}


@pytest.mark.skipif(sys.platform != "linux", reason="the local executor runs jobs as Linux processes")
def test_the_simulator_and_the_service_decide_the_same_on_one_recorded_queue(tmp_path):
    path = tmp_path / "recorded.yaml"
    path.write_text(SCENARIO)
    scenario = load_scenario(path)
    service = Service(tmp_path, scenario)
    replay = WeekReplay(scenario, "gpuslice", sessions=[], run_specs=[], check_invariants=True)

    async def both() -> None:
        now = time.time()
        # A developer's half GPU, placed by the ledger and by the replay.
        request = SliceRequest(milli_gpu=500, pool=DEV_POOL)
        granted = service.ledger.allocate(
            "dev-1",
            "dev/",
            "dev",
            "vision",
            WorkloadClass.interactive,
            request,
            scenario.quotas(),
            policy_name=scenario.placement,
        )
        session = replay.ask_for_slice(Session("dev-1", "dev", "vision", request, now, now + 3600, 0.3), now)
        assert granted.granted and session.placement == granted.lease.placement

        decisions = []
        try:
            for number, (queue, at) in enumerate(((FIRST, now), (SECOND, now + 2))):
                service.submit(queue, at - 100 + 10 * number)
                for job in await service.jobs.queue_view():
                    if job.id not in replay.runs:
                        replay.submit_job(job, work_s=3600)
                async with service.jobs.lock:
                    on_service = (await service.scheduler.schedule_once(now=at)).decision
                in_sim = replay.run_pass(at)
                replay.check_invariants()
                decisions.append((on_service, in_sim))
                # The service stamps a start with its wall clock: the replay takes the stamp from
                # the record, so both weigh the same usage and the same newest borrower next pass.
                for job_id, run in replay.running.items():
                    record = service.store.get(job_id)
                    run.held = replace(run.held, started_at=record.started_at)
        finally:
            for lease in service.ledger.list_leases(None):
                if lease.workload == WorkloadClass.batch:
                    await service.executor.stop(lease.id, 0)
        return decisions

    try:
        decisions = asyncio.run(both())
    finally:
        service.ledger.close()

    (first_service, first_sim), (second_service, second_sim) = decisions
    for on_service, in_sim in decisions:
        assert starts(in_sim) == starts(on_service)
        assert in_sim.order == on_service.order
        assert [(p.job_id, p.reason) for p in in_sim.preemptions] == [
            (p.job_id, p.reason) for p in on_service.preemptions
        ]
        assert waiting(in_sim) == waiting(on_service)
    assert len(first_sim.starts) == 6 and not first_sim.preemptions
    assert any(start.pool == DEV_POOL for start in first_sim.starts), "idle dev GPUs must be lent"
    assert len(second_sim.preemptions) == 1, "a high-priority guaranteed job must preempt a borrower"
    assert len(second_sim.waiting) == 2
