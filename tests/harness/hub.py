"""The one launcher of test hubs: a real JupyterHub from the repository's ``hub_config.py``.

Every hub a test or benchmark starts is ``hub_config.py`` as shipped (through
``hub_config_for_tests.py``, which adds only what a test asks for), on free loopback ports and in
a state directory of its own. The variations the tests need are the ones an admin has:
``GPUSLICE_*`` variables (inventory, profiles, groups, service config file, ...), plus, where
hub_config.py has no variable, service arguments, test users and roles (see
``hub_config_for_tests.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import requests

from .ports import free_port

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SHIPPED_CONFIG = REPO_ROOT / "hub_config.py"
TEST_CONFIG = HERE / "hub_config_for_tests.py"
SERVICE_PREFIX = "/services/gpuslice/"


def without_gpuslice_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less every ``GPUSLICE_*`` variable: a test hub gets only the settings its test
    gives, whatever the shell that runs the tests has set."""
    return {name: value for name, value in environ.items() if not name.startswith("GPUSLICE_")}


class HubProcess:
    """``jupyterhub -f`` hub_config.py (with the test overlay) in ``state_dir``, stopped on :meth:`stop`.

    ``extra_env``: ``GPUSLICE_*`` settings of hub_config.py, after the ports, state directory and
    password chosen here. ``bin_dir``: where ``jupyterhub`` is, this interpreter's environment
    unless told (the shared server's). ``service_args``, ``users``, ``roles`` and ``admin_token``:
    what hub_config.py has no variable for; see ``hub_config_for_tests.py``. With none of them the
    hub is hub_config.py's exactly.
    """

    def __init__(
        self,
        state_dir: Path,
        extra_env: Mapping[str, str] | None = None,
        bin_dir: Path | None = None,
        *,
        service_args: Iterable[str] = (),
        users: Iterable[str] | None = None,
        roles: Iterable[dict] = (),
        admin_token: str | None = None,
    ):
        self.state_dir = state_dir
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.url = f"http://127.0.0.1:{free_port()}"
        """The hub's public URL (its proxy)."""
        self.api = f"{self.url}{SERVICE_PREFIX}api/v1/"
        """The gpuslice service's API through the hub's proxy, as a browser reaches it."""
        self.password = "quickstart-test-password"
        """The shared quick-start password every user logs in with (any password, with ``users``)."""
        self.admin_token = admin_token
        self.env = {
            **without_gpuslice_settings(os.environ),
            "GPUSLICE_STATE_DIR": str(state_dir),
            "GPUSLICE_BIND_URL": self.url,
            "GPUSLICE_HUB_PORT": str(free_port()),
            "GPUSLICE_PROXY_API_URL": f"http://127.0.0.1:{free_port()}",
            "GPUSLICE_SERVICE_PORT": str(free_port()),
            "GPUSLICE_PASSWORD": self.password,
            **(extra_env or {}),
        }
        overlay = {
            "service_args": list(service_args),
            "users": None if users is None else sorted(users),
            "roles": list(roles),
            "admin_token": admin_token,
        }
        if any(value for value in overlay.values()):
            self.env["GPUSLICE_TEST_HUB"] = json.dumps(overlay)
        self.config_file = TEST_CONFIG
        self.log_path = state_dir / "hub.log"
        self.process: subprocess.Popen | None = None
        self.tokens: dict[str, str] = {}
        """API tokens :meth:`as_user` made, by user."""

    @classmethod
    def as_make_run(cls, state_dir: Path) -> HubProcess:
        """The hub exactly as ``make run`` starts it: ``-f hub_config.py`` with no setting of ours but
        free ports and a state directory of its own; the login password is the one it generates,
        read back after start."""
        hub = cls(state_dir)
        del hub.env["GPUSLICE_PASSWORD"]
        hub.password = ""
        hub.config_file = SHIPPED_CONFIG
        return hub

    @property
    def service_url(self) -> str:
        """The gpuslice service's own address (its port, not the proxy), as notebooks reach it."""
        return f"http://127.0.0.1:{self.env['GPUSLICE_SERVICE_PORT']}"

    @property
    def service_token(self) -> str:
        """The service's own API token, as the spawner uses it (hub_config.py keeps it in the state
        directory)."""
        return (self.state_dir / "gpuslice-api-token").read_text().strip()

    def start(self, timeout: float = 90) -> HubProcess:
        """Start the hub; return once its API and the gpuslice service (through the proxy) answer.

        Run again after the process ended (or was killed), it starts the same hub on the same ports
        and state directory, appending to the same log.
        """
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin_dir / "jupyterhub"), "-f", str(self.config_file)],
                cwd=self.state_dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        self._wait_for(f"{self.url}/hub/api", "the hub", deadline, timeout)
        self._wait_for(self.api + "health", "the gpuslice service", deadline, timeout)
        if not self.password:  # the quick-start password it generated
            self.password = (self.state_dir / "quickstart-password").read_text().strip()
        return self

    def _wait_for(self, url: str, what: str, deadline: float, timeout: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(url, timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{what} did not answer within {timeout:g} s:\n{self.log()}")

    def wait_for_service(self, timeout: float) -> None:
        """Until the gpuslice service answers through the hub's proxy."""
        self._wait_for(self.api + "health", "the gpuslice service", time.monotonic() + timeout, timeout)

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

    def service_pid(self) -> int | None:
        try:
            return int((self.state_dir / "gpuslice.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def log(self) -> str:
        """The end of the hub's log (the service's too: it writes to the hub's output)."""
        return self.log_path.read_text(errors="replace")[-8000:]

    def login(self, user: str, password: str | None = None) -> requests.Session:
        """A session logged in through the hub's login form, as a browser does; the form's answer is
        in ``session.login_status`` (302 logged in, 403 refused)."""
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

    def token_for(self, user: str, scopes: list[str] | None = None) -> str:
        """A new API token of ``user``, made through the hub's API by the test-admin service."""
        if self.admin_token is None:
            raise RuntimeError("this hub has no test-admin service: start it with admin_token=...")
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
        """A session that sends ``token`` (none if None)."""
        session = requests.Session()
        if token is not None:
            session.headers["Authorization"] = f"token {token}"
        return session

    def as_user(self, user: str) -> requests.Session:
        """A session with ``user``'s token (one per user and hub, made on first use)."""
        if user not in self.tokens:
            self.tokens[user] = self.token_for(user)
        return self.client(self.tokens[user])

    def stop(self) -> None:
        """Stop the hub (and with it the service), then the batch jobs it left running.

        Jobs outlive the service on purpose (a restarted service finds them again), so a test
        that ends with a job still running, a failed one above all, would leave it behind."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        stop_jobs_under(self.state_dir)


def stop_jobs_under(state_dir: Path) -> list[int]:
    """Kill the job supervisors whose job directory is under ``state_dir``, and their jobs (each
    in a session of its own); the supervisors' pids."""
    marker = f"--job-dir\0{Path(state_dir).resolve()}".encode()
    supervisors = []
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue  # gone meanwhile
        parent = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "0")
        parents[int(entry.name)] = int(parent)
        if b"spawner.service.executor.supervisor" in command and marker in command:
            supervisors.append(int(entry.name))
    jobs = [pid for pid, parent in parents.items() if parent in supervisors]
    for pid in jobs + supervisors:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            continue
    return supervisors
