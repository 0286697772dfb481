"""Starting the embedded-default hub (``hub_config.py``) for real, on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HubProcess:
    """``jupyterhub -f hub_config.py`` in a state directory of its own, stopped on close."""

    def __init__(self, state_dir: Path, extra_env: dict[str, str] | None = None, bin_dir: Path | None = None):
        self.state_dir = state_dir
        self.bin_dir = bin_dir or Path(sys.executable).parent
        """Where ``jupyterhub`` is: this interpreter's environment unless told (the shared server's)."""
        self.url = f"http://127.0.0.1:{free_port()}"
        self.password = "quickstart-test-password"
        self.env = {
            **os.environ,
            "GPUSLICE_STATE_DIR": str(state_dir),
            "GPUSLICE_BIND_URL": self.url,
            "GPUSLICE_HUB_PORT": str(free_port()),
            "GPUSLICE_PROXY_API_URL": f"http://127.0.0.1:{free_port()}",
            "GPUSLICE_SERVICE_PORT": str(free_port()),
            "GPUSLICE_PASSWORD": self.password,
            **(extra_env or {}),
        }
        self.log_path = state_dir / "hub.log"
        self.process: subprocess.Popen | None = None

    @classmethod
    def as_make_run(cls, state_dir: Path) -> HubProcess:
        """The hub exactly as ``make run`` starts it: no setting of ours but free ports and a state
        directory of its own; the login password is the one it generates, read back after start."""
        hub = cls(state_dir)
        hub.env = {name: value for name, value in hub.env.items() if not name.startswith("GPUSLICE_")}
        hub.env.update(
            {
                "GPUSLICE_STATE_DIR": str(state_dir),
                "GPUSLICE_BIND_URL": hub.url,
                "GPUSLICE_HUB_PORT": str(free_port()),
                "GPUSLICE_PROXY_API_URL": f"http://127.0.0.1:{free_port()}",
                "GPUSLICE_SERVICE_PORT": str(free_port()),
            }
        )
        hub.password = ""
        return hub

    def start(self, timeout: float = 60) -> HubProcess:
        log = open(self.log_path, "ab")
        jupyterhub = self.bin_dir / "jupyterhub"
        self.process = subprocess.Popen(
            [str(jupyterhub), "-f", str(REPO_ROOT / "hub_config.py")],
            cwd=self.state_dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/hub/api", timeout=2).ok:
                    if not self.password:  # the quick-start password it generated
                        self.password = (self.state_dir / "quickstart-password").read_text().strip()
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the hub did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def login(self, user: str, password: str | None = None) -> requests.Session:
        session = requests.Session()
        page = session.get(f"{self.url}/hub/login", timeout=10)
        page.raise_for_status()
        xsrf = session.cookies.get("_xsrf")
        response = session.post(
            f"{self.url}/hub/login",
            data={"username": user, "password": password or self.password, "_xsrf": xsrf},
            allow_redirects=False,
            timeout=10,
        )
        session.login_status = response.status_code
        # The xsrf token changes with the login; a page view after it hands out the new one,
        # which API calls made with the session cookie must echo in X-XSRFToken.
        session.get(f"{self.url}/hub/home", timeout=10)
        session.headers["X-XSRFToken"] = session.cookies.get("_xsrf", path="/hub/") or ""
        return session

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
