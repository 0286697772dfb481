"""A job's runs: each start of a job is a run, with its own id, lease and executor job."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from spawner.ledger.jobs import JobRecord


def run_id(record: JobRecord, attempt: int | None = None) -> str | None:
    """The id of a job's run (its lease and its executor job): ``<job id>-<attempt>``.

    Each start is a new run, so a job started again after a preemption gets a new lease and a
    fresh executor directory; ``attempt`` defaults to the latest run (None before the first).
    """
    attempt = record.attempts if attempt is None else attempt
    return f"{record.id}-{attempt}" if attempt else None


@dataclass
class Stopping:
    """A stop under way (a preemption or a cancel): the job has its stop signal, and its process
    is not gone yet, so it still holds its GPUs."""

    job_id: str
    started: float
    """``time.monotonic()`` when the stop signal went out."""
    grace_s: float
    task: asyncio.Task | None = None

    def seconds_left(self) -> float:
        """How long the job may still take to checkpoint before it is killed."""
        return max(0.0, self.started + self.grace_s - time.monotonic())
