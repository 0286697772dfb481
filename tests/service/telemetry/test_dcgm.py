"""Kubernetes mode: the GPU monitor reads NVIDIA's DCGM exporter over HTTP.

A real HTTP server on 127.0.0.1 serves a metrics page in the exporter's format (the series,
their HELP/TYPE lines and labels as dcgm-exporter writes them: ``gpu``, ``UUID``,
``pci_bus_id``, ``device``, ``modelName``, ``Hostname``, and with its pod mapping ``container``,
``namespace``, ``pod`` plus the pod's own labels made valid names). The exporter stands in for
the GPUs; the ledger, the monitor, its HTTP client and the parser are the real ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spawner.core.units import SliceRequest
from spawner.enforce.kube_objects import label_value
from spawner.service.telemetry import GPUMonitor
from spawner.service.telemetry.dcgm import ExporterPageError, parse_exporter_page

from .conftest import DEV_UUIDS, TRAIN_UUID, grant

HOST = "gpu-node-a"


def series(name: str, help_text: str, kind: str, cards: list[dict]) -> str:
    """One metric family as the exporter writes it; each card dict: uuid, index, value, and the
    pods on it (each a dict of its labels: pod, namespace, container and copied pod labels)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for card in cards:
        base = (
            f'gpu="{card["index"]}",UUID="{card["uuid"]}",'
            f'pci_bus_id="00000000:{31 + card["index"]:02X}:00.0",'
            f'device="nvidia{card["index"]}",modelName="NVIDIA A100-SXM4-80GB",Hostname="{HOST}",'
            'DCGM_FI_DRIVER_VERSION="550.54.15"'
        )
        for pod in card.get("pods") or [{"container": "", "namespace": "", "pod": ""}]:
            extra = ",".join(f'{key}="{value}"' for key, value in pod.items())
            lines.append(f"{name}{{{base},{extra}}} {card[name]}")
    return "\n".join(lines)


