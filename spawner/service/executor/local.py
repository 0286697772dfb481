"""Batch jobs as local processes on this host's training GPUs, each watched by a supervisor of its own.

Every job gets a directory under ``jobs_dir`` (see :mod:`.jobdir` for its files). ``start`` writes
the spec there and launches :mod:`.supervisor` in a new session, so neither a restart of the
service nor a signal to its process group reaches the job. Everything after that is read from the
directory, which is why a restarted service (a new ``LocalExecutor`` on the same ``jobs_dir``)
sees exactly what the old one saw.

**Root never follows a user's path.** With ``run_as_owner`` the service and the supervisors run
as root and each job as its owner, who can write some of the job's folders (and can do so at any
moment, from the job or from their notebook server). The rule: root never opens, reads, writes,
renames, chowns or deletes a path inside a folder its user can write, except through file
descriptors opened without following links (``O_NOFOLLOW``; ``openat`` relative to a directory
descriptor opened with ``O_DIRECTORY | O_NOFOLLOW``; file type and ownership checked with
``fstat`` on the descriptor: see :mod:`spawner.service.job_files`), or in a process that has
already dropped to the user. So, folder by folder:

- the run directory (``jobs_dir/<run id>``: spec, log, pids, stop request, exit record) is
  root's alone: created ``0700`` by the service in a ``jobs_dir`` that no other account can write
  (checked before a job is run as its owner). The job gets its log only as the open descriptor of
  its stdout and stderr, never its path;
- the job's files directory (``$GPUSLICE_JOB_FILES``: script or signed payload, ``results``, the
  cell's local modules) is the owner's, so that the job can write its results: the service
  (:class:`~spawner.service.jobs.JobService`) writes the script or payload as a new file renamed
  into place, empties ``results`` with a descriptor-based removal and reads the results through
  :func:`~spawner.service.job_files.read_file`, which trusts only regular files of the job's
  account; :meth:`LocalExecutor.give_job_files_to` hands over, by descriptor, what the service
  made there and nothing else (never a file of root's the owner could have moved in);
- everything the job itself and the runner of cells do there, they do as the owner.

Without ``run_as_owner`` (the quick start) everything runs as one account and the same code paths
behave as plain file access.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import signal
import stat
import sys
import time
from dataclasses import asdict
from pathlib import Path

from traitlets import Bool, Unicode

from .. import job_files
from ..payload import JOB_FILES_VARIABLE
from . import jobdir
from .base import (
    ExecutionRefused,
    ExecutionSpec,
    ExecutionState,
    ExecutionStatus,
    Executor,
    UnknownJob,
    execution_environment,
)

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Job ids become directory names, so they may hold nothing a path could be built from."""
POLL_INTERVAL_S = 0.02
"""How often start and stop look at the job's directory while they wait for the supervisor."""
LAUNCH_TIMEOUT_S = 30.0
"""How long start waits for the supervisor to report the job started (it normally takes ~0.1 s)."""
STOP_MARGIN_S = 5.0
"""How long after the grace period stop still waits for the supervisor's exit record."""


