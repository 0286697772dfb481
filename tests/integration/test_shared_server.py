"""The shared GPU server end to end: servers and batch jobs as the users' own system accounts.

``hub_config.py`` with ``GPUSLICE_SPAWNER=gpuslice-local``, as the README's "A shared GPU server"
and ``deploy/jupyterhub-gpuslice.service`` run it: the hub as root, started from the environment
every account can run (``make shared-env``: a venv of Debian's python3 under /opt with this package
installed), on two simulated GPUs, one for notebook slices and one for the training queue. Two
system users made for the test (one without a home directory, as ``useradd`` without ``-m`` leaves
it) log in with their system passwords (PAM), start 1/8-A100 servers that must run as themselves,
and from a real kernel each sends a ``%%submit`` cell that must run as its owner and come back.
Then each tries to read the other's jobs, through the filesystem and through the REST API.

Skipped only where no such user can be made (not root, or no ``useradd``).
"""

from __future__ import annotations

import filecmp
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from harness import REPO_ROOT, HubProcess
from jupyter_client import BlockingKernelClient

from .kernels import evaluate, run, spawn_server, start_kernel

pytestmark = pytest.mark.slow

PROFILE = "a100-1-8"  # "PyTorch · 1/8 A100 (10 GB)"
SHARED_VENV = Path(os.environ.get("GPUSLICE_SHARED_VENV", "/opt/gpuslice-dev/venv"))
"""The Makefile's SHARED_VENV, which ``make test`` passes on."""
PACKAGED = {".py", ".yaml", ".json", ".html", ".js", ".css"}
"""What of spawner/ is installed (pyproject.toml's package data, and the modules)."""

PROBE = textwrap.dedent(
    """\
    import json, os, sys
    outcome = {}
    for path in json.load(sys.stdin):
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb") as file:
                    file.read(1)
            outcome[path] = "read"
        except OSError as error:
            outcome[path] = error.__class__.__name__
    print(json.dumps(outcome))
    """
)
"""Run as a user: for each path given, "read" if they could list it or read from it, else the error."""


@dataclass
class Researcher:
    name: str
    uid: int
    gid: int
    home: Path
    session: requests.Session | None = None
    kernel: BlockingKernelClient | None = None
    job_id: str = ""
    secret: str = ""


