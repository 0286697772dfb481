"""The live status line of a submitted job, updated in place until the job ends.

An ipywidgets HTML widget when ipywidgets can be imported, else a display with a ``display_id``
whose updates replace it. A background thread polls the service, so the kernel is free for the
next cell; it runs in a copy of the submitting cell's context, so ipykernel sends its updates as
that cell's output.
"""

from __future__ import annotations

import contextvars
import html
import threading
import time
from typing import Any

from IPython.display import display

from spawner.client import GPUSliceClient, ServiceError
from spawner.core.vocabulary import TERMINAL_STATES, JobState

from .handle import job_line

POLL_SECONDS = 1.0
GIVE_UP_AFTER_ERRORS = 10


class StatusDisplay:
    """One line of output that can be replaced: a widget, or a display with an id."""

    def __init__(self, text: str):
        try:
            import ipywidgets
        except ImportError:
            self.widget = None
            self.handle = display({"text/plain": text}, raw=True, display_id=True)
        else:
            self.widget = ipywidgets.HTML(value=self._html(text))
            self.handle = None
            display(self.widget)

    @staticmethod
    def _html(text: str) -> str:
        return f"<code>{html.escape(text)}</code>"

    def update(self, text: str) -> None:
        if self.widget is not None:
            self.widget.value = self._html(text)
        elif self.handle is not None:
            self.handle.update({"text/plain": text}, raw=True)


class LogTail:
    """The job's log read forward from where it was last read; remembers its last non-empty line."""

    def __init__(self, client: GPUSliceClient, job_id: str):
        self.client = client
        self.job_id = job_id
        self.offset = 0
        self.last_line = ""

    def read(self, follow: bool = False) -> tuple[str, bool]:
        """New log text (waiting a while for some with ``follow``), and whether the log is complete."""
        chunk = self.client.logs(self.job_id, self.offset, follow=follow)
        self.offset = chunk["next_offset"]
        lines = [line for line in chunk["data"].splitlines() if line.strip()]
        if lines:
            self.last_line = lines[-1].strip()
        return chunk["data"], chunk["done"]


class LiveStatus:
    """Polls one job and keeps its status line current until it ends."""

    def __init__(self, client: GPUSliceClient, job: dict[str, Any]):
        self.client = client
        self.job = job
        self.tail = LogTail(client, job["id"])
        self.display = StatusDisplay(job_line(job))
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Read the job and its newest log line and redraw; whether the job has ended."""
        self.job = self.client.job(self.job["id"])["job"]
        if self.job["state"] != JobState.queued:
            self.tail.read()
        self.display.update(job_line(self.job, self.tail.last_line))
        return self.job["state"] in TERMINAL_STATES

    def start(self) -> None:
        """Follow the job in a background thread, in the submitting cell's context."""
        context = contextvars.copy_context()
        self.thread = threading.Thread(
            target=context.run, args=(self.follow,), name=f"gpuslice-status-{self.job['id']}", daemon=True
        )
        self.thread.start()

    def follow(self) -> None:
        errors = 0
        while not self.stopped.is_set():
            try:
                if self.refresh():
                    return
                errors = 0
            except ServiceError as error:
                errors += 1
                if errors >= GIVE_UP_AFTER_ERRORS:
                    self.display.update(f"{self.job['id']} · status unavailable: {error}")
                    return
            self.stopped.wait(POLL_SECONDS * min(errors + 1, 5))

    def stop(self) -> None:
        self.stopped.set()


def wait_and_stream(client: GPUSliceClient, job: dict[str, Any], write) -> dict[str, Any]:
    """Block until the job ends, writing its log as it comes and updating its status line."""
    status = StatusDisplay(job_line(job))
    tail = LogTail(client, job["id"])
    while True:
        job = client.job(job["id"])["job"]
        if job["state"] == JobState.queued:
            status.update(job_line(job))
            time.sleep(POLL_SECONDS)
            continue
        text, complete = tail.read(follow=job["state"] not in TERMINAL_STATES)
        if text:
            write(text)
        status.update(job_line(job, tail.last_line))
        if job["state"] in TERMINAL_STATES and complete and not text:
            job = client.job(job["id"])["job"]
            status.update(job_line(job, tail.last_line))
            return job
