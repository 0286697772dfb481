"""One CUDA MPS control daemon per shared GPU, driven through ``nvidia-cuda-mps-control``.

Why the service runs the daemons and sets the limits itself: the MPS limits a client reads from
its environment (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``, ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``, see
:mod:`spawner.enforce.env`) are removed by the user in one line, the escape HAMi's
environment-variable limits have from Jupyter (HAMi#1112). Limits set through the control daemon
(``set_default_device_pinned_mem_limit``, ``set_default_active_thread_percentage``, and per MPS
server ``set_device_pinned_mem_limit`` / ``set_active_thread_percentage``) hold for every client
that connects, whatever its environment: an allocation past the pinned-memory limit fails inside
the process with an out-of-memory error.

Each daemon sees one card (``CUDA_VISIBLE_DEVICES=<uuid>``), so its device 0 is that card, and
has its own pipe and log directories (``<root>/<uuid>/pipe``, ``.../log``); a client finds its
card's daemon by ``CUDA_MPS_PIPE_DIRECTORY``. The control program is talked to exactly as an
admin does: ``nvidia-cuda-mps-control -d`` starts a daemon, which writes its pid to
``nvidia-cuda-mps-control.pid`` in the pipe directory; every other command is one line on the
program's standard input (``echo quit | nvidia-cuda-mps-control``).

MPS's own limits, which decide per pool whether to use it (``GPUSliceService`` / ``MPSDaemons``):

- one Linux user per MPS server at a time: clients of a second user wait until the first user's
  clients are all gone (the daemon starts a server per user, one at a time per card), so MPS
  suits pools where servers run as one service account, or cards held by one user at a time;
- a fatal GPU fault in one client (an illegal address, a device-side assert) is reported to every
  client of the same server: with MPS one user's crash ends the others' kernels on that card;
- the limits of a server are fixed when it starts: a default changed later applies to the next
  server, which is why the defaults are set before any client connects.

Blocking (subprocess) calls: the service runs them in a worker thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CONTROL_PROGRAM = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"
POOLS_VARIABLE = "GPUSLICE_MPS_POOLS"
"""The one value the service's ``MPSDaemons.pools`` and the hub's ``mps_pools`` default to, so
that the card a daemon is started for and the card a server is sent to are chosen alike."""


class MPSError(RuntimeError):
    """The control program failed or is missing; the message says which command and why."""


@dataclass(frozen=True)
class MPSLimits:
    """Limits an MPS server holds its clients to: pinned device memory (MiB) and the share of SMs."""

    memory_mib: int
    active_thread_percentage: int

    def __post_init__(self) -> None:
        if self.memory_mib < 1:
            raise ValueError(f"MPS memory limit must be at least 1 MiB, got {self.memory_mib}")
        if not 1 <= self.active_thread_percentage <= 100:
            raise ValueError(
                f"MPS active thread percentage must be 1..100, got {self.active_thread_percentage}"
            )


@dataclass(frozen=True)
class MPSDirectories:
    """Where one MPS control daemon keeps its pipes and logs: what each of its clients must be
    given as ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY`` to reach it."""

    pipe_directory: str
    log_directory: str


def pools_from_environment(environ: Mapping[str, str]) -> list[str]:
    """``GPUSLICE_MPS_POOLS="dev, shared"`` -> ``["dev", "shared"]``; unset or empty: no pool."""
    return [pool.strip() for pool in environ.get(POOLS_VARIABLE, "").split(",") if pool.strip()]


def default_root(state_directory: str | os.PathLike[str]) -> Path:
    """The directory under which the per-card daemons live unless configured: ``<state>/mps``.

    The service (``MPSDaemons.root``) and the hub (``GPUSliceSpawnerMixin.mps_root``) both default
    to it, so that a server is pointed at the directories its card's daemon really uses.
    """
    return Path(state_directory).resolve() / "mps"


def card_directories(root: str | os.PathLike[str], gpu_uuid: str) -> MPSDirectories:
    """The pipe and log directories of the daemon of card ``gpu_uuid``: ``<root>/<uuid>/pipe`` and
    ``<root>/<uuid>/log``. The one layout rule: the daemon is started with it (:class:`MPSControl`)
    and a server holding a slice of the card is given it (:mod:`spawner.enforce.env`)."""
    card = Path(root) / gpu_uuid
    return MPSDirectories(pipe_directory=str(card / "pipe"), log_directory=str(card / "log"))


def has_card_daemon(pools: Iterable[str], *, simulated: bool, mps_pools: Iterable[str]) -> bool:
    """Whether a card in ``pools`` gets a control daemon of its own: a real card in one of the
    pools shared through MPS. Simulated cards have no driver to run MPS with."""
    return not simulated and not set(pools).isdisjoint(mps_pools)


class MPSControl:
    """The control daemon of one GPU: start, stop, health, limits."""

    def __init__(
        self,
        gpu_uuid: str,
        root: str | os.PathLike[str],
        *,
        program: str = CONTROL_PROGRAM,
        timeout_s: float = 10.0,
    ) -> None:
        self.gpu_uuid = gpu_uuid
        directories = card_directories(root, gpu_uuid)
        self.pipe_directory = Path(directories.pipe_directory)
        self.log_directory = Path(directories.log_directory)
        self.program = program
        self.timeout_s = timeout_s

    def environment(self) -> dict[str, str]:
        """What the control program (and each client of this card) runs with."""
        return {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": self.gpu_uuid,
            "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_directory),
            "CUDA_MPS_LOG_DIRECTORY": str(self.log_directory),
        }

    def _program_path(self) -> str:
        found = shutil.which(self.program)
        if found is None:
            raise MPSError(
                f"{self.program} is not on PATH: install the NVIDIA driver's compute utilities "
                "(Debian: nvidia-cuda-mps), or take the pool off MPS enforcement"
            )
        return found

    def pid(self) -> int | None:
        """The control daemon's pid if it runs, from the pid file it writes."""
        try:
            pid = int((self.pipe_directory / PID_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, but another user's
        return pid

    def command(self, line: str) -> str:
        """Send one command to the daemon; its answer, stripped. Raises :class:`MPSError`."""
        try:
            finished = subprocess.run(
                [self._program_path()],
                input=line + "\n",
                capture_output=True,
                text=True,
                env=self.environment(),
                timeout=self.timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise MPSError(
                f"MPS daemon of {self.gpu_uuid} did not answer {line!r} in {self.timeout_s:g} s"
            ) from None
        answer = finished.stdout.strip()
        if finished.returncode != 0:
            detail = (finished.stderr or finished.stdout).strip() or f"exit status {finished.returncode}"
            raise MPSError(f"MPS daemon of {self.gpu_uuid} refused {line!r}: {detail}")
        return answer

    def start(self) -> int:
        """Start the daemon unless it runs; returns its pid once it answers."""
        running = self.pid()
        if running is not None:
            return running
        # Clients of every user must reach the pipes; the daemon (run by the service) owns them.
        for directory in (self.pipe_directory, self.log_directory):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        started = subprocess.run(
            [self._program_path(), "-d"],
            capture_output=True,
            text=True,
            env=self.environment(),
            timeout=self.timeout_s,
        )
        if started.returncode != 0:
            raise MPSError(
                f"MPS daemon of {self.gpu_uuid} did not start: "
                f"{(started.stderr or started.stdout).strip() or started.returncode}"
            )
        deadline = time.monotonic() + self.timeout_s
        while (pid := self.pid()) is None:
            if time.monotonic() > deadline:
                raise MPSError(
                    f"MPS daemon of {self.gpu_uuid} wrote no pid file in {self.pipe_directory} within "
                    f"{self.timeout_s:g} s; see {self.log_directory}/control.log"
                )
            time.sleep(0.05)
        return pid

    def healthy(self) -> bool:
        """Whether the daemon runs and answers a command."""
        if self.pid() is None:
            return False
        try:
            self.command("get_server_list")
        except MPSError:
            return False
        return True

    def server_pids(self) -> list[int]:
        """The MPS servers the daemon runs now (one per Linux user with clients)."""
        return [int(word) for word in self.command("get_server_list").split() if word.isdigit()]

    def set_default_limits(self, limits: MPSLimits) -> None:
        """Limits for every server started from now on, and so for each of their clients."""
        self.command(f"set_default_device_pinned_mem_limit 0 {limits.memory_mib}M")
        self.command(f"set_default_active_thread_percentage {limits.active_thread_percentage}")

    def set_server_limits(self, server_pid: int, limits: MPSLimits) -> None:
        """Limits for the clients of one running server (one Linux user's processes on the card)."""
        self.command(f"set_device_pinned_mem_limit {server_pid} 0 {limits.memory_mib}M")
        self.command(f"set_active_thread_percentage {server_pid} {limits.active_thread_percentage}")

    def stop(self) -> None:
        """Ask the daemon to quit (its servers end with it) and wait until it has."""
        pid = self.pid()
        if pid is None:
            return
        self.command("quit")
        deadline = time.monotonic() + self.timeout_s
        while self.pid() is not None:
            if time.monotonic() > deadline:
                raise MPSError(
                    f"MPS daemon of {self.gpu_uuid} (pid {pid}) did not quit in {self.timeout_s:g} s"
                )
            time.sleep(0.05)