class LocalExecutor(Executor):
    """Runs each batch job as a local process on its GPUs; jobs survive service restarts."""

    jobs_dir = Unicode(
        "gpuslice-jobs",
        help="""Directory holding one subdirectory per job: its spec, log, pids and exit record.

        It must persist across restarts of the service (the running jobs are found again from it)
        and be private to the service: the specs hold the jobs' environments.
        """,
    ).tag(config=True)

    run_as_owner = Bool(
        False,
        help="""Run each job as its owner's system account rather than as the service's user.

        Needs the service to run as root and every owner to have an account on this host (a job
        whose owner has none is refused). Off for the single-user quick start, where every job
        runs as whoever runs the service.
        """,
    ).tag(config=True)

    enforce_time_limit = Bool(
        True,
        help="""Stop a job at its time limit (SIGTERM, then SIGKILL after ``grace_seconds``).

        Turn off only where something else bounds how long jobs hold their GPUs.
        """,
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._supervisors: dict[str, asyncio.Task] = {}
        """Tasks reaping the supervisors this instance started, so none lingers as a zombie."""
        self._launching: set[str] = set()
        """Jobs being started now, which have no pid files yet but are not lost."""

    def job_dir(self, job_id: str) -> Path:
        """The directory holding everything about ``job_id``."""
        if not JOB_ID_PATTERN.fullmatch(job_id):
            raise ValueError(
                f"job id {job_id!r} is not usable as a directory name ({JOB_ID_PATTERN.pattern})"
            )
        return Path(self.jobs_dir).absolute() / job_id

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / jobdir.LOG

    async def start(self, spec: ExecutionSpec) -> ExecutionStatus:
        run_as = self.account_for(spec)
        directory = self.job_dir(spec.job_id)
        await asyncio.to_thread(self.prepare_job_dir, directory, spec, run_as)
        self._launching.add(spec.job_id)
        try:
            return await self.launch(spec, directory)
        finally:
            self._launching.discard(spec.job_id)

    async def launch(self, spec: ExecutionSpec, directory: Path) -> ExecutionStatus:
        """Start the supervisor of an already prepared job, and wait until it has started the job."""
        errors_path = directory / jobdir.SUPERVISOR_ERRORS
        errors = await asyncio.to_thread(open, errors_path, "ab", opener=jobdir.nofollow)
        with errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "spawner.service.executor.supervisor",
                "--job-dir",
                str(directory),
                "--",
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
                start_new_session=True,
            )
        await asyncio.to_thread(self.record_supervisor, directory, process.pid)
        self._supervisors[spec.job_id] = reaper = asyncio.create_task(process.wait())
        reaper.add_done_callback(lambda _: self._supervisors.pop(spec.job_id, None))
        self.log.info("Job %s started by supervisor pid %s: %s", spec.job_id, process.pid, spec.argv)
        return await self.wait_until_launched(spec.job_id, process)

    @staticmethod
    def record_supervisor(directory: Path, pid: int) -> None:
        """Note which process supervises the job, so a restarted service can tell if it still runs."""
        identity = jobdir.process_identity(pid)
        if identity is not None:
            jobdir.write_json_atomically(directory / jobdir.SUPERVISOR_PID, identity)

    def job_uid(self, owner: str) -> int | None:
        """``owner``'s system account's uid with ``run_as_owner`` (None without one), else the service's."""
        if not self.run_as_owner:
            return os.geteuid()
        try:
            return pwd.getpwnam(owner).pw_uid
        except KeyError:
            return None

    def account_for(self, spec: ExecutionSpec) -> str | None:
        """The account to switch to for ``spec``, None to stay the service's; refuses what cannot be."""
        if not self.run_as_owner:
            return None
        try:
            account = pwd.getpwnam(spec.owner)
        except KeyError:
            raise ExecutionRefused(
                f"job {spec.job_id}: its owner {spec.owner!r} has no system account on this host, and"
                " LocalExecutor.run_as_owner is on; create the account, or turn run_as_owner off to run"
                " jobs as the service's user"
            ) from None
        if account.pw_uid == os.geteuid():
            return None
        if os.geteuid() != 0:
            raise ExecutionRefused(
                f"job {spec.job_id}: cannot run as {spec.owner!r}: the service is not root"
                f" (it runs as uid {os.geteuid()}); run it as root or turn LocalExecutor.run_as_owner off"
            )
        return account.pw_name

    def prepare_job_dir(self, directory: Path, spec: ExecutionSpec, run_as: str | None) -> None:
        """Create the job's private directory and the spec its supervisor reads; refuses a reused id."""
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if run_as:
            self.check_private(directory.parent)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            raise ExecutionRefused(
                f"job {spec.job_id} was already started (its directory {directory} exists)"
            ) from None
        enforced = self.enforce_time_limit and spec.time_limit_s > 0
        record = {
            **asdict(spec),
            "environment": self.environment_for(spec, run_as),
            "time_limit_s": spec.time_limit_s if enforced else None,
            "grace_s": self.grace_seconds,
            "run_as": run_as,
            "submitted_at": time.time(),
        }
        jobdir.write_json_atomically(directory / jobdir.SPEC, record)
        if run_as:
            try:
                self.give_job_files_to(spec, run_as)
            except job_files.UntrustedFile as error:
                raise ExecutionRefused(
                    f"job {spec.job_id}: its files directory is not safe to use: {error}"
                ) from None

    @staticmethod
    def check_private(jobs_dir: Path) -> None:
        """Refuse to run jobs as their owners from a ``jobs_dir`` another account could write.

        The run directories in it hold root's records of each job (and the spec a supervisor,
        running as root, follows); only the service may be able to add, rename or remove them.
        """
        info = jobs_dir.stat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise ExecutionRefused(
                f"LocalExecutor.jobs_dir {jobs_dir} must be a directory of the service's account"
                f" (uid {os.geteuid()}) that no other account can write (it is"
                f" {job_files.kind(info.st_mode)} of uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o});"
                " fix it, e.g. chmod go-w, before jobs run as their owners"
            )

    @staticmethod
    def give_job_files_to(spec: ExecutionSpec, account: str) -> None:
        """Make the job's own files (script or payload, results) its owner's, so the job can use them.

        They are written by the service (root) into a private directory the job, run as its
        owner, could neither read nor write otherwise. Only that directory is given away, never
        the job's working directory or anything outside the files directory; and in it only what
        the service wrote, through descriptors (:func:`~spawner.service.job_files.give_tree`). On a
        job's second run the directory is already the owner's, who may have left links there, or
        root's files moved in from elsewhere: then only the service's new directories (the fresh
        results) change hands; the script or payload it wrote stays root's, readable by the job.
        """
        files = spec.environment.get(JOB_FILES_VARIABLE)
        if not files:
            return
        entry = pwd.getpwnam(account)
        job_files.give_tree(Path(files), entry.pw_uid, entry.pw_gid)

    @staticmethod
    def environment_for(spec: ExecutionSpec, run_as: str | None) -> dict[str, str]:
        """The job's environment; run as its owner, it also names the owner's home and user."""
        environment = execution_environment(spec)
        if run_as:
            account = pwd.getpwnam(run_as)
            environment.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        return environment

    async def wait_until_launched(
        self, job_id: str, supervisor: asyncio.subprocess.Process
    ) -> ExecutionStatus:
        """The status once the supervisor has started the job (or recorded why it could not)."""
        directory = self.job_dir(job_id)
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while time.monotonic() < deadline:
            if (directory / jobdir.JOB_PID).exists() or (directory / jobdir.EXIT).exists():
                break
            if supervisor.returncode is not None:
                break
            await asyncio.sleep(POLL_INTERVAL_S)
        self._launching.discard(job_id)
        status = await self.status(job_id)
        if status.state is ExecutionState.lost:
            errors = directory / jobdir.SUPERVISOR_ERRORS
            self.log.error("Job %s: its supervisor failed; see %s", job_id, errors)
        return status

    async def status(self, job_id: str) -> ExecutionStatus:
        return await asyncio.to_thread(self.read_status, job_id)

    def read_status(self, job_id: str) -> ExecutionStatus:
        """The job's status from its directory and the process table (no waiting)."""
        directory = self.job_dir(job_id)
        if not (directory / jobdir.SPEC).exists():
            raise UnknownJob(f"no job {job_id} in {self.jobs_dir}")
        job = jobdir.read_json(directory / jobdir.JOB_PID)
        job_pid = job["pid"] if job else None
        # Read the exit record before looking for the supervisor, and again after it is found gone:
        # a supervisor that exits in between has written it by then.
        ended = jobdir.read_json(directory / jobdir.EXIT)
        if ended is None and (job_id in self._launching or self.supervisor_alive(directory)):
            return ExecutionStatus(ExecutionState.running, None, job_pid, False, False)
        ended = ended or jobdir.read_json(directory / jobdir.EXIT)
        if ended is not None:
            return ExecutionStatus(
                ExecutionState.exited, ended["exit_code"], job_pid, ended["timed_out"], ended["stopped"]
            )
        stop_requested = (directory / jobdir.STOP_REQUEST).exists()
        # The supervisor is gone but the job may run on; nothing will record its exit code.
        state = ExecutionState.running if jobdir.is_same_process_alive(job) else ExecutionState.lost
        return ExecutionStatus(state, None, job_pid, False, stop_requested)

    @staticmethod
    def supervisor_alive(directory: Path) -> bool:
        """Whether this job's supervisor still runs: same pid, same start time, same job directory."""
        identity = jobdir.read_json(directory / jobdir.SUPERVISOR_PID)
        return jobdir.is_same_process_alive(identity) and jobdir.command_line_mentions(
            identity["pid"], str(directory)
        )

    async def request_stop(self, job_id: str, grace_s: float | None = None) -> bool:
        grace_s = self.grace_seconds if grace_s is None else grace_s
        status = await self.status(job_id)
        if status.state is not ExecutionState.running:
            return False
        directory = self.job_dir(job_id)
        asked = await asyncio.to_thread(jobdir.read_json, directory / jobdir.STOP_REQUEST)
        if asked and time.time() + grace_s >= float(asked["requested_at"]) + float(asked["grace_s"]):
            # Asked already, with a deadline no later: a second SIGTERM would only run the job's
            # handler twice. A shorter grace is sent again (the supervisor shortens, never lengthens).
            return True
        request = {"grace_s": grace_s, "requested_at": time.time()}
        await asyncio.to_thread(jobdir.write_json_atomically, directory / jobdir.STOP_REQUEST, request)
        if await asyncio.to_thread(self.signal_supervisor, directory, signal.SIGTERM):
            self.log.info("Stopping job %s (grace %g s)", job_id, grace_s)
            return True
        return False

    async def stop(self, job_id: str, grace_s: float | None = None) -> ExecutionStatus:
        grace_s = self.grace_seconds if grace_s is None else grace_s
        status = await self.status(job_id)
        if status.state is not ExecutionState.running:
            return status
        directory = self.job_dir(job_id)
        if await self.request_stop(job_id, grace_s):
            request = await asyncio.to_thread(jobdir.read_json, directory / jobdir.STOP_REQUEST) or {}
            asked_at = float(request.get("requested_at", time.time()))
            grace_s = min(grace_s, float(request.get("grace_s", grace_s)))
            left = max(0.0, asked_at + grace_s - time.time())
            status = await self.wait_while_running(job_id, left + STOP_MARGIN_S)
            if status.state is not ExecutionState.running:
                return status
            self.log.warning("Job %s: its supervisor did not stop it in time; killing both", job_id)
            await asyncio.to_thread(self.signal_supervisor, directory, signal.SIGKILL)
            grace_s = 0.0
        return await self.stop_orphaned_job(job_id, grace_s)

    async def stop_orphaned_job(self, job_id: str, grace_s: float) -> ExecutionStatus:
        """Stop a job whose supervisor is gone: SIGTERM its group, SIGKILL after the grace period."""
        directory = self.job_dir(job_id)
        if await asyncio.to_thread(self.signal_job_group, directory, signal.SIGTERM):
            self.log.warning("Job %s has no supervisor; signalled its process group directly", job_id)
            status = await self.wait_while_running(job_id, grace_s)
            if status.state is ExecutionState.running:
                await asyncio.to_thread(self.signal_job_group, directory, signal.SIGKILL)
        return await self.wait_while_running(job_id, STOP_MARGIN_S)

    async def wait_while_running(self, job_id: str, timeout_s: float) -> ExecutionStatus:
        """The job's status once it is no longer running, or after ``timeout_s`` in any case."""
        deadline = time.monotonic() + timeout_s
        status = await self.status(job_id)
        while status.state is ExecutionState.running and time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL_S)
            status = await self.status(job_id)
        return status

    def signal_supervisor(self, directory: Path, signal_number: int) -> bool:
        """Signal the job's supervisor if it still runs; whether it did."""
        if not self.supervisor_alive(directory):
            return False
        identity = jobdir.read_json(directory / jobdir.SUPERVISOR_PID)
        return self.deliver(os.kill, identity["pid"], signal_number)

    @staticmethod
    def signal_job_group(directory: Path, signal_number: int) -> bool:
        """Signal the job's process group if its leader still runs; whether it did."""
        job = jobdir.read_json(directory / jobdir.JOB_PID)
        if not jobdir.is_same_process_alive(job):
            return False
        return LocalExecutor.deliver(os.killpg, job["pid"], signal_number)

    @staticmethod
    def deliver(send, target: int, signal_number: int) -> bool:
        """``send(target, signal_number)``; False when the target ended since it was checked."""
        try:
            send(target, signal_number)
        except ProcessLookupError:
            return False
        return True

    async def read_log(self, job_id: str, offset: int = 0, limit: int = 65536) -> tuple[bytes, int]:
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must not be negative, got {offset} and {limit}")
        path = self.log_path(job_id)
        if not (path.parent / jobdir.SPEC).exists():
            raise UnknownJob(f"no job {job_id} in {self.jobs_dir}")
        chunk = await asyncio.to_thread(self.read_chunk, path, offset, limit)
        return chunk, offset + len(chunk)

    @staticmethod
    def read_chunk(path: Path, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of ``path`` from ``offset``; nothing yet if the job has not written."""
        try:
            with open(path, "rb", opener=jobdir.nofollow) as file:
                file.seek(offset)
                return file.read(limit)
        except FileNotFoundError:
            return b""
