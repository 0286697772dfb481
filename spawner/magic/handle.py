"""The handle ``%%submit`` returns: a job's id, and its status, logs, end, cancel and values."""

from __future__ import annotations

import time
from typing import Any

import cloudpickle

from spawner.client import GPUSliceClient, ServiceError, job_state
from spawner.core.vocabulary import SCRIPT_PAYLOAD, TERMINAL_STATES, JobState

from .errors import JobFailed, exception_for


class JobHandle:
    """A submitted job, followed through the service's REST API.

    ``status()`` is its state now, ``logs()`` its output so far, ``wait()`` blocks until it ends,
    ``cancel()`` stops it, and ``result()`` is ``{name: value}`` of what the cell assigned (or the
    ``--out`` names). A job that did not succeed makes ``wait()`` and ``result()`` raise, as the
    cell would have here: the cell's own exception where this kernel has its class, else
    :class:`~spawner.magic.errors.RemoteJobError`; :class:`~spawner.magic.errors.JobCancelled` for
    a cancelled job (see :mod:`spawner.magic.errors`).
    """

    def __init__(self, job_id: str, client: GPUSliceClient | None = None):
        self.id = job_id
        self.client = client or GPUSliceClient()

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(
            f"job {self.id}: .status() .logs() .wait() .cancel() .result(), "
            f"or %job logs|fetch|cancel {self.id}"
        )

    def job(self) -> dict[str, Any]:
        """The job as the service describes it (state, queue position, times, GPUs ...)."""
        return self.client.job(self.id)["job"]

    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return job_state(self.job())

    def logs(self) -> str:
        """The job's output so far."""
        parts, offset = [], 0
        while True:
            chunk = self.client.logs(self.id, offset)
            parts.append(chunk["data"])
            if not chunk["data"] or chunk["next_offset"] == offset:
                return "".join(parts)
            offset = chunk["next_offset"]

    def wait(self, timeout: float | None = None, poll_seconds: float = 1.0) -> str:
        """Block until the job has ended (TimeoutError after ``timeout`` seconds): ``succeeded``, or
        the job's failure raised here (:func:`raise_if_unsuccessful`)."""
        ended = self.client.wait(self.id, poll_seconds=poll_seconds, timeout=timeout)
        raise_if_unsuccessful(self.client, self.id, ended)
        return job_state(ended)

    def cancel(self) -> str:
        """Cancel the job (stopping it if it runs); its state after."""
        return job_state(self.client.cancel(self.id))

    def result(self) -> dict[str, Any]:
        """``{name: value}`` the cell returned; the job's failure raised here if it did not succeed."""
        summary = self.client.result(self.id)
        if summary.get("done"):
            raise_if_unsuccessful(self.client, self.id, summary=summary)
        return fetch_values(self.client, self.id)


def raise_if_unsuccessful(
    client: GPUSliceClient,
    job_id: str,
    answer: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """Raise what an ended job that did not succeed raises in the notebook (see
    :func:`.errors.exception_for`); nothing for a job that succeeded or has not ended.

    ``answer`` is ``GET jobs/{id}`` (its state and events), ``summary`` ``GET jobs/{id}/result``
    (the exception record); each is read when not given and needed.
    """
    __tracebackhide__ = True  # IPython leaves this frame out of the traceback it shows
    answer = answer if answer is not None and "events" in answer else client.job(job_id)
    state = job_state(answer)
    if state not in TERMINAL_STATES or state == JobState.succeeded:
        return
    summary = summary if summary is not None else client.result(job_id)
    states = [event.get("to_state") for event in answer.get("events") or []]
    previous = states[-2] if len(states) >= 2 else ""
    error = exception_for(job_id, state, summary, previous_state=previous or "")
    if error is not None:
        raise error


def fetch_values(client: GPUSliceClient, job_id: str) -> dict[str, Any]:
    """The values of a finished cell job, unpickled here (never in the service)."""
    return fetch_result(client, job_id)[0]


def fetch_result(client: GPUSliceClient, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The values of a finished cell job and the service's result summary (names left out and why)."""
    summary = client.result(job_id)
    if not summary.get("done"):
        raise ServiceError(
            f"job {job_id} is still {summary.get('state')}; fetch its values when it has ended "
            f"(wait with the handle's .wait(), or follow it with %job logs {job_id} -f)"
        )
    if summary.get("error"):
        raise JobFailed(
            job_id, summary["error"], reason=summary.get("reason") or "", exit_code=summary.get("exit_code")
        )
    if not summary.get("values_available"):
        if summary.get("kind") == SCRIPT_PAYLOAD:
            raise ServiceError(f"job {job_id} is a script job; only %%submit cells return values")
        raise ServiceError(
            f"job {job_id} {summary.get('state')} ({summary.get('reason')}) without returning values; "
            f"see its output with %job logs {job_id}"
        )
    return cloudpickle.loads(client.result_values(job_id)), summary


def elapsed_words(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def job_line(job: dict[str, Any], last_log_line: str = "", now: float | None = None) -> str:
    """The one-line status of a job: state, queue position or elapsed time, last log line."""
    now = time.time() if now is None else now
    state = job.get("state", "")
    parts = [f"{job['id']}", state]
    if state == JobState.queued:
        if job.get("queue_position") is not None:
            ahead = job.get("jobs_ahead")
            # position: among your own jobs; jobs ahead: everyone's, in the whole queue
            parts.append(
                f"position {job['queue_position']}" + (f" ({ahead} jobs ahead in the queue)" if ahead else "")
            )
        if job.get("waiting_reason"):
            parts.append(job["waiting_reason"])
    elif state == JobState.running and job.get("started_at"):
        parts.append(f"elapsed {elapsed_words(now - job['started_at'])}")
    elif state in TERMINAL_STATES:
        if job.get("started_at") and job.get("ended_at"):
            parts.append(f"ran {elapsed_words(job['ended_at'] - job['started_at'])}")
        if job.get("reason") and state != JobState.succeeded:
            parts.append(job["reason"])
        if state in (JobState.succeeded, JobState.failed):
            parts.append(f"%job fetch {job['id']}")
    if last_log_line:
        parts.append(f"last: {last_log_line[:120]}")
    return " · ".join(parts)
