"""The embedded default's spawners: notebook servers as local processes, each holding a GPU slice.

``LocalGPUSpawner`` runs each server as the user's own system account (the hub runs as root: the
shared GPU server of a lab); ``SimpleLocalGPUSpawner`` runs every server as the hub's own user, for
the single-user quick start. Both start the ``jupyterhub-singleuser`` installed beside the hub's
interpreter, so a hub started from a virtual environment without activating it runs that
environment's server, not PATH's. On a shared server that environment must be one every account
can run (README, "A shared GPU server").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import sys
from collections.abc import Iterable
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from traitlets import Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from .mixin import GPUSliceSpawnerMixin, SpawnRefused

OVERFLOW_UIDS = frozenset({65534, 4294967294})
"""``nobody`` (and the old ``nfsnobody``): the kernel's id for "no one", above any ``min_uid``."""
SHARED_STATE_DIR_MODE = 0o711
"""A shared server's state directory: every account passes through it to its own jobs' files
(``job-scripts/<job id>``, each the owner's and 0700), none may list it."""


def singleuser_beside_interpreter() -> list[str]:
    """The ``jupyterhub-singleuser`` of this interpreter's environment, or the name for PATH."""
    beside = Path(sys.executable).with_name("jupyterhub-singleuser")
    return [str(beside)] if beside.exists() else ["jupyterhub-singleuser"]


class _LocalServerProcess(LoggingConfigurable):
    """What both local spawners share: the server command, and ``--allow-root`` only for root."""

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return singleuser_beside_interpreter()

    def runs_as_root(self) -> bool:
        """Whether the server process will have uid 0: by default, when the hub itself is root."""
        return os.geteuid() == 0

    def get_args(self) -> list[str]:
        # jupyter-server refuses to run as root unless told; tell it only when that is the truth.
        args = super().get_args()
        if self.runs_as_root() and "--allow-root" not in args:
            args.append("--allow-root")
        return args


class LocalGPUSpawner(GPUSliceSpawnerMixin, _LocalServerProcess, LocalProcessSpawner):
    """A local process per server, run as the user's system account, holding a gpuslice lease.

    Before a slice is asked for, the start checks the account: it must exist and must not be a
    system account (``min_uid``); a home directory it lacks is created, private to it, since the
    server starts there and keeps its runtime files under it. The server's environment is the
    user's (HOME, USER, LOGNAME, SHELL), with a PATH of the hub's environment and the system's
    directories, never the hub's own PATH.
    """

    min_uid = Integer(
        1000,
        help="""
        The lowest uid a server may run as. The name a user logs in with picks the system account
        the server runs as, so an authenticator that admits a name like "root", "daemon" or
        "www-data" (an OAuth login, say) would otherwise hand out that account. 1000 is where
        Debian and most distributions start the accounts of people (UID_MIN in
        /etc/login.defs); 0 allows every account, root included (its server then gets
        --allow-root). "nobody" (uid 65534) is never served.
        """,
    ).tag(config=True)

    server_path = Unicode(
        "/usr/local/bin:/usr/bin:/bin",
        help="""
        PATH of the servers (and so of their terminals and kernels), after the bin directory of
        the hub's own environment, which holds jupyterhub-singleuser, python and the gpuslice
        command. The hub's PATH is root's and is not passed on.
        """,
    ).tag(config=True)

    def account(self) -> pwd.struct_passwd:
        """The user's system account; a clear refusal when there is none."""
        try:
            return pwd.getpwnam(self.user.name)
        except KeyError:
            raise SpawnRefused(
                403,
                f"There is no system account {self.user.name!r} on this host, and servers here run "
                "as their user's own account; ask your admin to create it (useradd).",
                reason="no-system-account",
            ) from None

    def runs_as_root(self) -> bool:
        """Whether the server process will have uid 0: here, when the user's account is root."""
        return self.account().pw_uid == 0

    async def start(self):
        account = self.account()
        if account.pw_uid < self.min_uid or account.pw_uid in OVERFLOW_UIDS:
            raise SpawnRefused(
                403,
                f"{self.user.name} is a system account (uid {account.pw_uid}; people's accounts start "
                f"at {self.min_uid}), and servers do not run as system accounts here; log in with your "
                "own account, or ask your admin (LocalGPUSpawner.min_uid).",
                reason="system-account",
            )
        try:
            created = await asyncio.to_thread(ensure_home, account)
        except OSError as error:
            raise SpawnRefused(
                500,
                f"The home directory {account.pw_dir} of {account.pw_name} is missing and could not be "
                f"made ({error.strerror}); ask your admin to create it.",
                reason="no-home",
            ) from None
        if created:
            self.log.info("Created the home directory %s of %s (mode 700)", account.pw_dir, account.pw_name)
        return await super().start()

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env["PATH"] = ":".join(filter(None, [str(Path(sys.executable).parent), self.server_path]))
        env["LOGNAME"] = self.user.name
        return env


