"""The small process that watches over one batch job, so the job outlives the service that started it.

Run as ``python -m spawner.service.executor.supervisor --job-dir DIR -- argv...`` in a session of
its own. It starts the job in its own process group with stdout and stderr appended straight to
``DIR/log`` (the job writes to the file itself, so nothing is lost or held back by a pipe even if
the supervisor dies), enforces the time limit, forwards a stop request (SIGTERM) to the job's
group, kills the group after the grace period, and writes how the job ended to ``DIR/exit.json``.

It waits on a self-pipe that signal handlers write to, so it sleeps until the job ends, a signal
arrives or a deadline passes. Standard library only: it must start fast and depend on nothing the
service may be upgrading underneath it.
"""

from __future__ import annotations

import argparse
import os
import pwd
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import jobdir

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""Signals that ask the supervisor to stop its job (the executor sends SIGTERM)."""
WATCHED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD)
"""Signals that wake the supervisor; SIGHUP is caught so that a hangup cannot end it."""
EXIT_CODE_NOT_FOUND = 127
EXIT_CODE_NOT_EXECUTABLE = 126
"""The shell's exit codes for a command that could not be started, used the same way here."""


class JobSupervisor:
    """Runs one job to its end and records that end; one instance per supervisor process."""

    def __init__(self, job_dir: Path, argv: list[str]):
        self.job_dir = job_dir
        self.argv = argv
        self.spec: dict[str, Any] = jobdir.read_json(job_dir / jobdir.SPEC) or {}
        self.log_fd = os.open(
            job_dir / jobdir.LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        self.job: subprocess.Popen | None = None
        self.timed_out = False
        self.stopped = False
        self.kill_deadline: float | None = None
        time_limit_s = self.spec.get("time_limit_s")
        self.time_deadline = time.monotonic() + time_limit_s if time_limit_s else None

    def notice(self, message: str) -> None:
        """Add a line to the job's log saying what the supervisor did, so the user sees why."""
        os.write(self.log_fd, f"{jobdir.NOTICE_PREFIX}{message}\n".encode())

    def run(self) -> None:
        """Start the job, watch it until it ends, and record how it ended."""
        wakeups = self.install_signal_wakeups()
        try:
            self.job = self.start_job()
        except OSError as error:
            code = EXIT_CODE_NOT_FOUND if isinstance(error, FileNotFoundError) else EXIT_CODE_NOT_EXECUTABLE
            self.notice(f"could not start {self.argv[0]!r}: {error}")
            self.record_exit(code, signal_number=None)
            return
        jobdir.write_json_atomically(
            self.job_dir / jobdir.JOB_PID, jobdir.process_identity(self.job.pid) or {"pid": self.job.pid}
        )
        while not self.job_has_ended():
            for signal_number in self.wait_for_wakeup(wakeups):
                if signal_number in STOP_SIGNALS:
                    self.stop_requested()
            self.enforce_deadlines()
        self.finish()

    def install_signal_wakeups(self) -> int:
        """A pipe that receives one byte per signal caught, so waiting needs no polling."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signal_number in WATCHED_SIGNALS:
            signal.signal(signal_number, lambda *_: None)
        return read_end

    def start_job(self) -> subprocess.Popen:
        """The job in a session (and so a process group) of its own, as its owner when asked."""
        account = self.spec.get("run_as")
        identity: dict[str, Any] = {}
        if account:
            entry = pwd.getpwnam(account)
            identity = {
                "user": entry.pw_uid,
                "group": entry.pw_gid,
                "extra_groups": os.getgrouplist(entry.pw_name, entry.pw_gid),
            }
        return subprocess.Popen(
            self.argv,
            cwd=self.spec.get("workdir") or None,
            env=self.spec.get("environment"),
            stdin=subprocess.DEVNULL,
            stdout=self.log_fd,
            stderr=self.log_fd,
            start_new_session=True,
            **identity,
        )

    def wait_for_wakeup(self, wakeups: int) -> list[int]:
        """Sleep until a signal or the next deadline; the signals that arrived."""
        deadlines = [d for d in (self.time_deadline, self.kill_deadline) if d is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        readable, _, _ = select.select([wakeups], [], [], timeout)
        if not readable:
            return []
        try:
            return list(os.read(wakeups, 512))
        except BlockingIOError:
            return []

    def job_has_ended(self) -> bool:
        """Whether the job's process has exited, without reaping it (its pid must keep naming the group)."""
        assert self.job is not None
        result = os.waitid(os.P_PID, self.job.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return result is not None and result.si_pid != 0

    def stop_requested(self) -> None:
        """Forward a stop to the job's group, with the grace the stop request gives (or the default)."""
        request = jobdir.read_json(self.job_dir / jobdir.STOP_REQUEST) or {}
        grace_s = float(request.get("grace_s", self.spec.get("grace_s", 30.0)))
        if not self.stopped:
            self.notice(f"stop requested: SIGTERM, then SIGKILL after {grace_s:g} s")
        self.stopped = True
        self.terminate_job(grace_s)

    def enforce_deadlines(self) -> None:
        """SIGTERM at the time limit, SIGKILL when a grace period runs out."""
        now = time.monotonic()
        if self.time_deadline is not None and now >= self.time_deadline:
            self.time_deadline = None
            if not self.stopped:
                grace_s = float(self.spec.get("grace_s", 30.0))
                self.timed_out = True
                self.notice(
                    f"time limit of {self.spec['time_limit_s']:g} s reached: "
                    f"SIGTERM, then SIGKILL after {grace_s:g} s"
                )
                self.terminate_job(grace_s)
        if self.kill_deadline is not None and now >= self.kill_deadline:
            self.kill_deadline = None
            self.notice("grace period over: SIGKILL")
            self.signal_job_group(signal.SIGKILL)

    def terminate_job(self, grace_s: float) -> None:
        """SIGTERM to the job's group; a second request may shorten the grace, never lengthen it."""
        self.signal_job_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        self.kill_deadline = deadline if self.kill_deadline is None else min(self.kill_deadline, deadline)

    def signal_job_group(self, signal_number: int) -> None:
        """Signal every process of the job's group; the group may already be empty."""
        assert self.job is not None
        try:
            os.killpg(self.job.pid, signal_number)
        except ProcessLookupError:
            pass

    def finish(self) -> None:
        """Kill what the job left behind in its group (it would hold the GPUs), then reap and record."""
        self.signal_job_group(signal.SIGKILL)
        assert self.job is not None
        returncode = self.job.wait()
        signal_number = -returncode if returncode < 0 else None
        if signal_number is not None:
            self.notice(f"job ended by signal {signal.Signals(signal_number).name}")
        self.record_exit(returncode, signal_number)

    def record_exit(self, exit_code: int, signal_number: int | None) -> None:
        """Write the exit record; once it exists the job is over for everyone reading the directory."""
        jobdir.write_json_atomically(
            self.job_dir / jobdir.EXIT,
            {
                "exit_code": exit_code,
                "signal": signal_number,
                "timed_out": self.timed_out,
                "stopped": self.stopped,
                "ended_at": time.time(),
            },
        )


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-dir", required=True, type=Path, help="the job's directory")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the job's command")
    options = parser.parse_args(arguments)
    argv = options.argv[1:] if options.argv[:1] == ["--"] else options.argv
    if not argv:
        parser.error("no job command given after --")
    JobSupervisor(options.job_dir, argv).run()


if __name__ == "__main__":
    main(sys.argv[1:])
