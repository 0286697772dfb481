"""A server is sent to a card's MPS daemon only where the service runs one (issue 15).

A real hub from ``hub_config.py`` and its service, on a static inventory (cards NVML did not
find) of one card in the pool ``dev``, shared through MPS: ``GPUSLICE_MPS_POOLS`` is the one value
the hub's ``mps_pools`` and the service's ``MPSDaemons.pools`` default to. The service starts
daemons only for the cards NVML lists, so it runs none for this one: ``GET gpus`` says so
(``mps_daemon: false``), the hub sends the server no MPS variables (a client pointed at a pipe
nobody listens on cannot start CUDA at all), and the service's log says why the card has no
daemon. The pointing itself, where a daemon runs, is tested in tests/hub/test_slice_env.py and
the daemons in tests/service/telemetry/test_mps.py.
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


def test_a_card_of_an_mps_pool_without_a_daemon_sends_no_client_to_its_pipe(hub):
    on_card = spawn_slice_on(hub, "alice", MPS_CARD)
    assert not [name for name in on_card if name.startswith("CUDA_MPS_")], on_card
    unused_pipe = card_directories(default_root(hub.state_dir), MPS_CARD).pipe_directory
    assert unused_pipe not in on_card.values()
    listed = requests.get(
        hub.api + "gpus", headers={"Authorization": f"token {hub.service_token}"}, timeout=30
    ).json()["gpus"]
    assert [gpu["mps_daemon"] for gpu in listed if gpu["uuid"] == MPS_CARD] == [False]
    said = hub.log_path.read_text(errors="replace")  # the service writes to the hub's output
    assert "is in an MPS pool but gets no daemon: NVML did not find it on this host" in said
