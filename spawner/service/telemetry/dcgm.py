"""Samples from NVIDIA's DCGM exporter (or HAMi's vGPU monitor): the GPU monitor's source in
Kubernetes mode.

In Kubernetes the service does not run on the GPU nodes, so it cannot ask NVML; the DCGM exporter
(a DaemonSet, one pod per GPU node, ``:9400/metrics``) can. Each exporter page is read over HTTP
with a timeout, never blocking the event loop, and parsed with ``prometheus_client``'s parser into
the same :class:`~.readings.Sample` the NVML sampler makes, so busy hours per card, used
GPU-seconds and the usage page work the same in both modes.

What the exporter says, and what is taken from it (its default counters):

- ``DCGM_FI_DEV_GPU_UTIL`` (percent), ``DCGM_FI_DEV_FB_USED`` and ``DCGM_FI_DEV_FB_FREE`` (MiB), one
  series per card, labelled ``UUID``, ``gpu`` (index), ``Hostname``, ``modelName``...
- With its Kubernetes pod mapping on, each series also names the ``pod``/``namespace`` holding the
  card; with ``--kubernetes-virtual-gpus`` (shared GPUs) a card has one series per pod sharing it;
  with ``--kubernetes-enable-pod-labels`` the pod's labels are copied onto the series, their names
  made valid (``gpuslice.io/lease`` becomes ``gpuslice_io_lease``). Those labels are how a series
  is tied to a lease (a notebook pod's lease label, a job pod's job-id label:
  :mod:`spawner.enforce.kube_objects`).

HAMi's vGPU monitor (``:31992/metrics``) is read the same way: its per-card
``hami_host_gpu_utilization_ratio`` and ``hami_host_gpu_memory_used_bytes`` (or its older names,
``HostCoreUtilization`` and ``HostGPUMemoryUsage``, still written with ``--legacy-metrics``),
labelled ``device_uuid``. Its per-container series name the pods on each card but carry none of
their labels, so a card HAMi shares is an estimate.

What use is given to each lease (:func:`lease_use`): DCGM measures whole cards, not processes.

- A card held by one lease: all its use is that lease's (measured).
- A card whose series name two pods or more (the exporter lists every pod sharing a card with
  ``--kubernetes-virtual-gpus``): a lease none of them carries has no pod there and uses none of
  it (measured); the card's use goes to the leases named, all of it if one is named (measured),
  split by their slices' sizes if several are (an estimate).
- A card held by several leases, pods not listed: split by the slices' sizes. Measured only when
  the whole card's use is under the idle threshold of each slice (idle however it is split);
  otherwise an estimate.

An estimated lease is never taken for idle, and its figures are marked not measured. With one
pod named per card the exporter may be mapping a shared card to one of its pods only, so that
alone proves nothing about the other leases on the card.

Per-process enforcement (over-slice warn/stop) needs processes, which DCGM does not give: in
Kubernetes mode slices are held by the back-end (HAMi, KAI, MIG), and this source only measures.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from spawner.core.units import MILLI_PER_GPU, Lease, WorkloadClass
from spawner.core.vocabulary import holder_label
from spawner.enforce.kube_objects import JOB_ID_LABEL, LEASE_LABEL, label_value

from .readings import GPUReading, Sample

UTILISATION = "DCGM_FI_DEV_GPU_UTIL"
MEMORY_USED = "DCGM_FI_DEV_FB_USED"
MEMORY_FREE = "DCGM_FI_DEV_FB_FREE"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CardField:
    """One per-card series an exporter writes: which figure it is, the label naming the card's
    uuid, and the factor to percent or MiB."""

    figure: str  # "utilisation", "used_mib" or "free_mib"
    uuid_label: str
    scale: float = 1.0


CARD_FIELDS: dict[str, CardField] = {
    # NVIDIA's DCGM exporter: all three are in its default counters.
    UTILISATION: CardField("utilisation", "UUID"),
    MEMORY_USED: CardField("used_mib", "UUID"),
    MEMORY_FREE: CardField("free_mib", "UUID"),
    # HAMi's vGPU monitor (cmd/vGPUmonitor/metrics.go), and its older names (--legacy-metrics).
    "hami_host_gpu_utilization_ratio": CardField("utilisation", "device_uuid"),
    "hami_host_gpu_memory_used_bytes": CardField("used_mib", "device_uuid", 1 / MIB),
    "HostCoreUtilization": CardField("utilisation", "deviceuuid"),
    "HostGPUMemoryUsage": CardField("used_mib", "deviceuuid", 1 / MIB),
}
"""The per-card figures read, by metric name."""
POD_FIELDS: dict[str, tuple[str, str, str]] = {
    # HAMi's per-container series: (uuid label, pod label, namespace label). They name the pods
    # on each card; HAMi copies no pod labels, so they say how many pods share a card, not whose.
    "hami_container_device_utilization_ratio": ("device_uuid", "pod", "namespace"),
    "Device_utilization_desc_of_container": ("deviceuuid", "podname", "podnamespace"),
}


def prometheus_label(kubernetes_label: str) -> str:
    """A pod label's name as the exporter writes it on a series (invalid characters become ``_``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", kubernetes_label)


