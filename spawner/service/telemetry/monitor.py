"""``GPUMonitor``: samples the GPUs every few seconds and turns each sample into what it is for.

Each poll reads the cards and their processes (NVML, in a worker thread: the driver's calls block),
finds each process's lease through its process tree, and then, on the event loop:

- holds each lease's processes to their slice (:mod:`.enforcement`, the pool's ``warn``/``stop``);
- counts busy seconds per card and allocated and used GPU-seconds per user, group and class, into
  the Prometheus counters and the ledger's rollup (written every ``flush_interval_s`` and at stop);
- keeps, per lease, since when it has been GPU-idle, for the pages (a batch job idle longer than
  ``batch_idle_flag_s`` is flagged on the admin's usage page).

Without a real GPU (the simulated demo inventory) nothing can be measured, so the sample is each
simulated card's allocation (:func:`.readings.allocation_sample`) and the pages say so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from traitlets import Dict, Float, Int, List, Unicode, validate
from traitlets.config import LoggingConfigurable

from spawner.core.units import GPU, MILLI_PER_GPU, Lease, Node, WorkloadClass
from spawner.inventory import SOURCE_LABEL
from spawner.ledger.usage_rollup import GPUNotice as Notice
from spawner.ledger.usage_rollup import PendingUsage, UsageRollup

from . import dcgm
from .enforcement import POLICIES, WARN, Action, OveruseTracker
from .owners import LeaseIndex, Owner, ProcessOwners
from .readings import NvmlSampler, ProcessReading, Sample, allocation_sample

if TYPE_CHECKING:
    from spawner.ledger import Ledger

    from ..metrics import ServiceMetrics
    from .culling import IdleCuller
    from .mps_daemons import MPSDaemons

SOURCES = ("auto", "nvml", "allocation", "dcgm")


@dataclass(frozen=True, slots=True)
class LeaseUse:
    """One lease in the last sample: GPUs held, GPUs in use, GPU memory its processes hold."""

    lease: Lease
    allocated_gpus: float
    used_gpus: float
    memory_mib: int
    idle_since: float | None
    measured: bool = True
    """False where the use is the allocation (simulated GPUs) or an estimate (a shared card read
    from DCGM): such a lease is never idle, and its GPU activity is not reported to the hub."""


@dataclass(frozen=True, slots=True)
class Poll:
    """What one poll saw and did (the pages read the last one; tests read each)."""

    sample: Sample
    owners: Mapping[int, Owner | None]
    lease_use: Mapping[str, LeaseUse]
    unowned: tuple[ProcessReading, ...]
    actions: tuple[Action, ...]


class GPUMonitor(LoggingConfigurable):
    """Watches every GPU of this host while the service runs (local mode)."""

    interval_s = Float(
        5.0,
        help="""
        Seconds between two samples of the GPUs. Each sample costs a few NVML calls per card and a
        look at the processes NVML lists; 5 s costs well under 1% of a core on an 8-GPU host
        (benchmarks/telemetry.py measures it). Busy seconds and GPU-seconds are counted per
        sample, so a longer interval makes them coarser, not cheaper to trust.
        """,
    ).tag(config=True)

    source = Unicode(
        "auto",
        help="""
        Where samples come from: 'nvml' (the NVIDIA driver), 'allocation' (each GPU is as busy as
        it is allocated: for simulated GPUs, and labelled so on the pages), 'dcgm' (NVIDIA's DCGM
        exporters at dcgm_urls: Kubernetes mode, where the service is not on the GPU nodes;
        it measures, it does not enforce: see spawner/service/telemetry/dcgm.py), or 'auto':
        'nvml' when the inventory came from NVML, 'allocation' otherwise.
        """,
    ).tag(config=True)

    dcgm_urls = List(
        Unicode(),
        [],
        help="""
        The metrics pages of the DCGM exporters, one per GPU node (the exporter is a DaemonSet),
        e.g. ['http://10.0.3.7:9400/metrics']; read when source is 'dcgm'. HAMi's vGPU monitor
        pages (:31992/metrics) are read the same way, alone or next to DCGM's. Run the exporter
        with --kubernetes-enable-pod-labels (and --kubernetes-virtual-gpus where GPUs are
        shared) so that each card's series carry its pods' gpuslice labels: that is how a card's
        use is given to the lease that holds it when several leases share the card.
        """,
    ).tag(config=True)

    dcgm_timeout_s = Float(
        3.0,
        help="""
        Seconds to wait for one DCGM exporter page. An exporter that does not answer in time is
        left out of that sample (its cards and their leases are not counted, never counted idle)
        and the others are read as usual. Keep it under interval_s.
        """,
    ).tag(config=True)

    @validate("source")
    def _valid_source(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in SOURCES:
            raise ValueError(
                f"GPUMonitor.source must be one of {', '.join(SOURCES)}, got {proposal['value']!r}"
            )
        return proposal["value"]

    busy_threshold_percent = Float(
        10.0,
        help="""
        A card counts as busy in a sample when its utilisation (NVML's share of the sampling
        period in which a kernel ran) is at or over this percentage: busy hours per card per day
        are the samples over it. Lower counts a card that runs a kernel now and then as busy.
        """,
    ).tag(config=True)

    idle_threshold_percent = Float(
        5.0,
        help="""
        A lease is GPU-idle in a sample when its processes use less than this percentage of its
        slice (a 1/8 slice whose kernel uses 0.3% of the card uses 2.4% of its slice). A kernel
        busy on the CPU only while it holds a slice is GPU-idle. Never idle on simulated GPUs,
        whose use is their allocation.
        """,
    ).tag(config=True)

    batch_idle_flag_s = Float(
        1800.0,
        help="""
        A batch job whose GPUs have been idle this long (seconds) is flagged on the admin's usage
        page. Batch jobs are never stopped for being idle: a job may be loading data or waiting
        for a checkpoint to be written.
        """,
    ).tag(config=True)

    enforcement = Dict(
        {},
        help="""
        The policy per pool when a lease's processes hold more GPU memory on a card than its slice
        there (plus memory_tolerance_mib): 'warn' (a notice for the user and the admins), 'stop'
        (the same, and its processes on that card get SIGTERM after grace_s, SIGKILL one grace
        period later) or 'off'. For example {'dev': 'warn', 'train': 'stop'}. Pools not named
        get default_enforcement.
        """,
    ).tag(config=True)

    @validate("enforcement")
    def _valid_enforcement(self, proposal: dict[str, Any]) -> dict[str, str]:
        for pool, policy in proposal["value"].items():
            if policy not in POLICIES:
                raise ValueError(
                    f"GPUMonitor.enforcement[{pool!r}] must be one of {', '.join(POLICIES)}, got {policy!r}"
                )
        return proposal["value"]

    default_enforcement = Unicode(
        WARN,
        help="The policy ('warn', 'stop' or 'off') of pools that GPUMonitor.enforcement does not name.",
    ).tag(config=True)

    @validate("default_enforcement")
    def _valid_default(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in POLICIES:
            choices, value = ", ".join(POLICIES), proposal["value"]
            raise ValueError(f"GPUMonitor.default_enforcement must be one of {choices}, got {value!r}")
        return proposal["value"]

    grace_s = Float(
        60.0,
        help="""
        Seconds a lease may stay over its slice under the 'stop' policy before its processes on
        that card are stopped: time to read the notice and free memory (a training step that
        briefly peaks is not stopped if it comes back under within this time).
        """,
    ).tag(config=True)

    memory_tolerance_mib = Int(
        512,
        help="""
        GPU memory (MiB) a lease may hold on a card beyond its slice before it counts as over.
        NVML counts a process's CUDA context (a few hundred MiB, more with cuDNN and cuBLAS
        loaded) in its memory, and no framework's memory fraction covers that, so a process that
        keeps to its slice still reads a little over it.
        """,
    ).tag(config=True)

    flush_interval_s = Float(
        60.0,
        help="""
        Seconds between two writes of the accounting rollup to the ledger. Figures not yet written
        are written when the service stops, so a restart loses none; a crash loses at most this
        much.
        """,
    ).tag(config=True)

    retention_days = Int(
        400,
        help="Days of hourly per-GPU and daily per-user figures the ledger keeps (at least 15).",
    ).tag(config=True)

    @validate("retention_days")
    def _valid_retention(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 15:
            # The usage page shows the last 14 days; keeping fewer would leave it half empty.
            raise ValueError(f"GPUMonitor.retention_days must be at least 15, got {proposal['value']}")
        return proposal["value"]

    notices_kept = Int(200, help="How many recent notices the monitor keeps for the pages.").tag(config=True)

    def __init__(
        self,
        ledger: Ledger,
        metrics: ServiceMetrics | None = None,
        *,
        nvml_library: ModuleType | None = None,
        clock: Any = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger
        self.metrics = metrics
        self.clock = clock
        self.sampler = NvmlSampler(nvml_library)
        self.process_owners = ProcessOwners()
        self.rollup = UsageRollup(ledger.engine, self.retention_days)
        self.pending = PendingUsage()
        self.tracker = OveruseTracker(
            self.enforcement, self.default_enforcement, self.grace_s, self.memory_tolerance_mib
        )
        self.notices: deque[Notice] = deque(maxlen=self.notices_kept)
        self._unsaved_notices: list[Notice] = []
        self.last_poll: Poll | None = None
        self.measured: bool | None = None
        self._last_sample_at: float | None = None
        self._last_flush_at: float | None = None
        self._idle_since: dict[str, float] = {}
        self._task: asyncio.Task | None = None
        self.culler: IdleCuller | None = None
        self.mps: MPSDaemons | None = None
        """The MPS daemons whose per-user servers are sized at each sample (None: no MPS pool)."""
        """Stops notebook servers whose slice stays GPU-idle (set by the service; None: no culling)."""

    # ------------------------------------------------------------------ life

    def start(self) -> asyncio.Task:
        """Poll until :meth:`stop`; the task is the caller's to await or cancel."""
        if self.source == "dcgm" and not self.dcgm_urls:
            raise ValueError(
                "GPUMonitor.source is 'dcgm' but GPUMonitor.dcgm_urls is empty: name the DCGM "
                "exporters' metrics pages (one per GPU node, e.g. http://<node>:9400/metrics)"
            )
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self._task

    async def stop(self) -> None:
        """Stop polling, write what is pending, and let NVML go."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await self.flush()
            await self._save_notices(self.clock())
        except Exception:
            # The service is stopping either way; say what is lost rather than stop half-way.
            self.log.exception("GPU monitor: the accounting since the last write could not be saved")
        await asyncio.to_thread(self.sampler.stop)

    async def _run(self) -> None:
        try:
            await self.load_notices()
        except Exception:
            self.log.exception("GPU monitor: the notices of earlier services could not be read")
        while True:
            started = time.monotonic()
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad sample (a driver hiccup, the ledger busy) must not end the monitoring.
                self.log.exception("GPU monitor: this sample failed; trying again in %g s", self.interval_s)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    # ------------------------------------------------------------------ one poll

    async def poll(self) -> Poll:
        """Read one sample and act on it; returns what it saw and did."""
        now = self.clock()
        if self.source == "dcgm":
            return await self._poll_exporters(now)
        nodes, leases, sample, owners = await asyncio.to_thread(self._read, now)
        for error in sample.errors:
            self.log.warning("GPU monitor: NVML could not read %s", error)
        gpus = {gpu.uuid: gpu for node in nodes for gpu in node.gpus}
        index = LeaseIndex(leases)
        attributed: list[tuple[ProcessReading, Lease]] = []
        unowned: list[ProcessReading] = []
        for process in sample.processes:
            lease = index.lease_for(owners.get(process.pid))
            if lease is None:
                unowned.append(process)
            else:
                attributed.append((process, lease))
        actions = self.tracker.decide(self.tracker.overuses(attributed, gpus), now)
        for action in actions:
            self._act(action, now)
        used_by_lease, unknown = self._used_gpus(sample, attributed)
        memory_by_lease: dict[str, int] = {}
        for process, lease in attributed:
            memory_by_lease[lease.id] = memory_by_lease.get(lease.id, 0) + process.memory_mib
        lease_use = self._account(sample, gpus, leases, used_by_lease, unknown, memory_by_lease, now)
        return await self._finish_poll(Poll(sample, owners, lease_use, tuple(unowned), tuple(actions)), now)

    async def _poll_exporters(self, now: float) -> Poll:
        """One poll from the DCGM exporters (Kubernetes mode): measure and account, no enforcement."""
        self.measured = True
        sample, pods = await dcgm.scrape(self.dcgm_urls, self.dcgm_timeout_s, now)
        for error in sample.errors:
            self.log.warning("GPU monitor: a DCGM exporter could not be read: %s", error)
        nodes, leases = await asyncio.to_thread(lambda: (self.ledger.nodes(), self.ledger.list_leases()))
        gpus = {gpu.uuid: gpu for node in nodes for gpu in node.gpus}
        use = dcgm.lease_use(sample, pods, leases, self.idle_threshold_percent)
        lease_use = self._account(
            sample, gpus, leases, dict(use.used_gpus), set(use.estimated), dict(use.memory_mib), now
        )
        return await self._finish_poll(Poll(sample, {}, lease_use, (), ()), now)

    async def _finish_poll(self, poll: Poll, now: float) -> Poll:
        """What every poll does once its leases' use is known: culling, notices, the rollup."""
        if self.culler is not None:
            await self.culler.report_activity(poll.lease_use, now)
            due = self.culler.due(poll.lease_use, now)
            for idle, reason in await self.culler.cull(due, self.idle_threshold_percent):
                lease = idle.lease
                self._notify(Notice(now, lease.user, lease.id, "stopped (GPU idle)", reason))
        self.last_poll = poll
        await self._save_notices(now)
        if self._last_flush_at is None:
            self._last_flush_at = now
        elif now - self._last_flush_at >= self.flush_interval_s:
            await self.flush()
        return poll

    def _read(self, now: float) -> tuple[list[Node], list[Lease], Sample, dict[int, Owner | None]]:
        """The blocking half of a poll, in one worker thread: the ledger's holdings, NVML, ``/proc``."""
        nodes, leases = self.ledger.nodes(), self.ledger.list_leases()
        if self.mps is not None and self.mps.controls:
            self.mps.prepare_servers(leases)
        if not self._uses_nvml(nodes):
            return nodes, leases, allocation_sample(now, nodes, leases), {}
        sample = self.sampler.read(now)
        owners = self.process_owners.owners(process.pid for process in sample.processes)
        return nodes, leases, sample, owners

    def _uses_nvml(self, nodes: Sequence[Node]) -> bool:
        if self.measured is None:
            if self.source == "auto":
                self.measured = any(node.labels.get(SOURCE_LABEL) == "nvml" for node in nodes)
            else:
                self.measured = self.source == "nvml"
        return self.measured

    def _notify(self, notice: Notice) -> None:
        self.notices.appendleft(notice)
        self._unsaved_notices.append(notice)

    async def _save_notices(self, now: float) -> None:
        """Keep this poll's notices in the ledger, so that a restarted service still shows them."""
        if not self._unsaved_notices:
            return
        notices, self._unsaved_notices = self._unsaved_notices, []
        try:
            await asyncio.to_thread(self.rollup.add_notices, notices, now)
        except Exception:
            self._unsaved_notices = notices + self._unsaved_notices
            raise

    async def load_notices(self) -> None:
        """The notices kept in the ledger by earlier services, newest first (at start)."""
        kept = await asyncio.to_thread(self.rollup.recent_notices, self.notices_kept)
        self.notices.extend(kept)

    def _act(self, action: Action, now: float) -> None:
        lease = action.overuse.lease
        kind = "stopped" if action.signal_number is not None else f"over slice ({action.overuse.policy})"
        self.log.warning("GPU monitor: %s", action.message)
        if action.signal_number is not None:
            for pid in action.overuse.pids:
                try:
                    os.kill(pid, action.signal_number)
                except ProcessLookupError:
                    pass  # it ended on its own meanwhile
                except PermissionError as error:
                    self.log.error(
                        "GPU monitor: cannot send %s to pid %d of %s (%s); run the service as root "
                        "or as the servers' user to enforce 'stop'",
                        signal.Signals(action.signal_number).name,
                        pid,
                        lease.holder,
                        error,
                    )
        self._notify(Notice(now, lease.user, lease.id, kind, action.message))

    # ------------------------------------------------------------------ accounting

    def _account(
        self,
        sample: Sample,
        gpus: Mapping[str, GPU],
        leases: Sequence[Lease],
        used_by_lease: Mapping[str, float],
        unknown: set[str],
        memory_by_lease: Mapping[str, int],
        now: float,
    ) -> dict[str, LeaseUse]:
        """Add this sample's seconds (since the previous one) to the counters and the rollup.

        ``used_by_lease``: GPUs each lease used in the sample; ``unknown``: leases whose use could
        not be measured (never idle, figures marked not measured); ``memory_by_lease``: MiB."""
        previous, self._last_sample_at = self._last_sample_at, now
        # The first sample, and one after a long stall (a suspended host), count nothing before
        # them: the service cannot know what happened while nobody looked.
        elapsed = 0.0 if previous is None else now - previous
        if elapsed > 3 * self.interval_s or elapsed < 0:
            elapsed = 0.0
        for reading in sample.gpus:
            gpu = gpus.get(reading.uuid)
            if gpu is None or reading.utilisation_percent is None:
                continue
            busy = reading.utilisation_percent >= self.busy_threshold_percent
            pools = ",".join(sorted(gpu.pools))
            if elapsed:
                self.pending.add_gpu(
                    gpu.uuid,
                    gpu.node,
                    gpu.index,
                    pools,
                    now - elapsed,
                    now,
                    busy=busy,
                    used_fraction=reading.utilisation_percent / 100,
                    measured=reading.measured,
                )
            if self.metrics is not None:
                self.metrics.observe_gpu_busy(gpu.index, gpu.node, pools, elapsed if busy else 0.0)
        sampled = {reading.uuid for reading in sample.gpus}
        uses: dict[str, LeaseUse] = {}
        for lease in leases:
            allocated = lease.total_milli / MILLI_PER_GPU
            if not lease.placement.shares:
                continue
            if sample.measured and any(share.gpu_uuid not in sampled for share in lease.placement.shares):
                # Its cards are not this host's (or NVML could not read them): nothing to say.
                continue
            used = allocated if not sample.measured else used_by_lease.get(lease.id, 0.0)
            # Measured only where every process of the lease could be measured (see _used_gpus).
            measured = sample.measured and lease.id not in unknown
            if elapsed:
                self.pending.add_holder(
                    lease.user,
                    lease.group,
                    lease.workload.value,
                    now - elapsed,
                    now,
                    allocated_gpus=allocated,
                    used_gpus=used,
                    measured=measured,
                )
            if self.metrics is not None:
                self.metrics.observe_gpu_seconds(
                    lease.group, lease.workload.value, allocated * elapsed, used * elapsed
                )
            idle = measured and used * 100 < self.idle_threshold_percent * allocated
            if idle:
                self._idle_since.setdefault(lease.id, now)
            else:
                self._idle_since.pop(lease.id, None)
            uses[lease.id] = LeaseUse(
                lease,
                allocated,
                used,
                memory_by_lease.get(lease.id, 0),
                self._idle_since.get(lease.id),
                measured,
            )
        for gone in set(self._idle_since) - set(uses):
            del self._idle_since[gone]
        return uses

    @staticmethod
    def _used_gpus(
        sample: Sample, attributed: Sequence[tuple[ProcessReading, Lease]]
    ) -> tuple[dict[str, float], set[str]]:
        """GPUs each lease's processes used in the sample, and the leases whose use is unknown.

        Each process's own SM share where NVML keeps one; otherwise the card's utilisation split
        among the card's processes by the memory each holds (the best share NVML gives then). A
        process on a card with neither (MIG) makes its lease's use unknown: never called idle.
        """
        unknown: set[str] = set()
        memory_on_card: dict[str, int] = {}
        for process in sample.processes:
            memory_on_card[process.gpu_uuid] = memory_on_card.get(process.gpu_uuid, 0) + process.memory_mib
        used: dict[str, float] = {}
        for process, lease in attributed:
            if process.sm_percent is not None:
                share = process.sm_percent / 100
            else:
                reading = sample.gpu(process.gpu_uuid)
                total = memory_on_card.get(process.gpu_uuid, 0)
                if reading is None or reading.utilisation_percent is None:
                    unknown.add(lease.id)
                    continue
                if total == 0:
                    continue
                share = reading.utilisation_percent / 100 * process.memory_mib / total
            used[lease.id] = used.get(lease.id, 0.0) + share
        return used, unknown

    async def flush(self) -> None:
        """Write the pending figures to the ledger; kept for the next try if the write fails."""
        self._last_flush_at = self.clock()
        if not self.pending:
            return
        batch = self.pending.take()
        try:
            await asyncio.to_thread(self.rollup.add, batch, self._last_flush_at)
        except Exception:
            self.pending.merge(batch)
            raise

    # ------------------------------------------------------------------ views

    def notices_of(self, user: str, limit: int = 5) -> list[Notice]:
        """``user``'s most recent notices (over their slice, stopped), newest first."""
        return [notice for notice in self.notices if notice.user == user][:limit]

    def idle_batch_jobs(self, now: float | None = None) -> list[LeaseUse]:
        """Batch leases GPU-idle for longer than ``batch_idle_flag_s``, longest first."""
        now = self.clock() if now is None else now
        if self.last_poll is None:
            return []
        flagged = [
            use
            for use in self.last_poll.lease_use.values()
            if use.lease.workload == WorkloadClass.batch
            and use.idle_since is not None
            and now - use.idle_since >= self.batch_idle_flag_s
        ]
        return sorted(flagged, key=lambda use: use.idle_since or 0)
