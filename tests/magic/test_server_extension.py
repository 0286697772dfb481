"""The notebook server's half of the JupyterLab panel: what it tells of the slice, and which of the
service's paths it lets the panel reach (the browser test drives it end to end in JupyterLab)."""

from __future__ import annotations

import pytest
from tornado import web

from spawner.magic.server_extension import SERVICE_PATHS, server_owner, server_slice


def allowed(method: str, path: str) -> bool:
    return any(pattern.fullmatch(path) for pattern in SERVICE_PATHS.get(method, []))


def test_the_slice_is_read_from_the_environment_the_spawner_gave_the_server():
    held = server_slice(
        {
            "GPUSLICE_PROFILE": "a100-1-8",
            "GPUSLICE_MILLI_GPU": "125",
            "GPUSLICE_GPUS": "1",
            "GPUSLICE_GPU_MEMORY_MIB": "10240",
            "GPUSLICE_GPU_UUIDS": "GPU-sim-0",
            "GPUSLICE_NODE": "node-a",
            "GPUSLICE_SIMULATED": "1",
        }
    )
    assert (held["profile"], held["milli_gpu"], held["gpus"], held["memory_mib"]) == (
        "a100-1-8",
        125,
        1,
        10240,
    )
    assert held["gpu_uuids"] == ["GPU-sim-0"] and held["simulated"] and held["node"] == "node-a"


def test_a_cpu_only_server_holds_nothing():
    held = server_slice({"GPUSLICE_SERVICE_URL": "http://127.0.0.1:1/services/gpuslice/"})
    assert (held["milli_gpu"], held["gpus"], held["memory_mib"], held["gpu_uuids"]) == (0, 0, 0, [])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "jobs"),
        ("GET", "jobs/job-3f2a9c1d0b7e"),
        ("GET", "jobs/job-3f2a9c1d0b7e/logs"),
        ("GET", "jobs/job-3f2a9c1d0b7e/result"),
        ("POST", "jobs/job-3f2a9c1d0b7e/cancel"),
        ("GET", "notices"),  # the GPU monitor's notices, shown as lab notifications
    ],
)
def test_the_panel_reaches_reading_and_cancelling_jobs(method, path):
    assert allowed(method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "jobs"),  # submitting is %%submit's, with its checks and manifest
        ("POST", "jobs/batch"),
        ("GET", "jobs/job-3f2a9c1d0b7e/result/values"),  # pickles go to the kernel only
        ("GET", "leases"),
        ("POST", "leases"),
        ("DELETE", "jobs/job-3f2a9c1d0b7e"),
        ("GET", "jobs/../leases"),
        ("GET", "usage"),
        ("POST", "notices"),
        ("GET", "notices/all"),
    ],
)
def test_nothing_else_of_the_service_is_reachable_through_it(method, path):
    assert not allowed(method, path)


def test_notices_are_asked_for_the_servers_own_user(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    assert server_owner() == "alice"
    monkeypatch.delenv("JUPYTERHUB_USER")
    with pytest.raises(web.HTTPError) as refused:
        server_owner()
    assert refused.value.status_code == 503 and "JUPYTERHUB_USER" in refused.value.log_message
