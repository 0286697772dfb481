"""What holds which GPUs, as the batch scheduler's pass and the allocator's reclaim both read it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from spawner.core.scheduler import RunningJob
from spawner.core.units import Lease
from spawner.core.vocabulary import TRAIN_POOL
from spawner.ledger.jobs import JobRecord


@dataclass(frozen=True)
class HoldingJobs:
    """The jobs holding GPUs at one moment: running, or still stopping."""

    running: list[JobRecord]
    preempted: list[JobRecord]
    """Jobs checkpointing for a preemption: they hold their GPUs until their process is gone."""
    stopping_records: list[JobRecord]
    """Jobs still holding GPUs while they stop: checkpointing for a preemption, or cancelled."""
    stopping: set[str]
    """Ids of the jobs whose GPUs come back without anyone else being stopped."""

    @property
    def holding(self) -> list[JobRecord]:
        """Every job that holds GPUs, running or stopping."""
        return self.running + self.stopping_records


def running_jobs(records: Iterable[JobRecord], leases_by_id: dict[str, Lease]) -> list[RunningJob]:
    """The scheduler's view of jobs holding GPUs; their leases are taken out of ``leases_by_id``,
    so that what is left there is what else occupies GPUs."""
    running: list[RunningJob] = []
    for record in records:
        lease = leases_by_id.pop(record.lease_id, None) if record.lease_id else None
        if lease is None:
            continue
        running.append(
            RunningJob(
                record.as_batch_job(),
                lease.placement,
                record.started_at or lease.created_at,
                record.borrowed,
                record.pool or TRAIN_POOL,
            )
        )
    return running