def run_as(user: Researcher, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": str(user.home)},
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def make_user(name: str, password: str, with_home: bool) -> Researcher:
    made = subprocess.run(
        ["useradd", "--shell", "/bin/bash", "--create-home" if with_home else "--no-create-home", name],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"no system user can be made here: useradd {name}: {made.stderr.strip()}")
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
    account = pwd.getpwnam(name)
    return Researcher(name, account.pw_uid, account.pw_gid, Path(account.pw_dir))


def remove_user(user: Researcher) -> None:
    """End whatever still runs as the user (by pid), then remove the account and its home."""
    for pid in pids_of_uid(user.uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while pids_of_uid(user.uid) and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run(["userdel", "--remove", user.name], capture_output=True)
    if user.home.is_dir() and user.home.stat().st_uid == user.uid:
        shutil.rmtree(user.home, ignore_errors=True)


def pids_of_uid(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except FileNotFoundError:
                continue
    return found


def process_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def server_processes_of(hub: HubProcess, user: Researcher) -> list[int]:
    """The pids of the processes the hub itself started for ``user``'s server."""
    pids = []
    for pid in pids_of_uid(user.uid):
        try:
            parent = int(process_status(pid)["PPid"])
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if parent == hub.process.pid and f"JUPYTERHUB_USER={user.name}".encode() in environ:
            pids.append(pid)
    return pids


def ensure_shared_env(user: Researcher) -> Path:
    """The shared environment, current with this checkout and runnable by ``user``; built if needed.

    ``make test`` builds it before the tests; run alone, this test has the Makefile bring it up to
    date (a changed file of the package reinstalls it in a few seconds), installing nothing else.
    """
    if not (SHARED_VENV / "bin" / "jupyterhub").exists() or stale_files(SHARED_VENV, user):
        make = ["make", "--no-print-directory", "-C", str(REPO_ROOT), "shared-env"]
        built = subprocess.run(
            [*make, f"SHARED_VENV={SHARED_VENV}", "DEBIAN_PACKAGES="],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert built.returncode == 0, f"make shared-env failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}"
    stale = stale_files(SHARED_VENV, user)
    assert not stale, (
        f"{SHARED_VENV} holds another copy of the package than this checkout ({', '.join(stale[:5])}); "
        f"rebuild it: rm {SHARED_VENV}/.installed && make shared-env"
    )
    return SHARED_VENV


def stale_files(venv: Path, user: Researcher) -> list[str]:
    """What of this checkout's package ``user`` would not run as it is from ``venv``: files that
    differ or are missing there, files there that the checkout no longer has."""
    where = run_as(user, [str(venv / "bin" / "python"), "-c", "import spawner; print(spawner.__path__[0])"])
    if where.returncode != 0:
        return [f"{user.name} cannot import spawner with {venv}/bin/python: {where.stderr.strip()[-300:]}"]
    installed = Path(where.stdout.strip())
    checkout = REPO_ROOT / "spawner"

    def package_files(root: Path) -> set[Path]:
        return {
            path.relative_to(root)
            for path in root.rglob("*")
            if path.is_file() and path.suffix in PACKAGED and "__pycache__" not in path.parts
        }

    ours, theirs = package_files(checkout), package_files(installed)
    return sorted(
        [str(name) for name in ours - theirs]
        + [f"{name} (removed here)" for name in theirs - ours]
        + [str(name) for name in ours & theirs if not filecmp.cmp(checkout / name, installed / name, False)]
    )


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip(
            "no system user can be made: that needs root (and so does a hub running servers as users)"
        )
    if not shutil.which("useradd") or not shutil.which("chpasswd"):
        pytest.skip("no system user can be made: useradd or chpasswd is missing (Debian's passwd package)")
    password = secrets.token_urlsafe(18)
    tag = secrets.token_hex(3)
    users: list[Researcher] = []
    state = Path(tempfile.mkdtemp(prefix="gpuslice-shared-", dir="/tmp"))  # others must pass through
    hub = None
    try:
        # One made with a home, one without: the spawner must make it.
        users.append(make_user(f"gsl{tag}a", password, with_home=True))
        users.append(make_user(f"gsl{tag}b", password, with_home=False))
        venv = ensure_shared_env(users[0])
        hub = HubProcess(
            state,
            extra_env={
                "GPUSLICE_SPAWNER": "gpuslice-local",
                "GPUSLICE_INVENTORY": "simulated",
                "GPUSLICE_SIMULATED_GPUS": "2",
                "GPUSLICE_TRAIN_GPUS": "1",
                "GPUSLICE_HTTP_TIMEOUT": "150",
            },
            bin_dir=venv / "bin",
        )
        hub.password = password
        os.close(os.open(hub.log_path, os.O_CREAT | os.O_WRONLY, 0o600))  # logs are not for the users
        hub.start(timeout=120)
        for user in users:
            user.session = spawn_server(hub, user.name, PROFILE)
            user.kernel = start_kernel(hub, user.session, user.name, user.home)
        yield hub, users
    finally:
        for user in users:
            if user.kernel is not None:
                user.kernel.stop_channels()
        if hub is not None:
            hub.stop()
        for user in users:
            remove_user(user)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def jobs(lab):
    """Each user's ``%%submit`` cell, sent from their server's kernel and waited for."""
    _, users = lab
    runs = {}
    for user in users:
        user.secret = secrets.token_hex(8)
        runs[user.name] = run(
            user.kernel,
            textwrap.dedent(
                f"""\
                %%submit --gpus 1 --wait --name shared-{user.name}
                import os
                uid = os.getuid()
                secret = "{user.secret}"
                """
            ),
        )
        if not runs[user.name].errors and "submitted job-" in runs[user.name].stdout:
            user.job_id = runs[user.name].job_id()
    return runs


def test_each_server_is_a_process_of_its_users_own_account(lab):
    hub, users = lab
    venv_bin = str(SHARED_VENV / "bin")
    for user in users:
        (pid,) = server_processes_of(hub, user)  # started by the hub itself, as the user
        status = process_status(pid)
        assert status["Uid"].split() == [str(user.uid)] * 4, (user.name, status["Uid"])
        assert status["Gid"].split() == [str(user.gid)] * 4, (user.name, status["Gid"])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[1] == f"{venv_bin}/jupyterhub-singleuser" and "--allow-root" not in argv, argv
        assert os.readlink(f"/proc/{pid}/cwd") == str(user.home)
        seen = evaluate(
            user.kernel,
            "(lambda os: (os.getuid(), os.getcwd(), os.environ['HOME'], os.environ['USER'], "
            "os.environ['LOGNAME'], os.environ['GPUSLICE_MILLI_GPU']))(__import__('os'))",
        )
        assert seen == repr((user.uid, str(user.home), str(user.home), user.name, user.name, "125"))
        path = evaluate(user.kernel, "__import__('os').environ['PATH']").split(":")
        assert path[0] == venv_bin and not [part for part in path if part.startswith("/root")], path


def test_a_home_the_account_lacked_is_made_for_it_and_private(lab):
    _, users = lab
    made = users[1]  # created with --no-create-home
    info = made.home.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (made.uid, made.gid, 0o700)


def test_each_submit_cell_runs_as_its_owner_and_its_values_come_back(lab, jobs):
    _, users = lab
    for user in users:
        cell = jobs[user.name]
        assert not cell.errors and user.job_id, str(cell)
        assert f"fetched from {user.job_id}: " in cell.stdout, cell.text
        assert evaluate(user.kernel, "uid") == str(user.uid)
        assert evaluate(user.kernel, "secret") == user.secret


def test_neither_can_read_the_others_jobs_or_the_services_state_through_the_filesystem(lab, jobs):
    hub, users = lab
    state = hub.state_dir
    for reader, other in (users, users[::-1]):
        assert other.job_id, "the other's job did not run"
        own_files = state / "job-scripts" / reader.job_id
        others_values = state / "job-scripts" / other.job_id / "results" / "values.pickle"
        assert others_values.is_file()  # there to be refused, not missing
        targets = [state, *sorted(state.rglob("*"))]
        targets = [
            path
            for path in targets
            if own_files not in (path, *path.parents)
            and path.suffix != ".pid"  # pid files: JupyterHub's, public
        ]
        assert state / "gpuslice.sqlite" in targets and others_values in targets
        probe = run_as(
            reader,
            [str(SHARED_VENV / "bin" / "python"), "-c", PROBE],
            input=json.dumps([str(path) for path in [*targets, own_files / "results" / "values.pickle"]]),
        )
        assert probe.returncode == 0, probe.stderr
        outcome = json.loads(probe.stdout)
        assert outcome.pop(str(own_files / "results" / "values.pickle")) == "read"  # the probe can read
        readable = [path for path, seen in outcome.items() if seen == "read"]
        assert not readable, f"{reader.name} can read: {readable}"


def test_neither_can_read_the_others_jobs_through_the_rest_api(lab, jobs):
    hub, users = lab
    api = f"{hub.url}/services/gpuslice/api/v1/"
    for reader, other in (users, users[::-1]):
        made = reader.session.post(
            f"{hub.url}/hub/api/users/{reader.name}/tokens", json={"note": "peek"}, timeout=10
        )
        assert made.status_code == 201, made.text
        headers = {"Authorization": f"token {made.json()['token']}"}
        own = requests.get(f"{api}jobs/{reader.job_id}/result/values", headers=headers, timeout=30)
        assert own.status_code == 200 and reader.secret.encode() in own.content  # the token works
        for method, path in (
            ("GET", f"jobs/{other.job_id}"),
            ("GET", f"jobs/{other.job_id}/result"),
            ("GET", f"jobs/{other.job_id}/result/values"),
            ("GET", f"jobs/{other.job_id}/logs"),
            ("POST", f"jobs/{other.job_id}/cancel"),
        ):
            answer = requests.request(method, api + path, headers=headers, timeout=30)
            assert answer.status_code in (403, 404), (reader.name, path, answer.status_code, answer.text)
            assert other.secret.encode() not in answer.content
        for query in ("", "?all=1"):
            listing = requests.get(f"{api}jobs{query}", headers=headers, timeout=30)
            assert listing.status_code in (200, 403), listing.text
            assert other.job_id not in listing.text and other.name not in listing.text
