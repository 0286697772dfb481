"""The Grafana dashboard in deploy/grafana/ reads only metrics that exist: the service's own (as its
registry names them) or the DCGM exporter's and HAMi's documented ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from spawner.service.metrics import ServiceMetrics

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "gpuslice-usage.json"
EXTERNAL = {
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "vGPU_device_memory_usage_in_bytes",
    "vGPU_device_memory_limit_in_bytes",
    "HostCoreUtilization",
}
"""The DCGM exporter's and HAMi's metrics the dashboard reads (deploy/grafana/README.md lists them)."""


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", ())]
    found += [variable["query"] for variable in dashboard["templating"]["list"]]
    return found


def service_metric_names() -> set[str]:
    metrics = ServiceMetrics()
    metrics.observe_gpu_busy(0, "n", "dev", 1.0)
    metrics.observe_gpu_seconds("g", "interactive", 1.0, 1.0)
    metrics.observe_queue([("g", "normal")])
    metrics.observe_preemption("g")
    metrics.observe_holdings([], [])
    metrics.gpus_total.labels(pool="dev").set(1)
    metrics.gpus_allocated.labels(pool="dev", workload="batch").set(1)
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_metric_of_the_dashboard_exists():
    exported = service_metric_names()
    used = {
        name
        for expr in expressions()
        for name in re.findall(r"\b(gpuslice_\w+|DCGM_\w+|vGPU_\w+|Host(?!name\b)\w+)", expr)
    }
    assert {name for name in used if name.startswith("gpuslice_")} <= exported, exported
    assert {name for name in used if not name.startswith("gpuslice_")} <= EXTERNAL
    assert {
        "gpuslice_gpu_busy_seconds_total",
        "gpuslice_allocated_gpu_seconds_total",
        "gpuslice_used_gpu_seconds_total",
    } <= used


def test_the_panels_have_unique_ids_and_a_data_source_input():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert [item["name"] for item in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
