"""Where a job came from, recorded with it so that any result can be traced and reproduced.

The cell's text (or the script's path and arguments), the working directory, the Python and every
installed package (the list, and a hash of it to compare environments at a glance), the image the
server runs (Kubernetes spawners set ``JUPYTER_IMAGE``) and the git commit of the working directory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 5.0


def installed_packages() -> list[str]:
    """``name==version`` of every installed distribution, sorted and without duplicates."""
    found = set()
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            found.add(f"{name.lower()}=={distribution.version}")
    return sorted(found)


def packages_hash(packages: list[str]) -> str:
    return "sha256:" + hashlib.sha256("\n".join(packages).encode()).hexdigest()


def git_state(workdir: Path) -> dict[str, Any] | None:
    """The commit checked out in ``workdir`` and whether files differ from it; None outside git."""

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(workdir), *arguments],
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(changes), "root": git("rev-parse", "--show-toplevel")}


def provenance(
    *, workdir: Path, submitted_with: str, cell: str | None = None, script: str | None = None, args=()
) -> dict[str, Any]:
    """The provenance object stored with the job (see ``provenance`` in the jobs API)."""
    packages = installed_packages()
    return {
        "submitted_with": submitted_with,
        "cell": cell,
        "script": script,
        "args": list(args),
        "workdir": str(workdir),
        "python": platform.python_version(),
        "executable": sys.executable,
        "packages_hash": packages_hash(packages),
        "packages": packages,
        "image": os.environ.get("JUPYTER_IMAGE") or os.environ.get("JUPYTER_IMAGE_SPEC"),
        "git": git_state(workdir),
        "host": socket.gethostname(),
    }