class SimpleLocalGPUSpawner(GPUSliceSpawnerMixin, _LocalServerProcess, SimpleLocalProcessSpawner):
    """A local process per server, run as the hub's own user (the quick start), holding a lease.

    Its servers run as whoever runs the hub, so they need ``--allow-root`` exactly when the hub is
    root, which is the shared default.
    """


def ensure_home(account: pwd.struct_passwd) -> bool:
    """Create ``account``'s home directory if it has none (mode 0700, the account's); whether it did.

    ``useradd`` without ``-m`` leaves none, and a server without one cannot start (it chdirs there
    and writes its runtime files below it). The parent is root's (``/home``), so nothing the user
    controls is followed here; the directory is handed over without following a link.
    """
    home = Path(account.pw_dir)
    if not home.is_absolute() or os.path.lexists(home):
        return False
    home.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        os.mkdir(home, 0o700)
    except FileExistsError:  # a start of another of the user's servers made it just now
        return False
    os.chown(home, account.pw_uid, account.pw_gid, follow_symlinks=False)
    return True


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` database URL; None for other databases and in-memory ones."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    path = url[len(prefix) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def prepare_shared_state_dir(state_dir: Path, job_files_dir: Path, database_urls: Iterable[str]) -> list[str]:
    """Make the state directory of a shared server (the hub as root, servers and jobs as their users)
    reachable where users need it and private everywhere else; what still stands in the way.

    Jobs run as their owners read and write their files in ``job_files_dir/<job id>`` (the owner's,
    0700), so every account must pass through the state directory and ``job_files_dir``: both
    become 0711 (no one lists them). Everything else in it is root's alone: the secrets are
    written 0600 by whoever makes them, and the SQLite databases of the hub and of the ledger (which
    holds every job's cell, its data and its environment) are made 0600 here, created empty if
    new, since they are created later, with the hub's umask. SQLite gives their -wal and -shm
    files the database's mode. Returns the state directory's parents that other accounts cannot
    pass through (with their modes), for the admin to fix: jobs cannot reach their files past them.
    """
    state_dir.chmod(SHARED_STATE_DIR_MODE)
    job_files_dir.mkdir(mode=SHARED_STATE_DIR_MODE, parents=True, exist_ok=True)
    job_files_dir.chmod(SHARED_STATE_DIR_MODE)
    for url in database_urls:
        database = sqlite_file(url)
        if database is None:
            continue
        _make_private(database, create=True)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                _make_private(database.with_name(database.name + suffix), create=False)
    return [
        f"{parent} (mode {parent.stat().st_mode & 0o7777:o})"
        for parent in state_dir.resolve().parents
        if not parent.stat().st_mode & 0o001
    ]


def _make_private(path: Path, create: bool) -> None:
    """``chmod 600 path`` without following a link; an empty file first if ``create`` and missing."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    descriptor = os.open(path, flags, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)