def exporter_page(cards: list[dict]) -> str:
    """A page with the three fields read and one the monitor ignores, as the exporter serves it."""
    return (
        "\n".join(
            [
                series("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "gauge", cards),
                series("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "gauge", cards),
                series("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", "gauge", cards),
                series("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "gauge", cards),
            ]
        )
        + "\n"
    )


def card(uuid: str, index: int, util: float, used_mib: int, pods: list[dict] | None = None) -> dict:
    return {
        "uuid": uuid,
        "index": index,
        "pods": pods,
        "DCGM_FI_DEV_SM_CLOCK": 1410,
        "DCGM_FI_DEV_GPU_UTIL": util,
        "DCGM_FI_DEV_FB_USED": used_mib,
        "DCGM_FI_DEV_FB_FREE": 81920 - used_mib,
    }


def notebook_pod(user: str, lease_id: str) -> dict:
    """A notebook pod's series labels, with its gpuslice labels copied by the exporter."""
    return {
        "container": "notebook",
        "namespace": "jhub",
        "pod": f"jupyter-{user}",
        "gpuslice_io_owner": label_value(user),
        "gpuslice_io_lease": label_value(lease_id),
    }


class Exporter:
    """A real HTTP server serving ``page`` at /metrics (``delay_s`` before answering)."""

    def __init__(self) -> None:
        self.page = ""
        self.delay_s = 0.0
        self.requests = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                exporter.requests += 1
                if exporter.delay_s:
                    time.sleep(exporter.delay_s)
                body = exporter.page.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporter():
    served = Exporter()
    yield served
    served.close()


def dcgm_monitor(ledger, clock, exporter, **traits) -> GPUMonitor:
    return GPUMonitor(ledger, clock=clock, source="dcgm", dcgm_urls=[exporter.url], **traits)


def polls(monitor: GPUMonitor, clock, count: int = 2, step_s: float = 5.0):
    """``count`` polls ``step_s`` apart (the first counts nothing before it); the last poll."""

    async def run():
        last = None
        for number in range(count):
            if number:
                clock.advance(step_s)
            last = await monitor.poll()
        await monitor.flush()
        return last

    return asyncio.run(run())


def shared_dev_leases(ledger):
    """Alice's and bob's 1/8 slices, both on the first dev card (the placement packs them)."""
    alice = grant(ledger, "lease-alice")
    bob = grant(ledger, "lease-bob", user="bob", group="nlp")
    assert alice.placement.shares[0].gpu_uuid == bob.placement.shares[0].gpu_uuid
    return alice, bob


def test_the_exporters_page_is_read_per_card_with_the_pods_and_their_lease_labels():
    page = parse_exporter_page(
        exporter_page(
            [
                card(DEV_UUIDS[0], 0, 37, 5000, [notebook_pod("alice", "lease-alice")]),
                card(TRAIN_UUID, 2, 0, 0),
            ]
        )
    )
    assert page.utilisation == {DEV_UUIDS[0]: 37.0, TRAIN_UUID: 0.0}
    assert page.used_mib[DEV_UUIDS[0]] == 5000 and page.free_mib[DEV_UUIDS[0]] == 81920 - 5000
    assert page.hosts == {DEV_UUIDS[0]: HOST, TRAIN_UUID: HOST}
    [pod] = page.pods
    assert (pod.gpu_uuid, pod.namespace, pod.pod, pod.lease_label) == (
        DEV_UUIDS[0],
        "jhub",
        "jupyter-alice",
        label_value("lease-alice"),
    )
    [reading] = [reading for reading in page.readings() if reading.uuid == DEV_UUIDS[0]]
    assert (reading.utilisation_percent, reading.memory_used_mib, reading.memory_total_mib) == (
        37.0,
        5000,
        81920,
    )


def test_a_page_that_is_not_prometheus_text_is_refused_by_name():
    with pytest.raises(ExporterPageError, match="the DCGM exporter at http://x/metrics"):
        parse_exporter_page('DCGM_FI_DEV_GPU_UTIL{gpu="0" 12\n', "the DCGM exporter at http://x/metrics")


def test_a_card_held_by_one_lease_gives_it_the_cards_use_and_counts_busy_hours(ledger, clock, exporter):
    lease = grant(ledger, "lease-alice")
    uuid = lease.placement.shares[0].gpu_uuid
    exporter.page = exporter_page([card(uuid, DEV_UUIDS.index(uuid), 40, 6000), card(TRAIN_UUID, 2, 0, 0)])
    monitor = dcgm_monitor(ledger, clock, exporter)
    poll = polls(monitor, clock)

    use = poll.lease_use[lease.id]
    assert use.used_gpus == pytest.approx(0.4) and use.memory_mib == 6000 and use.idle_since is None
    assert monitor.measured is True
    [day] = monitor.rollup.holder_days(clock.now - 86400, clock.now + 86400)
    assert (day.user, day.measured) == ("alice", True)
    assert day.allocated_gpu_seconds == pytest.approx(0.125 * 5)
    assert day.used_gpu_seconds == pytest.approx(0.4 * 5)
    hours = {hour.gpu_uuid: hour for hour in monitor.rollup.gpu_hours(clock.now - 86400, clock.now + 86400)}
    assert hours[uuid].busy_seconds == pytest.approx(5) and hours[TRAIN_UUID].busy_seconds == 0


def test_on_a_shared_card_the_pods_lease_labels_say_whose_use_it_is(ledger, clock, exporter):
    alice, bob = shared_dev_leases(ledger)
    uuid = alice.placement.shares[0].gpu_uuid
    # Shared GPUs listed per pod (--kubernetes-virtual-gpus): alice's pod and a pod of no lease.
    stranger = {"container": "c", "namespace": "other", "pod": "someone-elses"}
    exporter.page = exporter_page([card(uuid, 0, 60, 9000, [notebook_pod("alice", alice.id), stranger])])
    poll = polls(dcgm_monitor(ledger, clock, exporter), clock)

    assert poll.lease_use[alice.id].used_gpus == pytest.approx(0.6)
    # Bob has no pod on the card: he used none of it, measured, so his slice is GPU-idle.
    assert poll.lease_use[bob.id].used_gpus == 0 and poll.lease_use[bob.id].idle_since is not None


def test_a_busy_shared_card_without_pod_labels_is_split_as_an_estimate_and_never_idle(
    ledger, clock, exporter
):
    alice, bob = shared_dev_leases(ledger)
    uuid = alice.placement.shares[0].gpu_uuid
    exporter.page = exporter_page([card(uuid, 0, 50, 8000)])
    monitor = dcgm_monitor(ledger, clock, exporter)
    poll = polls(monitor, clock)

    for lease in (alice, bob):
        assert poll.lease_use[lease.id].used_gpus == pytest.approx(0.25)
        assert poll.lease_use[lease.id].idle_since is None
    days = monitor.rollup.holder_days(clock.now - 86400, clock.now + 86400)
    assert {day.user: day.measured for day in days} == {"alice": False, "bob": False}


def test_an_idle_shared_card_makes_every_slice_on_it_idle(ledger, clock, exporter):
    alice, bob = shared_dev_leases(ledger)
    uuid = alice.placement.shares[0].gpu_uuid
    exporter.page = exporter_page([card(uuid, 0, 0, 300)])
    poll = polls(dcgm_monitor(ledger, clock, exporter), clock)
    assert all(poll.lease_use[lease.id].idle_since is not None for lease in (alice, bob))


def test_a_silent_exporter_is_left_out_of_the_sample_without_holding_up_the_poll(ledger, clock, exporter):
    lease = grant(ledger, "lease-alice")
    uuid = lease.placement.shares[0].gpu_uuid
    exporter.page = exporter_page([card(uuid, 0, 40, 6000)])
    exporter.delay_s = 5.0
    monitor = dcgm_monitor(ledger, clock, exporter, dcgm_timeout_s=0.3)

    poll = asyncio.run(monitor.poll())

    assert poll.sample.gpus == () and exporter.url in poll.sample.errors[0]
    # Its leases are not counted at all, rather than counted idle.
    assert lease.id not in poll.lease_use


def test_one_exporter_down_does_not_lose_the_others(ledger, clock, exporter):
    lease = grant(ledger, "lease-alice")
    uuid = lease.placement.shares[0].gpu_uuid
    exporter.page = exporter_page([card(uuid, 0, 40, 6000)])
    closed = Exporter()
    closed.close()  # a node whose exporter is gone: connection refused
    monitor = GPUMonitor(ledger, clock=clock, source="dcgm", dcgm_urls=[closed.url, exporter.url])
    poll = asyncio.run(monitor.poll())
    assert [reading.uuid for reading in poll.sample.gpus] == [uuid]
    assert len(poll.sample.errors) == 1 and closed.url in poll.sample.errors[0]
    assert lease.id in poll.lease_use


def test_a_job_pod_is_found_by_its_job_id_label(ledger, clock, exporter):
    job = grant(
        ledger,
        "lease-job",
        holder="job-3f2a9c1d0b7e",  # a batch lease is held by its job id
        workload="batch",
        request=SliceRequest(milli_gpu=125, pool="dev"),
    )
    other = grant(ledger, "lease-bob", user="bob")
    uuid = job.placement.shares[0].gpu_uuid
    assert other.placement.shares[0].gpu_uuid == uuid
    # Copied behind the pod_label_ prefix, as some exporter versions name copied pod labels.
    job_pod = {
        "container": "job",
        "namespace": "jhub",
        "pod": "gpuslice-job-x",
        "pod_label_gpuslice_io_job_id": label_value("job-3f2a9c1d0b7e"),  # as make_job labels it
    }
    bystander = {"container": "c", "namespace": "jhub", "pod": "unlabelled"}
    exporter.page = exporter_page([card(uuid, 0, 70, 9000, [job_pod, bystander])])
    poll = polls(dcgm_monitor(ledger, clock, exporter), clock)
    assert poll.lease_use[job.id].used_gpus == pytest.approx(0.7)
    assert poll.lease_use[other.id].used_gpus == 0


def test_dcgm_without_exporters_is_refused_at_start(ledger, clock):
    monitor = GPUMonitor(ledger, clock=clock, source="dcgm")

    async def start() -> None:
        monitor.start()

    with pytest.raises(ValueError, match="dcgm_urls is empty"):
        asyncio.run(start())


def hami_page(uuid: str, util: float, used_mib: int, pods: list[str], legacy: bool = False) -> str:
    """HAMi's vGPU monitor's page (cmd/vGPUmonitor/metrics.go): its names, or its legacy ones."""
    used = used_mib * 1024 * 1024
    if legacy:
        card = f'nodeid="{HOST}",deviceidx="0",deviceuuid="{uuid}",devicetype="NVIDIA-NVIDIA A100-SXM4-80GB"'
        lines = [
            "# HELP HostCoreUtilization GPU core utilization",
            "# TYPE HostCoreUtilization gauge",
            f"HostCoreUtilization{{{card}}} {util}",
            "# HELP HostGPUMemoryUsage GPU device memory usage",
            "# TYPE HostGPUMemoryUsage gauge",
            f"HostGPUMemoryUsage{{{card}}} {used}",
            "# HELP Device_utilization_desc_of_container Container device utilization description",
            "# TYPE Device_utilization_desc_of_container gauge",
        ]
        lines += [
            f'Device_utilization_desc_of_container{{podnamespace="jhub",podname="{pod}",ctrname="c",'
            f'vdeviceid="0",deviceuuid="{uuid}"}} 0'
            for pod in pods
        ]
    else:
        card = (
            f'node="{HOST}",device_index="0",device_uuid="{uuid}",device_type="NVIDIA-NVIDIA A100-SXM4-80GB"'
        )
        lines = [
            "# HELP hami_host_gpu_utilization_ratio GPU core utilization ratio (0-100)",
            "# TYPE hami_host_gpu_utilization_ratio gauge",
            f"hami_host_gpu_utilization_ratio{{{card}}} {util}",
            "# HELP hami_host_gpu_memory_used_bytes GPU device memory usage in bytes",
            "# TYPE hami_host_gpu_memory_used_bytes gauge",
            f"hami_host_gpu_memory_used_bytes{{{card}}} {used}",
            "# HELP hami_container_device_utilization_ratio Container device SM utilization ratio",
            "# TYPE hami_container_device_utilization_ratio gauge",
        ]
        lines += [
            f'hami_container_device_utilization_ratio{{namespace="jhub",pod="{pod}",container="c",'
            f'vdevice_index="0",device_uuid="{uuid}"}} 0'
            for pod in pods
        ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("legacy", [False, True], ids=["hami", "hami-legacy-names"])
def test_hamis_vgpu_monitor_is_read_the_same_way(ledger, clock, exporter, legacy):
    alice, bob = shared_dev_leases(ledger)
    uuid = alice.placement.shares[0].gpu_uuid
    page = parse_exporter_page(hami_page(uuid, 45, 7000, ["jupyter-alice", "jupyter-bob"], legacy))
    assert page.utilisation == {uuid: 45.0} and page.used_mib == {uuid: 7000.0} and page.hosts == {uuid: HOST}
    assert {pod.pod for pod in page.pods} == {"jupyter-alice", "jupyter-bob"}

    exporter.page = hami_page(uuid, 45, 7000, ["jupyter-alice", "jupyter-bob"], legacy)
    poll = polls(dcgm_monitor(ledger, clock, exporter), clock)
    # HAMi names the pods but copies none of their labels: whose use it is stays an estimate.
    for lease in (alice, bob):
        assert poll.lease_use[lease.id].used_gpus == pytest.approx(0.225)
        assert poll.lease_use[lease.id].idle_since is None
    assert poll.sample.gpu(uuid).utilisation_percent == 45


def test_a_card_read_by_dcgm_and_hami_both_is_counted_once(ledger, clock, exporter):
    lease = grant(ledger, "lease-alice")
    uuid = lease.placement.shares[0].gpu_uuid
    exporter.page = exporter_page([card(uuid, 0, 40, 6000)])
    hami = Exporter()
    hami.page = hami_page(uuid, 40, 6000, ["jupyter-alice"])
    try:
        monitor = GPUMonitor(ledger, clock=clock, source="dcgm", dcgm_urls=[exporter.url, hami.url])
        poll = polls(monitor, clock)
    finally:
        hami.close()
    assert [reading.uuid for reading in poll.sample.gpus] == [uuid]
    hours = {hour.gpu_uuid: hour for hour in monitor.rollup.gpu_hours(clock.now - 86400, clock.now + 86400)}
    assert hours[uuid].busy_seconds == pytest.approx(5)
