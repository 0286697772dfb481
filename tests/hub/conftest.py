"""A real hub from ``hub_config.py`` with its gpuslice service on simulated GPUs and a small quota."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import requests
from harness import REPO_ROOT, HubProcess
from harness.jobs import follow_log

ADMIN = "hubadmin"
ADMIN_PASSWORD = "an-admin-password-of-32-characters-or-more"
SIMULATED_GPUS = 2
QUOTAS = """\
quotas:
  default_user:
    interactive:
      servers: 1
      milli_gpu: 125
  groups:
    researchers:
      interactive:
        servers: 8
        milli_gpu: 250
"""


def small_quota_profiles(folder: Path) -> Path:
    """The shipped profiles with a quota of one 1/8 slice per user and two per researcher."""
    folder.mkdir()
    shutil.copy(REPO_ROOT / "profiles" / "default.yaml", folder / "default.yaml")
    (folder / "quotas.yaml").write_text(QUOTAS)
    return folder


class Hub:
    """The hub process plus an admin token and the helpers every test needs."""

    def __init__(self, process: HubProcess):
        self.process = process
        self.url = process.url
        self.token = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        """The hub's REST API on the hub's own port: fifty spawns at once would queue in the proxy."""
        url = f"http://127.0.0.1:{self.process.env['GPUSLICE_HUB_PORT']}/hub/api/{path}"
        return requests.request(method, url, headers=self.headers, timeout=60, **kwargs)

    def service(self, method: str, path: str, **kwargs) -> requests.Response:
        """The gpuslice API with the service's own token, as the spawner calls it."""
        token = (self.process.state_dir / "gpuslice-api-token").read_text().strip()
        url = f"{self.url}/services/gpuslice/api/v1/{path}"
        return requests.request(
            method, url, headers={"Authorization": f"token {token}"}, timeout=30, **kwargs
        )

    def make_admin_token(self) -> None:
        session = self.process.login(ADMIN, ADMIN_PASSWORD)
        response = session.post(
            f"{self.url}/hub/api/users/{ADMIN}/tokens", json={"note": "tests"}, timeout=10
        )
        response.raise_for_status()
        self.token = response.json()["token"]

    def wait_for_service(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.service("GET", "gpus").status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the gpuslice service did not answer:\n{self.process.log()}")

    def server(self, user: str, name: str = "") -> dict:
        """The user's server model, with its spawner state (admin:server_state), or {}."""
        model = self.api("GET", f"users/{user}").json()
        return model.get("servers", {}).get(name, {})

    def wait_ready(self, user: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(user)
            if server.get("ready"):
                return server
            if not server.get("pending") and not server:
                raise AssertionError(f"{user}'s server stopped before it was ready:\n{self.process.log()}")
            time.sleep(0.3)
        raise AssertionError(f"{user}'s server was not ready within {timeout}s:\n{self.process.log()}")

    def wait_gone(self, user: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.server(user):
                return
            time.sleep(0.3)
        raise AssertionError(f"{user}'s server did not stop within {timeout}s")

    def stop_all_servers(self) -> None:
        for user in self.api("GET", "users").json():
            if user["servers"]:
                self.api("DELETE", f"users/{user['name']}/server")
        for user in self.api("GET", "users").json():
            if user["servers"]:
                self.wait_gone(user["name"])

    def live_leases(self) -> list[dict]:
        return self.service("GET", "leases").json()["leases"]

    def start(self) -> Hub:
        self.process.start()
        self.make_admin_token()
        self.wait_for_service()
        return self


class Jobs:
    """The gpuslice jobs API as bob, with a token the hub admin makes for him."""

    def __init__(self, hub: Hub, user: str):
        assert hub.api("POST", "users", json={"usernames": [user]}).status_code in (201, 409)
        token = hub.api("POST", f"users/{user}/tokens", json={"note": "reclaim test"}).json()["token"]
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        self.base = f"{hub.url}/services/gpuslice/api/v1/"
        self.hub = hub

    def submit(self, name: str, script: str) -> dict:
        body = {"name": name, "script": script, "gpus": 1, "time_limit": "10m"}
        response = self.session.post(self.base + "jobs", json=body, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["job"]

    def get(self, job_id: str) -> dict:
        return self.session.get(self.base + f"jobs/{job_id}", timeout=30).json()

    def log(self, job_id: str) -> str:
        return follow_log(self.session, self.hub.process, job_id)[0]

    def wait_for(self, job_id: str, states: tuple[str, ...], timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)["job"]
            if job["state"] in states:
                return job
            time.sleep(0.3)
        pytest.fail(f"job {job_id} never reached {states}: {self.get(job_id)}\n{self.hub.process.log()}")

    def wait_placed(self, job_id: str, timeout: float = 30) -> dict:
        """The queued job once a scheduling pass has given it a place and a reason."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)["job"]
            if job["state"] == "queued" and job["queue_position"] is not None:
                return job
            time.sleep(0.3)
        pytest.fail(f"job {job_id} was never placed in the queue: {self.get(job_id)}")

    def cancel(self, job_id: str) -> None:
        self.session.post(self.base + f"jobs/{job_id}/cancel", timeout=60)


def progress_messages(hub: Hub, user: str, timeout: float = 150) -> list[dict]:
    """Every event of the user's pending spawn, as the spawn page reads them, until it ends."""
    url = f"http://127.0.0.1:{hub.process.env['GPUSLICE_HUB_PORT']}/hub/api/users/{user}/server/progress"
    events = []
    with requests.get(url, headers=hub.headers, stream=True, timeout=timeout) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[len("data:") :])
                events.append(event)
                if event.get("ready") or event.get("failed"):
                    break
    return events


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    state = tmp_path_factory.mktemp("gpuslice-hub")
    profiles = small_quota_profiles(state / "profiles")
    extra_env = {
        "GPUSLICE_PROFILES_DIR": str(profiles),
        "GPUSLICE_INVENTORY": "simulated",
        "GPUSLICE_SIMULATED_GPUS": str(SIMULATED_GPUS),
        "GPUSLICE_TRAIN_GPUS": "none",  # both GPUs sliced for notebooks: these tests count slices
        "GPUSLICE_GROUPS": "researchers=alice,bob",
        "GPUSLICE_ADMIN_USERS": ADMIN,
        "GPUSLICE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "GPUSLICE_KEEP_SERVERS": "1",
    }
    running = Hub(HubProcess(state, extra_env)).start()
    yield running
    try:
        running.wait_for_service()
        running.stop_all_servers()
    finally:
        running.process.stop()
