"""Reading a job's log: the logs of all its runs as one text, from any byte offset, optionally
waiting for more (``GET jobs/{id}/logs``)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from spawner.core.vocabulary import TERMINAL_STATES, JobState
from spawner.ledger.jobs import JobEvent, JobRecord

from .executor.base import Executor, UnknownJob
from .executor.jobdir import nofollow
from .runs import run_id


class JobLog:
    """One job's log as the API serves it, read through the executor that keeps each run's."""

    def __init__(
        self,
        executor: Executor,
        get: Callable[[str], Awaitable[JobRecord | None]],
        events: Callable[[str], Awaitable[list[JobEvent]]],
        chunk_bytes: int,
        follow_seconds: float,
    ):
        self.executor = executor
        self.get = get
        self.events = events
        self.chunk_bytes = chunk_bytes
        self.follow_seconds = follow_seconds

    async def read(self, record: JobRecord, offset: int, follow: bool) -> dict[str, Any]:
        """Log text from ``offset``; with ``follow`` wait up to ``follow_seconds`` for some.

        The log of a job is the logs of all its runs in order, each run after the first opened by a
        marker line that says why it ran again, and offsets address that whole text: a run before
        the latest has ended and its log no longer grows, so every offset keeps meaning the same
        byte however many runs follow, and a client following the log loses and repeats nothing.
        """
        deadline = time.monotonic() + (self.follow_seconds if follow else 0)
        while True:
            data, next_offset = await self._read(record, offset)
            if data or record.state in TERMINAL_STATES or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
            record = await self.get(record.id) or record
        text, used = complete_utf8(data, final=record.state in TERMINAL_STATES)
        next_offset = offset + used if used < len(data) else next_offset
        done = record.state in TERMINAL_STATES and len(data) < self.chunk_bytes
        return {"data": text, "next_offset": next_offset, "done": done, "state": record.state}

    async def _read(self, record: JobRecord, offset: int) -> tuple[bytes, int]:
        """Up to ``chunk_bytes`` of the job's whole log (all runs) from ``offset``."""
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        segments = await self._segments(record)
        wanted = self.chunk_bytes
        chunks: list[bytes] = []
        start = 0
        for segment in segments:
            if wanted <= 0:
                break
            if isinstance(segment, bytes):
                if offset < start + len(segment):
                    piece = segment[max(0, offset - start) : max(0, offset - start) + wanted]
                    chunks.append(piece)
                    wanted -= len(piece)
                start += len(segment)
                continue
            run, size = segment
            if size is not None and offset >= start + size:
                start += size
                continue
            piece = await self._read_run(
                run,
                max(0, offset - start),
                wanted if size is None else min(wanted, start + size - max(offset, start)),
            )
            chunks.append(piece)
            wanted -= len(piece)
            if size is None:
                break  # the latest run: nothing follows it yet
            start += size
        data = b"".join(chunks)
        return data, offset + len(data)

    async def _segments(self, record: JobRecord) -> list[bytes | tuple[str, int | None]]:
        """The job's log as pieces: for each run ``(run id, its size)``, the latest with size None
        (it may still grow), and between runs the marker line as bytes."""
        if record.attempts <= 1:
            run = run_id(record)
            return [(run, None)] if run else []
        events = await self.events(record.id)
        why = [event.reason for event in events if event.to_state == JobState.preempted]
        segments: list[bytes | tuple[str, int | None]] = []
        for attempt in range(1, record.attempts + 1):
            run = run_id(record, attempt)
            if attempt == record.attempts:
                segments.append((run, None))
                break
            size, last_byte = await asyncio.to_thread(
                functools.partial(log_size_and_last_byte, self.executor.log_path(run))
            )
            segments.append((run, size))
            reason = why[attempt - 1] if attempt - 1 < len(why) else "it was started again"
            marker = f"--- run {attempt + 1} (after preemption: {reason}) ---\n"
            if size and last_byte != b"\n":
                marker = "\n" + marker  # the marker starts a line of its own
            segments.append(marker.encode("utf-8"))
        return segments

    async def _read_run(self, run: str, offset: int, limit: int) -> bytes:
        try:
            data, _ = await self.executor.read_log(run, offset, limit)
        except (UnknownJob, ValueError):
            return b""  # not started yet: no log so far
        return data


def complete_utf8(data: bytes, final: bool) -> tuple[str, int]:
    """Decode ``data`` up to its last whole character, unless it is the log's end."""
    if final:
        return data.decode("utf-8", errors="replace"), len(data)
    for cut in range(len(data), max(len(data) - 4, 0) - 1, -1):
        try:
            return data[:cut].decode("utf-8"), cut
        except UnicodeDecodeError as error:
            if error.start < cut - 4:
                break
    return data.decode("utf-8", errors="replace"), len(data)


def log_size_and_last_byte(path: Path) -> tuple[int, bytes]:
    """The size of an ended run's log and its last byte (b"" when it is empty or missing)."""
    try:
        with open(path, "rb", opener=nofollow) as file:
            size = file.seek(0, 2)
            if size == 0:
                return 0, b""
            file.seek(size - 1)
            return size, file.read(1)
    except FileNotFoundError:
        return 0, b""
