"""A server whose slice is on a card the service shares through MPS is sent to that card's daemon.

A real hub from ``hub_config.py`` and its service, on a static inventory (real cards, as far as
the hub can tell: simulated cards run no daemon) of one card in the pool ``dev``, shared through
MPS. ``GPUSLICE_MPS_POOLS`` is the one value the hub's ``mps_pools`` and the service's
``MPSDaemons.pools`` default to; the hub and the service share ``GPUSLICE_STATE_DIR``, so their
MPS root is the same ``<state>/mps`` without any setting.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from harness.service_hubs import service_hub, started

from spawner.enforce.mps import card_directories, default_root

GPUS_YAML = """\
nodes:
  - name: gpu-a
    cpu: 16
    memory_mib: 65536
    gpus:
      - model: A100-80GB
        memory_mib: 81920
        pools: dev
"""
MPS_CARD = "GPU-static-gpu-a-0"
SLICE = "a100-1-8"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = service_hub(tmp_path_factory.mktemp("mps-card-hub"), gpus_yaml=GPUS_YAML)
    process.env["GPUSLICE_MPS_POOLS"] = "dev"
    started(process)
    yield process
    process.stop()


def hub_api(hub, method: str, path: str, **kwargs) -> requests.Response:
    url = f"{hub.url}/hub/api/{path}"
    headers = {"Authorization": f"token {hub.admin_token}"}
    return requests.request(method, url, headers=headers, timeout=60, **kwargs)


def ready_server(hub, user: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = hub_api(hub, "GET", f"users/{user}").json().get("servers", {}).get("", {})
        if server.get("ready"):
            return server
        time.sleep(0.3)
    raise AssertionError(f"{user}'s server was not ready within {timeout}s:\n{hub.log()}")


def server_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


def spawn_slice_on(hub, user: str, card: str) -> dict[str, str]:
    """``user``'s server with a 1/8 slice, which must be on ``card``; its environment."""
    response = hub_api(hub, "POST", f"users/{user}/server", json={"profile": SLICE})
    assert response.status_code in (201, 202), response.text
    env = server_environ(ready_server(hub, user)["state"]["pid"])
    assert env["CUDA_VISIBLE_DEVICES"] == card, "the placement changed; the test's premise is gone"
    return env


def test_a_slice_of_an_mps_card_gets_that_cards_daemon(hub):
    on_mps = spawn_slice_on(hub, "alice", MPS_CARD)
    expected = card_directories(default_root(hub.state_dir), MPS_CARD)
    assert on_mps["CUDA_MPS_PIPE_DIRECTORY"] == expected.pipe_directory
    assert on_mps["CUDA_MPS_LOG_DIRECTORY"] == expected.log_directory
    assert on_mps["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "13"
    assert on_mps["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=10240M"
