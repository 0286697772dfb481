"""The files a job's directory holds, shared by the executor and the supervisor it starts.

The directory is the only channel between them: the service may restart (or crash) at any time
while the supervisor runs on, so everything the service needs to find a job again is a file here,
and every file the other side reads is written whole (a temporary file, then a rename), so a
reader never sees half a record. Standard library only: the supervisor imports this at start.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

SPEC = "spec.json"
"""What to run, as whom, with which environment and limits; written by the executor before start."""
LOG = "log"
"""The job's stdout and stderr, appended in the order written, plus the supervisor's notices."""
SUPERVISOR_PID = "supervisor.pid"
"""The supervisor's pid and start time, written by the executor as soon as it is spawned."""
JOB_PID = "job.pid"
"""The job's pid (also its process group) and start time, written once it has been started."""
STOP_REQUEST = "stop.json"
"""A stop request and its grace period; the supervisor reads it when signalled."""
EXIT = "exit.json"
"""How the job ended: exit code, signal, whether timed out or stopped. Its presence means done."""
SUPERVISOR_ERRORS = "supervisor.err"
"""The supervisor's own stderr: a traceback here explains a job that went ``lost``."""

NOTICE_PREFIX = "[gpuslice] "
"""Marks the lines the supervisor adds to a job's log, so readers can tell them from the job's."""


def nofollow(path: str | os.PathLike, flags: int) -> int:
    """An ``opener`` for :func:`open` that never follows a link at the file's own name.

    A run directory is the service's alone (see :mod:`.local`), so nothing should ever be a link
    there; should one appear anyway, opening it fails rather than reading or writing elsewhere.
    """
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def write_json_atomically(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` so that a concurrent reader sees either nothing or all of it.

    Each writer has a temporary file of its own (named by process and thread), so that writers
    racing on one record (a preemption's stop request and a cancel's, say) each rename a whole
    file, the last one winning, instead of one renaming away the other's half-written one.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(partial, "w", encoding="utf-8", opener=nofollow) as file:
        json.dump(record, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when it has not been written."""
    try:
        with open(path, encoding="utf-8", opener=nofollow) as file:
            return json.load(file)
    except FileNotFoundError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if there is no such live process.

    Together with the pid this names one process for good: a pid reused after a reboot or after
    the process ended belongs to a process with another start time. A zombie counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            stat = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start_ticks = fields[0], fields[19]
    return None if state in ("Z", "X") else int(start_ticks)


def process_identity(pid: int) -> dict[str, int] | None:
    """The record that later tells whether ``pid`` is still the same process."""
    start_ticks = process_start_ticks(pid)
    return None if start_ticks is None else {"pid": pid, "start_ticks": start_ticks}


def is_same_process_alive(identity: dict[str, Any] | None) -> bool:
    """Whether the process recorded as ``identity`` still runs (and its pid was not reused)."""
    if not identity:
        return False
    pid = int(identity["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists but belongs to another user: a job run as its owner, seen by a non-root reader
    return process_start_ticks(pid) == identity.get("start_ticks")


def command_line_mentions(pid: int, text: str) -> bool:
    """Whether one argument of ``pid``'s command line is ``text`` (its job directory, for a supervisor)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            arguments = file.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return os.fsencode(text) in arguments
