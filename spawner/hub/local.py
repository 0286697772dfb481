"""The embedded default's spawners: notebook servers as local processes, each holding a GPU slice.

``LocalGPUSpawner`` runs each server as the user's own system account (the hub runs as root);
``SimpleLocalGPUSpawner`` runs every server as the hub's own user, for the single-user quick start.
Both start the ``jupyterhub-singleuser`` installed beside the hub's interpreter, so a hub started
from a virtual environment without activating it runs that environment's server, not PATH's.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from traitlets import default
from traitlets.config import LoggingConfigurable

from .mixin import GPUSliceSpawnerMixin


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
    """A local process per server, run as the user's system account, holding a gpuslice lease."""

    def runs_as_root(self) -> bool:
        """Whether the server process will have uid 0: here, when the user's account is root."""
        return pwd.getpwnam(self.user.name).pw_uid == 0


class SimpleLocalGPUSpawner(GPUSliceSpawnerMixin, _LocalServerProcess, SimpleLocalProcessSpawner):
    """A local process per server, run as the hub's own user (the quick start), holding a lease.

    Its servers run as whoever runs the hub, so they need ``--allow-root`` exactly when the hub is
    root, which is the shared default.
    """
