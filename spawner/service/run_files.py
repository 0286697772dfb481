"""A job's own files: its script or signed cell, written afresh before each run, and the result
files a cell's run leaves (read as bytes, never loaded, never through a link).

The directory is ``JobService.scripts_dir/<job id>``; when jobs run as their owners it is the
owner's (see :mod:`.executor.local`), so the service touches what is in it only through
:mod:`.job_files`.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import job_files
from .job_files import UntrustedFile
from .job_request import CellPayload
from .payload import RESULTS_DIR, write_signed_payload

SCRIPT_NAME = "script.py"


@contextlib.contextmanager
def fresh_job_files(directory: Path, owners: frozenset[int]) -> Iterator[int]:
    """The job's files directory, open, without the results of an earlier run.

    Created private to the service on the first run; on a later one it may be the owner's (the
    executor gave it away), so it is opened without following a link and only an empty results
    directory of the service's own is put in it (the executor gives that away too). The
    descriptor is for writing the job's file through; it is closed on leaving.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    # scripts_dir is the admin's path (it may be a link); from there on nothing is followed.
    parent = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if owners - {os.geteuid()}:
            check_private(parent, directory.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory.name, 0o700, dir_fd=parent)
        mine = owners | {os.geteuid()}
        with job_files.opened_directory(directory.name, dir_fd=parent, owners=mine) as files:
            job_files.remove(files, RESULTS_DIR)
            os.mkdir(RESULTS_DIR, 0o700, dir_fd=files)
            yield files
    finally:
        os.close(parent)


def check_private(fd: int, path: Path) -> None:
    """Refuse to put a job's files in ``JobService.scripts_dir`` if another account could write it:
    the job files directories there are root's to create and hand over."""
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise UntrustedFile(
            f"JobService.scripts_dir {path} is writable by others (uid {info.st_uid}, mode"
            f" {stat.S_IMODE(info.st_mode):o}); it must be the service's alone (chmod go-w) when jobs run"
            " as their owners"
        )


def write_script(directory: Path, owners: frozenset[int], payload: str) -> Path:
    """A script job's run: its script, in a fresh files directory (blocking: call in a thread)."""
    with fresh_job_files(directory, owners) as files:
        job_files.replace_file(files, SCRIPT_NAME, payload.encode("utf-8"))
    return directory / SCRIPT_NAME


def write_cell(directory: Path, owners: frozenset[int], key: bytes, job_id: str, cell: CellPayload) -> Path:
    """A cell job's run: its payload signed under ``key``, in a fresh files directory (blocking)."""
    with fresh_job_files(directory, owners) as files:
        return write_signed_payload(directory, key, job_id, cell.python, cell.payload, dir_fd=files)


def read_result(directory: Path, name: str, owners: frozenset[int]) -> bytes:
    """One file of a job's results, read without following a link (see :func:`.job_files.read_file`);
    blocking: call in a thread."""
    return job_files.read_file(
        directory, (RESULTS_DIR, name), owners=owners, directory_owners=owners | {os.geteuid()}
    )


def parse_summary(data: bytes) -> dict[str, Any] | None:
    """The runner's JSON summary of a cell's results, None if it is not a JSON object."""
    try:
        summary = json.loads(data.decode("utf-8"))
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None
