"""A real JupyterHub on loopback managing the real gpuslice service, and API clients for it.

Like ``tests/integration/hubprocess.py``, but with the test hub config of this directory, which adds
the service, users in groups and an admin service whose token makes user tokens.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SERVICE_PREFIX = "/services/gpuslice/"


def quotas_yaml(groups: str) -> str:
    """The test quotas with ``groups`` (YAML indented under ``groups:``): every user may hold one
    GPU's worth of slices, and carol (who holds the dev GPU in job tests) far more."""
    return (
        """\
quotas:
  default_user:
    interactive:
      servers: 2
      milli_gpu: 1000
  users:
    carol:
      interactive:
        servers: 50
        milli_gpu: 100000
  groups:
"""
        + groups
    )


TEST_QUOTAS = quotas_yaml(
    """\
    researchers:
      interactive:
        servers: 8
        milli_gpu: 4000
"""
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceHub:
    """``jupyterhub -f tests/service/hub_test_config.py`` with the service it manages."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.url = f"http://127.0.0.1:{free_port()}"
        self.api = f"{self.url}{SERVICE_PREFIX}api/v1/"
        self.service_token = secrets.token_hex(16)
        self.admin_token = secrets.token_hex(16)
        profiles = state_dir / "profiles"
        profiles.mkdir()
        shutil.copy(REPO_ROOT / "profiles" / "default.yaml", profiles / "default.yaml")
        (profiles / "quotas.yaml").write_text(TEST_QUOTAS)
        self.env = {
            **os.environ,
            "GPUSLICE_TEST_STATE": str(state_dir),
            "GPUSLICE_TEST_HUB_URL": self.url,
            "GPUSLICE_TEST_HUB_PORT": str(free_port()),
            "GPUSLICE_TEST_PROXY_API_URL": f"http://127.0.0.1:{free_port()}",
            "GPUSLICE_TEST_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
            "GPUSLICE_TEST_SERVICE_TOKEN": self.service_token,
            "GPUSLICE_TEST_ADMIN_TOKEN": self.admin_token,
            "GPUSLICE_TEST_PROFILES": str(profiles),
        }
        self.log_path = state_dir / "hub.log"
        self.config_file = HERE / "hub_test_config.py"
        self.process: subprocess.Popen | None = None
        self.tokens: dict[str, str] = {}

    def start(self, timeout: float = 90) -> ServiceHub:
        jupyterhub = Path(sys.executable).with_name("jupyterhub")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(jupyterhub), "-f", str(self.config_file)],
                cwd=self.state_dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_for_service(timeout)
        return self

    def wait_for_service(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.api + "health", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the gpuslice service did not answer within {timeout}s:\n{self.log()}")

    def wait_for_service_restart(self, old_pid: int, timeout: float = 120) -> None:
        """Until the hub has started a new service process (it checks every 30 s) and it answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.service_pid()
            if pid not in (None, old_pid):
                try:
                    if requests.get(self.api + "health", timeout=2).ok:
                        return
                except requests.ConnectionError:
                    pass
            time.sleep(0.5)
        raise AssertionError(f"the hub did not restart the service within {timeout:g} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def service_pid(self) -> int | None:
        try:
            return int((self.state_dir / "gpuslice.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def token_for(self, user: str, scopes: list[str] | None = None) -> str:
        """A new API token of ``user``, made through the hub's API by the test admin service."""
        body = {"note": "gpuslice service test"}
        if scopes is not None:
            body["scopes"] = scopes
        response = requests.post(
            f"{self.url}/hub/api/users/{user}/tokens",
            json=body,
            headers={"Authorization": f"token {self.admin_token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["token"]

    def client(self, token: str | None) -> requests.Session:
        session = requests.Session()
        if token is not None:
            session.headers["Authorization"] = f"token {token}"
        return session

    def as_user(self, user: str) -> requests.Session:
        if user not in self.tokens:
            self.tokens[user] = self.token_for(user)
        return self.client(self.tokens[user])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
