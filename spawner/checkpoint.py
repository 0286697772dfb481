"""Checkpoints that survive preemption, for the code of a batch job: two lines in a training loop.

::

    from spawner import checkpoint

    state = checkpoint.load({"step": 0, "weights": None})   # where the last run stopped, or this
    while state["step"] < 10_000:
        state["weights"] = train_one_step(state["weights"])
        state["step"] += 1
        checkpoint.save(state)        # kept across runs; after the stop signal, saves and ends the run

Every batch job has its own ``$GPUSLICE_CHECKPOINT_DIR``, kept across the runs of the same job: a
job that is preempted (its GPUs taken back for a notebook, or for a group within its guarantee)
goes back to the queue and starts again from the beginning of its code, and ``load`` gives it the
state of the last ``save``. The service removes the directory a while after the job has ended
(``CheckpointRetention.retention_seconds``).

Before a job is stopped (preempted, cancelled, at its time limit) it receives SIGTERM, and is
killed ``Executor.grace_seconds`` later (30 s by default). ``load`` installs a handler for it: from
then on :func:`stop_requested` is true, the callbacks given to :func:`on_stop` run, and the next
:func:`save` writes the state and ends the run with :data:`STOPPED_EXIT_CODE` (the runner of cells
records that as a stop, not as the cell's error). So a loop that saves at least once per grace
period loses nothing; one with longer steps can call ``save`` from an :func:`on_stop` callback.

Outside a job (a notebook trying the loop before ``%%submit``) there is no checkpoint directory:
``load`` returns the default and ``save`` keeps nothing, so the same code runs unchanged.

The state is pickled: the job reads back only what it wrote itself, in its own account. Standard
library only, so that it imports in any job's Python.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINT_VARIABLE = "GPUSLICE_CHECKPOINT_DIR"
"""The environment variable naming the job's checkpoint directory (set by the service)."""
STATE_FILE = "state.pickle"
"""The file :func:`save` writes in the checkpoint directory."""
STOPPED_EXIT_CODE = 128 + signal.SIGTERM
"""The exit status of a run that saved and ended on the stop signal, as a shell reports a process
ended by SIGTERM: the runner of cells writes no error for it (the job was stopped, it did not fail)."""

_stop = threading.Event()
_callbacks: list[Callable[[], None]] = []
_installed = False


class Stopped(SystemExit):
    """Raised by :func:`save` once the state is written after the stop signal: ends the run."""

    def __init__(self) -> None:
        super().__init__(STOPPED_EXIT_CODE)


def directory() -> Path | None:
    """The job's checkpoint directory, None outside a batch job."""
    named = os.environ.get(CHECKPOINT_VARIABLE, "")
    return Path(named) if named else None


def stop_requested() -> bool:
    """Whether the job has been asked to stop (SIGTERM received since :func:`load` or :func:`on_stop`)."""
    return _stop.is_set()


def on_stop(callback: Callable[[], None]) -> None:
    """Call ``callback()`` when the stop signal arrives (in the main thread, between two Python
    statements): e.g. to save a state that the loop would only reach after the grace period."""
    install_stop_handler()
    _callbacks.append(callback)


def install_stop_handler() -> bool:
    """Catch SIGTERM (once): set the stop flag and run the :func:`on_stop` callbacks. Whether the
    handler is in place; Python only lets the main thread install one."""
    global _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _stop_signal)
    _installed = True
    return True


def _stop_signal(signum: int, frame: Any) -> None:
    first = not _stop.is_set()
    _stop.set()
    if first:
        # os.write, not print: a handler that prints while the loop prints fails (reentrant call).
        os.write(2, b"[gpuslice] stop signal received; saving the checkpoint at the next save()\n")
        for callback in list(_callbacks):
            callback()


def load(default: Any = None) -> Any:
    """The state the last run of this job saved, or ``default`` when there is none (the first
    run, or outside a job). Also installs the stop-signal handler."""
    install_stop_handler()
    folder = directory()
    if folder is None:
        return default
    try:
        with open(folder / STATE_FILE, "rb") as file:
            state = pickle.load(file)
    except FileNotFoundError:
        return default
    print(f"[gpuslice] resumed from the checkpoint in {folder}", flush=True)
    return state


def save(state: Any, *, end_on_stop: bool = True) -> bool:
    """Write ``state`` as the job's checkpoint, atomically (a reader sees the old one or the new
    one whole); whether it was written (False outside a job). After the stop signal, with
    ``end_on_stop``, the run then ends (:class:`Stopped`) and the next run loads this state."""
    folder = directory()
    written = False
    if folder is not None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = folder / f".{STATE_FILE}.{os.getpid()}.tmp"
        with open(partial, "wb") as file:
            pickle.dump(state, file, protocol=pickle.HIGHEST_PROTOCOL)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, folder / STATE_FILE)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)  # the rename itself survives a crash of the machine
        finally:
            os.close(descriptor)
        written = True
    if end_on_stop and _stop.is_set():
        print("[gpuslice] checkpoint saved; stopping as asked", flush=True)
        raise Stopped()
    return written


def clear() -> None:
    """Forget the saved state, so that the next run starts from the beginning."""
    folder = directory()
    if folder is not None:
        (folder / STATE_FILE).unlink(missing_ok=True)
