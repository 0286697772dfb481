"""What a job that did not succeed raises in the notebook: its own exception where it can be, else ours.

A training cell run with ``%%submit --wait``, or followed with ``handle.wait()`` or
``handle.result()``, should stop a notebook run top to bottom exactly as the same cell run here
would: with the exception the cell raised. The job reports that exception as a structured record
(see :func:`spawner.service.runner.error_summary`): the class by module and qualified name, its
arguments as ``repr`` text and the traceback of the user's frames. It is never a pickle: neither
the service nor this client unpickles anything a job wrote except the values the owner fetches
into their own kernel.

The class is raised again only when it is already loaded here (``sys.modules``) and is an
``Exception``: importing a module because a job names it would run that module's code on the
job's word, and ``KeyboardInterrupt``/``SystemExit`` raised in a notebook mean something else.
Its arguments must read back with :func:`ast.literal_eval`, and the class must accept them.
Otherwise :class:`RemoteJobError` carries the same facts as text. Either way the remote traceback
travels as the exception's cause, so the notebook shows it above the error.
"""

from __future__ import annotations

import ast
import sys
from typing import Any

from spawner.core.vocabulary import JobState


class JobError(RuntimeError):
    """A job ended without succeeding: its id, its final state, why, and its exit code."""

    def __init__(
        self, message: str, *, job_id: str, state: str, reason: str = "", exit_code: int | None = None
    ):
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.reason = reason or ""
        self.exit_code = exit_code

    def describe(self) -> str:
        """The sentence to show where a traceback would only hide it (``%job fetch``)."""
        return str(self)


class RemoteJobError(JobError):
    """A job failed: the cell raised an exception this kernel cannot raise as its own class, the
    script exited non-zero, reached its time limit or was lost. ``remote_traceback`` is the job's
    own traceback where it raised (empty otherwise: its log says why)."""

    def __init__(
        self,
        job_id: str,
        error: dict[str, Any] | None = None,
        *,
        reason: str = "",
        exit_code: int | None = None,
    ):
        error = error or {}
        self.error_type = str(error.get("type") or "")
        self.error_module = str(error.get("module") or "")
        self.error_message = str(error.get("message") or "")
        self.remote_traceback = str(error.get("traceback") or "")
        if self.error_type:
            headline = f"job {job_id} raised {self.error_type}: {self.error_message}"
        else:
            headline = f"job {job_id} failed: {reason or 'no reason was recorded'}"
            if exit_code is not None:
                headline += f" (exit code {exit_code})"
            headline += f"; see its log with %job logs {job_id}"
        self.headline = headline
        super().__init__(
            headline, job_id=job_id, state=JobState.failed.value, reason=reason, exit_code=exit_code
        )

    def describe(self) -> str:
        """The sentence and the remote traceback: what the notebook shows, as the exception's text."""
        if not self.remote_traceback.strip():
            return self.headline
        return f"{self.headline}\nRemote traceback (the job's own frames):\n{self.remote_traceback.rstrip()}"

    def __str__(self) -> str:
        return self.describe()


JobFailed = RemoteJobError
"""The name this error had before it was raised under ``--wait`` too; kept for existing code."""


class JobCancelled(JobError):
    """The job was cancelled (by its owner, an admin, or while it was checkpointing)."""


class JobPreempted(JobError):
    """The job was preempted and never ran again: it ended (failed, lost) while it was being
    preempted. A job that is preempted and queued again is no error: it resumes from its checkpoint."""


def remote_exception(job_id: str, error: dict[str, Any]) -> Exception | None:
    """The cell's exception as its own class, if this kernel has that class loaded and it takes the
    arguments the job recorded; None otherwise (the caller raises :class:`RemoteJobError`)."""
    module = sys.modules.get(str(error.get("module") or ""))
    qualname = str(error.get("qualname") or "")
    texts = error.get("args")
    if module is None or not qualname or not isinstance(texts, list):
        return None
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    if not (isinstance(found, type) and issubclass(found, Exception)):
        return None
    try:
        arguments = [ast.literal_eval(text) for text in texts]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    try:
        recreated = found(*arguments)
    except Exception:  # the class's __init__ takes other arguments than its args: raise ours
        return None
    if str(recreated) != str(error.get("message", str(recreated))):
        return None  # not the same exception: its class words it differently from these arguments
    return recreated


def exception_for(
    job_id: str, state: str, summary: dict[str, Any], previous_state: str = ""
) -> BaseException | None:
    """What a job that ended in ``state`` raises in the notebook; None for a job that succeeded.

    ``summary`` is ``GET jobs/{id}/result``: the reason, the exit code, and for a cell job the
    exception record; ``previous_state`` the state the job left for its last one (its events).
    The remote exception comes with a :class:`RemoteJobError` as its ``__cause__`` (and, on
    Python 3.11+, a note), so the job id and the remote traceback are shown either way.
    """
    reason = str(summary.get("reason") or "")
    exit_code = summary.get("exit_code")
    if state == JobState.succeeded:
        return None
    if state == JobState.cancelled:
        return JobCancelled(
            f"job {job_id} was cancelled: {reason or 'no reason was recorded'}",
            job_id=job_id,
            state=state,
            reason=reason,
            exit_code=exit_code,
        )
    if state != JobState.failed:
        return None
    if previous_state == JobState.preempted:
        return JobPreempted(
            f"job {job_id} was preempted and did not run again: {reason or 'no reason was recorded'}",
            job_id=job_id,
            state=state,
            reason=reason,
            exit_code=exit_code,
        )
    error = summary.get("error") if isinstance(summary.get("error"), dict) else None
    failure = RemoteJobError(job_id, error, reason=reason, exit_code=exit_code)
    recreated = remote_exception(job_id, error) if error else None
    if recreated is None:
        return failure
    recreated.__cause__ = failure
    if hasattr(recreated, "add_note"):
        recreated.add_note(f"(raised by job {job_id}; the remote traceback is shown above)")
    return recreated
