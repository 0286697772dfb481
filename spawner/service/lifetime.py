"""How long the service lives: as long as the hub that started it, and one at a time per pid file.

Why this exists: the hub starts the service as a managed service and stops it when it stops. A hub
killed with SIGKILL stops nothing, and its service, re-parented to init, kept the service port: the
restarted hub's service then failed with "Address already in use" every 30 s until someone killed
the orphan by hand (issue 10). So:

- **The service follows its hub.** As early as it can (:func:`follow_the_hub`, the first thing
  ``python -m spawner.service`` does) it asks the kernel for SIGTERM when its parent dies (Linux
  ``PR_SET_PDEATHSIG``): the signal the hub itself sends to stop it, so it stops the same orderly
  way. That request is not enough alone: a parent that died before it was made is never signalled
  for, and the kernel signals when the *thread* that forked the service ends. So the service also
  looks every few seconds (:func:`watch_the_hub`) whether its parent is still the process that
  started it, and stops when it is not.
- **Jobs still outlive the service.** The death signal is not inherited across ``fork``, and the
  job supervisors run in sessions of their own (:mod:`.executor.local`), so neither the signal nor
  the service's end reaches them; a restarted service finds them again.
- **One service per pid file, and only a live one counts.** :class:`PidFile` holds an exclusive
  ``flock`` on the pid file for as long as the service lives, so the kernel itself says whether its
  writer is alive: a file nobody holds is stale (its service was killed) and is taken over. A new
  service refuses to start, naming the pid, only while the old one really runs: it holds the lock,
  or (a service of a version without the lock) the pid the file names is alive and is a gpuslice
  service by its command line.

Standard library only: :func:`follow_the_hub` runs before the service imports anything heavy, to
keep the time in which a dying hub goes unnoticed short.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal this process gets when its parent (thread) dies (linux/prctl.h)."""
SERVICE_MODULE = "spawner.service"
"""What a gpuslice service's command line runs (``python -m spawner.service``)."""
HUB_ENVIRONMENT = "JUPYTERHUB_SERVICE_NAME"
"""Set by JupyterHub in the environment of the services it starts."""

log = logging.getLogger(__name__)

_started_by: int | None = None
"""The parent's pid when :func:`follow_the_hub` ran: the hub, unless it had already died."""


# ------------------------------------------------------------------------------ the hub


def set_parent_death_signal(signal_number: int) -> bool:
    """Ask Linux for ``signal_number`` when the parent dies (0 to stop asking); whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal_number, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def started_by_a_hub() -> bool:
    """Whether a JupyterHub started this process as its managed service (by the environment it set)."""
    return HUB_ENVIRONMENT in os.environ


def follow_the_hub() -> None:
    """Note the parent, and have the kernel send SIGTERM when it dies; for a service the hub
    started only. Call it first: the earlier, the shorter the time a dying hub goes unnoticed."""
    global _started_by
    if _started_by is not None or not started_by_a_hub():
        return
    set_parent_death_signal(signal.SIGTERM)
    # After the request, so that a parent dying in between shows as a changed parent below.
    _started_by = os.getppid()


def forget_the_hub() -> None:
    """Outlive the parent after all (``GPUSliceService.stop_with_hub`` off)."""
    global _started_by
    if _started_by is not None:
        set_parent_death_signal(0)
    _started_by = None


def hub_pid() -> int:
    """The process that started this service: the parent :func:`follow_the_hub` saw, else the current one."""
    return _started_by if _started_by is not None else os.getppid()


def hub_is_gone(started_by: int | None = None) -> bool:
    """Whether the process that started this one has died (and it was re-parented).

    A changed parent says so. An unchanged one says so too when the parent is init (pid 1) and
    init is not a JupyterHub: the hub died before :func:`follow_the_hub` could note it, which is
    also when its death signal was never sent. Under another reaper (a ``systemd --user``, a
    container's ``tini``) that early death cannot be told apart from being started by it.
    """
    started_by = hub_pid() if started_by is None else started_by
    parent = os.getppid()
    if parent != started_by:
        return True
    return parent == 1 and not is_jupyterhub(1)


def is_jupyterhub(pid: int) -> bool:
    """Whether ``pid`` runs JupyterHub, by its command line (``jupyterhub ...``, ``-m jupyterhub``)."""
    return any(os.path.basename(argument).startswith("jupyterhub") for argument in command_line(pid))


async def watch_the_hub(on_gone: Callable[[], None], interval_s: float) -> None:
    """Call ``on_gone`` once the hub that started the service is gone; look every ``interval_s``.

    The death signal usually comes first; this is for when it cannot (see the module's docstring).
    """
    started_by = hub_pid()
    while True:
        if hub_is_gone(started_by):
            break
        await asyncio.sleep(interval_s)
    log.warning(
        "the hub (pid %d) that started this service is gone (parent now pid %d); stopping",
        started_by,
        os.getppid(),
    )
    on_gone()


# ----------------------------------------------------------------------------- pid file


class ServiceAlreadyRunning(RuntimeError):
    """Another gpuslice service runs with the same pid file; the message names it and what to do."""

    def __init__(self, pid: int | None, path: Path):
        self.pid = pid
        who = f"pid {pid}" if pid else "its pid not yet written"
        super().__init__(
            f"another gpuslice service ({who}) is running with the pid file {path}, and two services"
            " on one ledger would both start the queued jobs; stop that one first"
            + (f" (kill {pid})" if pid else "")
            + ", or give this one a pid file and state directory of its own"
        )


class PidFile:
    """The service's pid file, held (``flock``) for as long as the service lives."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.fd: int | None = None
        self.taken_over: int | None = None
        """The pid a stale file named when it was taken over (None: there was none)."""

    def claim(self) -> None:
        """Write this process's pid, unless another live gpuslice service holds the file.

        Raises :class:`ServiceAlreadyRunning` naming that service's pid. A file whose service is
        dead (nobody holds its lock, and its pid is gone or another program's) is taken over.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_pid(fd)
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ServiceAlreadyRunning(holder, self.path) from None
                raise
            # The previous holder may have removed the file between our open and our lock: then
            # the lock is on a file nobody sees any more, and the claim starts again.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        previous = _read_pid(fd)
        if previous is not None and previous != os.getpid() and is_gpuslice_service(previous):
            os.close(fd)
            raise ServiceAlreadyRunning(previous, self.path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        self.taken_over = previous if previous != os.getpid() else None

    def release(self) -> None:
        """Remove the file (if it still names this process) and let go of it."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(self.fd, self.path) and _read_pid(self.fd) == os.getpid():
                self.path.unlink()
        os.close(self.fd)
        self.fd = None


def is_gpuslice_service(pid: int) -> bool:
    """Whether ``pid`` is alive and runs ``python -m spawner.service``, by its command line."""
    arguments = command_line(pid)
    return (
        any(
            argument == SERVICE_MODULE and arguments[index - 1] == "-m"
            for index, argument in enumerate(arguments)
            if index
        )
        or f"-m{SERVICE_MODULE}" in arguments
    )


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` runs with (empty if there is no such process, or a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except OSError:
        return []
    return [os.fsdecode(argument) for argument in raw.split(b"\0") if argument]


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