LEASE_SERIES_LABEL = prometheus_label(LEASE_LABEL)
JOB_SERIES_LABEL = prometheus_label(JOB_ID_LABEL)
COPIED_LABEL_PREFIXES = ("", "pod_label_")
"""How the exporter may name a copied pod label: as the label (its source copies the sanitized
key), or behind ``pod_label_`` (as some versions are documented to); both are read."""


def copied_label(labels: dict[str, str], name: str) -> str:
    """The value of pod label ``name`` (already a valid label name) copied onto a series, or ''."""
    for prefix in COPIED_LABEL_PREFIXES:
        if labels.get(prefix + name):
            return labels[prefix + name]
    return ""


@dataclass(frozen=True, slots=True)
class PodOnCard:
    """A pod the exporter names on a card, with the gpuslice labels it copied (may be empty)."""

    gpu_uuid: str
    namespace: str
    pod: str
    lease_label: str = ""
    job_label: str = ""


@dataclass
class ExporterPage:
    """One exporter page, parsed: per card the three figures, and the pods named on each card."""

    utilisation: dict[str, float] = field(default_factory=dict)
    used_mib: dict[str, float] = field(default_factory=dict)
    free_mib: dict[str, float] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)
    pods: list[PodOnCard] = field(default_factory=list)

    def readings(self) -> list[GPUReading]:
        """One reading per card that has a utilisation; memory 0 where the exporter left it out."""
        return [
            GPUReading(
                uuid=uuid,
                utilisation_percent=percent,
                memory_used_mib=int(self.used_mib.get(uuid, 0)),
                memory_total_mib=int(self.used_mib.get(uuid, 0) + self.free_mib.get(uuid, 0)),
            )
            for uuid, percent in self.utilisation.items()
        ]


class ExporterPageError(ValueError):
    """An exporter page that is not the Prometheus text format (names the exporter)."""


def parse_exporter_page(text: str, source: str = "the DCGM exporter") -> ExporterPage:
    """The cards and pods of one exporter page (DCGM's or HAMi's vGPU monitor's); series without
    a card uuid are left out (a MIG instance's series name its parent card's UUID and are read as
    that card's)."""
    page = ExporterPage()
    figures = {"utilisation": page.utilisation, "used_mib": page.used_mib, "free_mib": page.free_mib}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as error:
        raise ExporterPageError(f"{source} answered a page that is not Prometheus text: {error}") from None
    seen_pods: set[PodOnCard] = set()
    for family in families:
        if family.name in POD_FIELDS:
            uuid_label, pod_label, namespace_label = POD_FIELDS[family.name]
            for sample in family.samples:
                uuid, pod = sample.labels.get(uuid_label, ""), sample.labels.get(pod_label, "")
                named = PodOnCard(uuid, sample.labels.get(namespace_label, ""), pod)
                if uuid and pod and named not in seen_pods:
                    seen_pods.add(named)
                    page.pods.append(named)
            continue
        field_read = CARD_FIELDS.get(family.name)
        if field_read is None:
            continue
        for sample in family.samples:
            uuid = sample.labels.get(field_read.uuid_label, "")
            if not uuid:
                continue
            # A card shared by several pods has one series per pod, each with the card's figure.
            figures[field_read.figure][uuid] = float(sample.value) * field_read.scale
            host = sample.labels.get("Hostname") or sample.labels.get("node") or sample.labels.get("nodeid")
            if host:
                page.hosts[uuid] = host
            pod = sample.labels.get("pod") or sample.labels.get("pod_name") or ""
            if pod:
                named = PodOnCard(
                    uuid,
                    sample.labels.get("namespace") or sample.labels.get("pod_namespace") or "",
                    pod,
                    copied_label(sample.labels, LEASE_SERIES_LABEL),
                    copied_label(sample.labels, JOB_SERIES_LABEL),
                )
                if named not in seen_pods:
                    seen_pods.add(named)
                    page.pods.append(named)
    return page


def sample_from_pages(now: float, pages: Sequence[ExporterPage], errors: Sequence[str] = ()) -> Sample:
    """One :class:`Sample` of every card the pages name (measured, no processes). A card named
    by two pages (DCGM's and HAMi's on one node) is read once, from the first: counted twice,
    its busy seconds would be too."""
    gpus: dict[str, GPUReading] = {}
    for page in pages:
        for reading in page.readings():
            gpus.setdefault(reading.uuid, reading)
    return Sample(now, tuple(gpus.values()), (), measured=True, errors=tuple(errors))


