"""Prometheus metrics of the gpuslice service, in the style of the hub's own ``/hub/metrics``.

What an admin wants on a dashboard: how long the queue is and how long jobs wait (per group and
priority), how many GPUs are held (per pool and workload class), how often work is preempted,
each group's fair-share usage, and how jobs end. Queue, usage and outcome figures are fed by the
scheduling loop as it decides; GPU holdings are read from the allocator when Prometheus scrapes,
so they are never stale.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from spawner.core.units import MILLI_PER_GPU, Lease, Node

WAIT_BUCKETS = (10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600, float("inf"))


def _group_label(group: str | None) -> str:
    return group or "(none)"


class ServiceMetrics:
    """The service's metrics, in a registry of their own (one service, one registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_length = Gauge(
            "gpuslice_queue_length",
            "Batch jobs waiting in the queue",
            ["group", "priority"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "gpuslice_queue_wait_seconds",
            "How long batch jobs waited in the queue before they started",
            ["group", "priority"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.gpus_allocated = Gauge(
            "gpuslice_gpus_allocated",
            "GPUs held by leases (a slice counts as its fraction of a GPU)",
            ["pool", "workload"],
            registry=self.registry,
        )
        self.gpus_total = Gauge("gpuslice_gpus", "GPUs in the inventory", ["pool"], registry=self.registry)
        self.preemptions = Counter(
            "gpuslice_preemptions_total", "Batch jobs stopped to make room", ["group"], registry=self.registry
        )
        self.fair_share_usage = Gauge(
            "gpuslice_fair_share_usage_gpu_seconds",
            "Each group's decayed batch GPU-seconds, by which fair share orders the queue",
            ["group"],
            registry=self.registry,
        )
        # Fed by the GPU monitor (spawner/service/telemetry/) at every sample. The label "gpu" is
        # the card's index on its node, as the DCGM exporter's, so that one dashboard reads both.
        self.gpu_busy_seconds = Counter(
            "gpuslice_gpu_busy_seconds",
            "Seconds each GPU was busy (utilisation at or over GPUMonitor.busy_threshold_percent)",
            ["gpu", "node", "pool"],
            registry=self.registry,
        )
        self.allocated_gpu_seconds = Counter(
            "gpuslice_allocated_gpu_seconds",
            "GPU-seconds held by leases (a slice counts as its fraction of a GPU)",
            ["group", "class"],
            registry=self.registry,
        )
        self.used_gpu_seconds = Counter(
            "gpuslice_used_gpu_seconds",
            "GPU-seconds leases really used, as measured on the cards (their allocation on simulated GPUs)",
            ["group", "class"],
            registry=self.registry,
        )
        self.job_outcomes = Counter(
            "gpuslice_jobs_finished_total",
            "Batch jobs that ended, by how",
            ["group", "state"],
            registry=self.registry,
        )

    def observe_queue(self, queued: Iterable[tuple[str | None, str]]) -> None:
        """Set the queue gauges from the ``(group, priority)`` of every queued job."""
        counts = Tally((_group_label(group), priority) for group, priority in queued)
        self.queue_length.clear()
        for (group, priority), count in counts.items():
            self.queue_length.labels(group=group, priority=priority).set(count)

    def observe_start(self, group: str | None, priority: str, waited_s: float) -> None:
        self.queue_wait.labels(group=_group_label(group), priority=priority).observe(max(0.0, waited_s))

    def observe_preemption(self, group: str | None) -> None:
        self.preemptions.labels(group=_group_label(group)).inc()

    def observe_outcome(self, group: str | None, state: str) -> None:
        self.job_outcomes.labels(group=_group_label(group), state=state).inc()

    def observe_gpu_busy(self, gpu_index: int, node: str, pools: str, seconds: float) -> None:
        """Add ``seconds`` of one card's busy time (``pools``: its pools, comma-separated)."""
        self.gpu_busy_seconds.labels(gpu=str(gpu_index), node=node, pool=pools).inc(seconds)

    def observe_gpu_seconds(self, group: str | None, workload: str, allocated: float, used: float) -> None:
        """Add one lease's GPU-seconds of a sample: held, and really used."""
        self.allocated_gpu_seconds.labels(group=_group_label(group), **{"class": workload}).inc(allocated)
        self.used_gpu_seconds.labels(group=_group_label(group), **{"class": workload}).inc(used)

    def observe_fair_share(self, usage: Mapping[str | None, float]) -> None:
        """Set each group's decayed GPU-seconds, as the last scheduling pass weighed them."""
        for group, gpu_seconds in usage.items():
            self.fair_share_usage.labels(group=_group_label(group)).set(gpu_seconds)

    def observe_holdings(self, nodes: Sequence[Node], leases: Iterable[Lease]) -> None:
        """GPUs in the inventory and held, per pool; a GPU in two pools counts in each."""
        self.gpus_total.clear()
        totals = Tally(pool for node in nodes for gpu in node.gpus for pool in gpu.pools)
        for pool, count in totals.items():
            self.gpus_total.labels(pool=pool).set(count)
        pools_of = {gpu.uuid: gpu.pools for node in nodes for gpu in node.gpus}
        held: Tally = Tally()
        for lease in leases:
            for share in lease.placement.shares:
                for pool in pools_of.get(share.gpu_uuid, ()):
                    held[(pool, lease.workload.value)] += share.milli_gpu / MILLI_PER_GPU
        self.gpus_allocated.clear()
        for (pool, workload), gpus in held.items():
            self.gpus_allocated.labels(pool=pool, workload=workload).set(gpus)

    def render(self, nodes: Sequence[Node], leases: Iterable[Lease]) -> tuple[bytes, str]:
        """The exposition text, with the GPU holdings set from ``nodes`` and the live ``leases``
        (read from the allocator when Prometheus scrapes)."""
        self.observe_holdings(nodes, leases)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
