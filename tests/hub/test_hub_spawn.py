"""The gpuslice spawner in a real hub (``hub_config.py``), with the real service on simulated GPUs.

The tests share one hub and run in file order: the restart and the service outage come last.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import SIMULATED_GPUS

pytestmark = pytest.mark.slow

SLICE = "a100-1-8"


def server_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


def create_users(hub, *names: str) -> None:
    response = hub.api("POST", "users", json={"usernames": list(names)})
    assert response.status_code in (201, 409), response.text


def test_spawn_page_lists_profiles_with_live_availability(hub):
    session = hub.process.login("alice")
    page = session.get(f"{hub.url}/hub/spawn/alice", timeout=30)
    assert page.status_code == 200, page.text
    assert '<select name="profile" id="gpuslice-profile"' in page.text
    assert '<option value="cpu"' in page.text
    assert '<option value="a100-1-8"' in page.text
    assert f"{8 * SIMULATED_GPUS} free" in page.text
    # a100-full is for researchers and alice is one, but 1000 milli is beyond her group's quota.
    assert 'value="a100-full"' in page.text and "data-reason=" in page.text
    assert 'id="gpuslice-quota"' in page.text and "Group researchers" in page.text
    # No T4 among the simulated GPUs: the option says why it cannot start.
    t4 = page.text.split('value="t4-1-2"', 1)[1].split("</option>", 1)[0]
    assert "disabled" in t4


def test_profiles_outside_the_users_groups_are_not_offered(hub):
    create_users(hub, "carol")
    page = hub.process.login("carol").get(f"{hub.url}/hub/spawn/carol", timeout=30)
    assert '<option value="a100-1-8"' in page.text
    assert 'value="a100-full"' not in page.text


def test_spawn_holds_a_slice_in_its_environment_and_stop_releases_it(hub):
    response = hub.api("POST", "users/alice/server", json={"profile": SLICE})
    assert response.status_code in (201, 202), response.text
    server = hub.wait_ready("alice")
    state = server["state"]
    lease_id = state["gpuslice_lease_id"]
    assert state["gpuslice_profile"] == SLICE
    env = server_environ(state["pid"])
    assert env["CUDA_VISIBLE_DEVICES"].startswith("GPU-sim-")
    assert env["GPUSLICE_LEASE_ID"] == lease_id
    assert env["GPUSLICE_PROFILE"] == SLICE
    assert env["GPUSLICE_MILLI_GPU"] == "125"
    assert env["GPUSLICE_GPU_MEMORY_MIB"] == "10240"
    assert env["GPUSLICE_SIMULATED"] == "1"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.12"
    assert env["GPUSLICE_SERVICE_URL"] == f"{hub.url}/services/gpuslice/"
    assert env["JUPYTER_PATH"].split(":")[0].endswith("spawner/enforce/jupyter_data")
    lease = hub.service("GET", f"leases/{lease_id}").json()["lease"]
    assert (lease["holder"], lease["user"], lease["released_at"]) == ("alice/", "alice", None)
    assert lease["shares"][0]["gpu_uuid"] == env["CUDA_VISIBLE_DEVICES"]

    assert hub.api("DELETE", "users/alice/server").status_code in (202, 204)
    hub.wait_gone("alice")
    assert hub.service("GET", f"leases/{lease_id}").json()["lease"]["released_at"] is not None


def test_cpu_only_profile_takes_no_lease(hub):
    response = hub.api("POST", "users/alice/server", json={"profile": "cpu"})
    assert response.status_code in (201, 202), response.text
    server = hub.wait_ready("alice")
    assert "gpuslice_lease_id" not in server["state"]
    env = server_environ(server["state"]["pid"])
    assert "CUDA_VISIBLE_DEVICES" not in env and env["OMP_NUM_THREADS"] == "2"
    assert hub.live_leases() == []
    hub.api("DELETE", "users/alice/server")
    hub.wait_gone("alice")


def test_a_refused_spawn_says_why_and_holds_nothing(hub):
    create_users(hub, "dave")
    response = hub.api("POST", "users/dave/server", json={"profile": "a100-1-4"})
    # The default user quota is 125 milli-GPU; a quarter GPU is beyond it.
    assert response.status_code == 409, response.text
    message = response.json()["message"]
    assert "quota" in message and "125" in message, message
    assert "Traceback" not in message
    assert hub.live_leases() == []
    assert not hub.server("dave")


def test_unknown_profile_is_a_clear_error(hub):
    create_users(hub, "dave")
    response = hub.api("POST", "users/dave/server", json={"profile": "h100-everything"})
    assert response.status_code == 400, response.text
    assert "There is no profile 'h100-everything' for dave" in response.json()["message"]


def test_fifty_users_at_once_never_exceed_capacity_or_quota(hub):
    users = [f"crowd{number:02d}" for number in range(50)]
    create_users(hub, *users)

    def spawn(user: str) -> int:
        return hub.api("POST", f"users/{user}/server", json={"profile": SLICE}).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(spawn, users))
    assert set(statuses) <= {201, 202, 409}, statuses
    # Exactly the capacity is granted; every other spawn is refused at once for lack of it.
    assert statuses.count(409) == len(users) - 8 * SIMULATED_GPUS, statuses
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        models = [hub.server(user) for user in users]
        if not any(model.get("pending") for model in models):
            break
        time.sleep(1)
    running = [user for user, model in zip(users, models, strict=True) if model.get("ready")]
    gpus = hub.service("GET", "gpus").json()["gpus"]
    assert all(sum(holder["milli_gpu"] for holder in gpu["holders"]) <= 1000 for gpu in gpus)
    leases = hub.live_leases()
    # Servers the loaded machine could not bring up in time were stopped by the hub, and gave
    # their slices back: every lease still held belongs to a running server, and no more.
    assert len(running) == len(leases) > 0
    assert {lease["holder"] for lease in leases} == {f"{user}/" for user in running}
    hub.stop_all_servers()
    assert hub.live_leases() == []


def test_hub_restart_keeps_servers_and_their_slices(hub):
    create_users(hub, "bob")
    for user in ("alice", "bob"):
        assert hub.api("POST", f"users/{user}/server", json={"profile": SLICE}).status_code in (201, 202)
    before = {user: hub.wait_ready(user)["state"] for user in ("alice", "bob")}

    hub.process.stop()
    hub.start()

    for user, state in before.items():
        after = hub.wait_ready(user)["state"]
        assert after["gpuslice_lease_id"] == state["gpuslice_lease_id"]
        assert after["pid"] == state["pid"]
        assert server_environ(after["pid"])["GPUSLICE_LEASE_ID"] == state["gpuslice_lease_id"]
    assert {lease["id"] for lease in hub.live_leases()} == {s["gpuslice_lease_id"] for s in before.values()}
    hub.stop_all_servers()


def test_service_down_gpu_spawn_fails_clearly_and_cpu_still_spawns(hub):
    create_users(hub, "erin")
    pid = int((hub.process.state_dir / "gpuslice.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    # Right after the kill, before the hub notices and starts the service again.
    response = hub.api("POST", "users/erin/server", json={"profile": SLICE})
    assert response.status_code == 503, response.text
    assert "The GPU service is unavailable" in response.json()["message"]
    assert not hub.server("erin")

    response = hub.api("POST", "users/erin/server", json={"profile": "cpu"})
    assert response.status_code in (201, 202), response.text
    hub.wait_ready("erin")
    hub.api("DELETE", "users/erin/server")
    hub.wait_gone("erin")
