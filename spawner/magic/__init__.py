"""The IPython extension of gpuslice: ``%%submit`` a cell as a batch job, follow it, fetch its values.

Our spawners' kernels load it at start (``spawner/enforce/jupyter_data``); anywhere else,
``%load_ext spawner.magic``. The magics live in :mod:`.magics`; what a cell takes with it is found
and packed by :mod:`.capture`; :mod:`.handle` is what ``%%submit`` returns, :mod:`.status` the
live status line, :mod:`.provenance` what is recorded for reproducing a result.
"""

from __future__ import annotations

from typing import Any

from .errors import JobCancelled, JobError, JobFailed, JobPreempted, RemoteJobError
from .handle import JobHandle

__all__ = [
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobHandle",
    "JobPreempted",
    "RemoteJobError",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The notebook server's extension: the JupyterLab jobs panel's handlers (:mod:`.server_extension`)."""
    return [{"module": "spawner.magic.server_extension"}]


def load_ipython_extension(ipython: Any) -> None:
    """IPython's hook: register ``%%submit``, ``%submit``, ``%jobs`` and ``%job``."""
    from .magics import SubmitMagics

    ipython.register_magics(SubmitMagics(shell=ipython, parent=ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """Stop following the jobs this kernel submitted (their status lines stay as they are)."""
    magics = ipython.magics_manager.registry.get("SubmitMagics")
    for live in getattr(magics, "live", {}).values():
        live.stop()