@dataclass(frozen=True, slots=True)
class LeaseGPUUse:
    """What :func:`lease_use` found: GPUs used per lease, memory per lease (MiB), and the
    leases whose use is an estimate (never taken for idle)."""

    used_gpus: Mapping[str, float]
    memory_mib: Mapping[str, int]
    estimated: frozenset[str]


def _lease_keys(lease: Lease) -> set[str]:
    """The label values a pod of ``lease`` carries (:mod:`spawner.enforce.kube_objects`)."""
    keys = {f"lease:{label_value(lease.id)}"}
    if lease.workload == WorkloadClass.batch:
        keys.add(f"job:{label_value(holder_label(lease.holder))}")
    return keys


def lease_use(
    sample: Sample, pods: Iterable[PodOnCard], leases: Iterable[Lease], idle_percent: float
) -> LeaseGPUUse:
    """Each lease's share of the cards it holds, by the rules in this module's docstring."""
    by_key: dict[str, Lease] = {}
    holders: dict[str, list[tuple[Lease, int]]] = {}
    for lease in leases:
        for key in _lease_keys(lease):
            by_key[key] = lease
        for share in lease.placement.shares:
            holders.setdefault(share.gpu_uuid, []).append((lease, share.milli_gpu))
    pods_on_card: dict[str, set[tuple[str, str]]] = {}
    named: dict[str, set[str]] = {}
    for pod in pods:
        pods_on_card.setdefault(pod.gpu_uuid, set()).add((pod.namespace, pod.pod))
        lease = by_key.get(f"lease:{pod.lease_label}") or by_key.get(f"job:{pod.job_label}")
        if lease is not None:
            named.setdefault(pod.gpu_uuid, set()).add(lease.id)
    used: dict[str, float] = {}
    memory: dict[str, int] = {}
    estimated: set[str] = set()
    for uuid, held in holders.items():
        reading = sample.gpu(uuid)
        if reading is None or reading.utilisation_percent is None:
            continue  # not this sample's card, or no figure: nothing is said of its leases here
        busy = reading.utilisation_percent / 100
        # Two pods or more on one card: the exporter lists every pod sharing it (virtual GPUs),
        # so a lease it does not name has no pod there. One pod could be the only one it maps.
        listed = named.get(uuid, set()) if len(pods_on_card.get(uuid, ())) >= 2 else set()
        total_milli = sum(milli for lease, milli in held if not listed or lease.id in listed)
        for lease, milli in held:
            if len(held) == 1:
                share = 1.0
            elif listed:
                share = milli / total_milli if lease.id in listed else 0.0
                if len(listed) > 1 and lease.id in listed:
                    estimated.add(lease.id)
            else:
                share = milli / total_milli
                # Idle however the card's use is split: all of it would be under this slice's
                # idle threshold. Otherwise who used the card is not known.
                if busy * MILLI_PER_GPU * 100 >= idle_percent * milli:
                    estimated.add(lease.id)
            used[lease.id] = used.get(lease.id, 0.0) + busy * share
            memory[lease.id] = memory.get(lease.id, 0) + int(reading.memory_used_mib * share)
    return LeaseGPUUse(used, memory, frozenset(estimated))


async def fetch_page(url: str, timeout_s: float) -> str:
    """The exporter's page at ``url``; raises ``OSError``/``HTTPClientError`` with the reason."""
    answer = await AsyncHTTPClient().fetch(url, request_timeout=timeout_s, connect_timeout=timeout_s)
    return answer.body.decode("utf-8", errors="replace")


async def scrape(urls: Sequence[str], timeout_s: float, now: float) -> tuple[Sample, list[PodOnCard]]:
    """Read every exporter at once; one that fails is named in ``Sample.errors`` and its cards
    are missing from the sample (their leases are then not counted, rather than counted idle)."""

    async def one(url: str) -> ExporterPage | str:
        try:
            text = await fetch_page(url, timeout_s)
            # Parsing a page of a few hundred series is short, but it is CPU: off the loop.
            return await asyncio.to_thread(parse_exporter_page, text, f"the DCGM exporter at {url}")
        except (OSError, HTTPClientError, ExporterPageError) as error:
            return f"{url}: {error}"

    results = await asyncio.gather(*(one(url) for url in urls))
    pages = [result for result in results if isinstance(result, ExporterPage)]
    errors = [result for result in results if isinstance(result, str)]
    pods = [pod for page in pages for pod in page.pods]
    return sample_from_pages(now, pages, errors), pods
