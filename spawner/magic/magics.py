"""``%%submit``, ``%submit``, ``%jobs`` and ``%job``: the notebook's side of the training queue.

Every refusal (a value that cannot travel, a quota, the service down) is printed as the sentence
that explains it, on stderr, and the cell ends quietly: a traceback from this package would only
hide the sentence. A job that fails under ``--wait`` is different: the cell raises, as it would
have run here (its own exception where this kernel has the class, see :mod:`.errors`), so that a
notebook run top to bottom stops at a failed training cell. Without ``--wait`` the cell returns at
once and nothing is raised later; ``handle.wait()`` and ``handle.result()`` raise the same way.
"""

from __future__ import annotations

import argparse
import html
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Int

from spawner.client import GPUSliceClient, ServiceError, new_idempotency_key
from spawner.core.cell_bundle import CELL_MODE, FILE_MODE
from spawner.core.vocabulary import JobState, Priority

from . import capture as capturing
from .errors import JobError
from .handle import JobHandle, elapsed_words, fetch_result, raise_if_unsuccessful
from .provenance import provenance
from .status import LiveStatus, wait_and_stream


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a mistake as IPython's UsageError (one line, no traceback)."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: str | None = None) -> None:
        raise UsageError(message or self.format_help())


def _submit_parser(prog: str) -> _ArgumentParser:
    parser = _ArgumentParser(
        prog=prog, add_help=True, description="Run code as a batch job on training GPUs."
    )
    parser.add_argument("--gpus", type=int, default=1, help="whole GPUs on one node (0: CPU only)")
    parser.add_argument("--gpu-model", action="append", dest="gpu_models", help="GPU model, e.g. A100-80GB")
    parser.add_argument("--priority", default=Priority.normal.name, help="low, normal or high")
    parser.add_argument(
        "--time", dest="time_limit", help="time limit such as 30m, 12h (default: the service's)"
    )
    parser.add_argument("--name", help="a name for the job")
    parser.add_argument("--out", help="comma-separated names to bring back (default: what the cell assigns)")
    parser.add_argument("--wait", action="store_true", help="block, streaming the log, until the job ends")
    return parser


def _out_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if not name.isidentifier()]
    if bad or not names:
        raise UsageError(
            f"--out: give Python names separated by commas, e.g. --out model,losses (got {text!r})"
        )
    return names


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[index])) for row in [header, *rows]) for index in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


@magics_class
class SubmitMagics(Magics):
    """The magics of ``spawner.magic``; configure limits with ``c.SubmitMagics.<trait>``."""

    max_value_bytes = Int(
        capturing.DEFAULT_MAX_VALUE_BYTES,
        help="""The largest single value (pickled bytes) a cell may take with it.

        Bigger data belongs in a file the cell reads; the refusal names the variable, its type and
        size. The service bounds the whole payload too (JobService.max_cell_payload_bytes).
        """,
    ).tag(config=True)

    max_module_bytes = Int(
        capturing.DEFAULT_MAX_MODULE_BYTES,
        help="The largest local module (source bytes) that travels with a cell by value.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell=shell, **kwargs)
        self._client: GPUSliceClient | None = None
        self.live: dict[str, LiveStatus] = {}

    # --------------------------------------------------------------------------- plumbing

    @property
    def client(self) -> GPUSliceClient:
        """The REST client, made on first use (so a missing URL is reported by the first magic)."""
        if self._client is None:
            self._client = GPUSliceClient()
        return self._client

    @staticmethod
    def refuse(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------ submit

    @line_cell_magic
    def submit(self, line: str, cell: str | None = None) -> JobHandle | None:
        """``%%submit [options]``: run this cell as a batch job; ``%submit [options] script.py [args]``.

        With ``--wait``, a job that does not succeed raises here (see :mod:`.errors`).
        """
        __tracebackhide__ = True  # IPython shows the job's error, not these frames
        try:
            if cell is None:
                return self.submit_script(line)
            return self.submit_cell(line, cell)
        except (ServiceError, capturing.CaptureRefused) as refusal:
            self.refuse(str(refusal))
            return None

    def submit_cell(self, line: str, cell: str) -> JobHandle | None:
        __tracebackhide__ = True
        options = _submit_parser("%%submit").parse_args(shlex.split(line))
        out = _out_names(options.out)
        # A blank first line stands for the %%submit line, so the job's line numbers are the cell's.
        source = "\n" + self.shell.transform_cell(cell)
        try:
            names = capturing.cell_names(source)
        except SyntaxError as error:
            raise capturing.CaptureRefused(f"%%submit: the cell is not valid Python: {error}") from None
        if "get_ipython" in names.free and "get_ipython" not in cell:
            raise capturing.CaptureRefused(
                "%%submit: the cell uses IPython syntax (a %magic or !shell line), which does not run in "
                "a job; write it in plain Python (e.g. subprocess.run instead of !command)"
            )
        workdir = Path.cwd().resolve()
        taken = capturing.capture(
            names.free,
            self.shell.user_ns,
            workdir=workdir,
            code_imports=capturing.imported_top_names(source),
            max_value_bytes=self.max_value_bytes,
            max_module_bytes=self.max_module_bytes,
        )
        returns = out if out is not None else [name for name in names.assigned if not name.startswith("_")]
        payload = capturing.pack(
            taken,
            source=source,
            filename=capturing.CELL_FILENAME,
            mode=CELL_MODE,
            returns=returns,
            out_given=out is not None,
        )
        name = options.name or self.default_name(cell)
        return self.send(
            options,
            payload,
            manifest=taken.manifest(len(payload)),
            name=name,
            workdir=workdir,
            record=provenance(
                workdir=workdir, submitted_with="%%submit", cell=f"%%submit {line}".rstrip() + "\n" + cell
            ),
        )

    def submit_script(self, line: str) -> JobHandle | None:
        __tracebackhide__ = True
        parser = _submit_parser("%submit")
        parser.add_argument("script", help="a Python file of the working directory")
        parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
        options = parser.parse_args(shlex.split(line))
        workdir = Path.cwd().resolve()
        path = (workdir / options.script).resolve()
        if not path.is_file():
            raise capturing.CaptureRefused(f"%submit: there is no file {options.script} in {workdir}")
        if not path.is_relative_to(workdir):
            raise capturing.CaptureRefused(
                f"%submit: {options.script} is outside the working directory {workdir}; copy it here first"
            )
        source = path.read_text(encoding="utf-8")
        try:
            compile(source, str(path), "exec")
        except SyntaxError as error:
            raise capturing.CaptureRefused(
                f"%submit: {options.script} is not valid Python: {error}"
            ) from None
        relative = path.relative_to(workdir).as_posix()
        taken = capturing.capture(
            [],
            {},
            workdir=workdir,
            code_imports=capturing.imported_top_names(source),
            loaded_modules={},
            max_module_bytes=self.max_module_bytes,
        )
        out = _out_names(options.out) or []
        payload = capturing.pack(
            taken,
            source=source,
            filename=relative,
            mode=FILE_MODE,
            returns=out,
            out_given=bool(out),
            argv=[relative, *options.args],
        )
        return self.send(
            options,
            payload,
            manifest=taken.manifest(len(payload)),
            name=options.name or relative,
            workdir=workdir,
            record=provenance(workdir=workdir, submitted_with="%submit", script=relative, args=options.args),
        )

    @staticmethod
    def default_name(cell: str) -> str:
        lines = [
            line.strip() for line in cell.splitlines() if line.strip() and not line.strip().startswith("#")
        ]
        return ("cell: " + (lines[0] if lines else "empty"))[:80]

    def send(
        self,
        options: argparse.Namespace,
        payload: bytes,
        *,
        manifest: str,
        name: str,
        workdir: Path,
        record: dict[str, Any],
    ) -> JobHandle | None:
        """Show the manifest, queue the job, then follow it (live line, or blocking with --wait)."""
        __tracebackhide__ = True
        print(f"%submit {name!r}: {manifest}", flush=True)

        def retrying(error: ServiceError, delay_s: float) -> None:
            self.refuse(
                f"%submit: no answer from the service ({error}); sending the cell again in {delay_s:g} s"
                " (under the same idempotency key: it is queued once)"
            )

        answer = self.client.submit_cell(
            payload,
            # One key for this submission and every resend of it (see spawner.client).
            idempotency_key=new_idempotency_key(),
            on_retry=retrying,
            python=platform.python_version(),
            name=name,
            gpus=options.gpus,
            priority=options.priority,
            time_limit=options.time_limit,
            workdir=str(workdir),
            gpu_models=options.gpu_models,
            provenance=record,
        )
        job = answer["job"]
        handle = JobHandle(job["id"], self.client)
        print(f"submitted {job['id']}", flush=True)
        if options.wait:
            self.wait_here(job)
            return handle
        live = LiveStatus(self.client, job)
        self.live[job["id"]] = live
        live.start()
        return handle

    def wait_here(self, job: dict[str, Any]) -> None:
        """Block until the job ends, streaming its log; bring its values back if it succeeded, and
        raise its failure (the cell's own exception, or :class:`.errors.JobError`) if not."""
        __tracebackhide__ = True
        try:
            ended = wait_and_stream(self.client, job, lambda text: print(text, end="", flush=True))
        except KeyboardInterrupt:
            self.refuse(f"stopped waiting; job {job['id']} goes on (cancel it with %job cancel {job['id']})")
            return
        if ended["state"] == JobState.succeeded:
            self.fetch_into_namespace(job["id"])
            return
        raise_if_unsuccessful(self.client, job["id"])

    # ------------------------------------------------------------------------- jobs, job

    @line_magic
    def jobs(self, line: str) -> None:
        """``%jobs [--all] [--state STATE]``: your jobs, newest first."""
        parser = _ArgumentParser(prog="%jobs", description="List batch jobs.")
        parser.add_argument("--all", action="store_true", help="every user's jobs (admins)")
        parser.add_argument("--state", help="only jobs in this state")
        options = parser.parse_args(shlex.split(line))
        try:
            jobs = self.client.jobs(state=options.state, all_users=options.all)
        except ServiceError as refusal:
            self.refuse(str(refusal))
            return
        if not jobs:
            print("no jobs")
            return
        header = ["id", "name", "state", "gpus", "priority", "queue / ran", "owner"]
        rows = [
            [
                job["id"],
                job.get("name", "")[:40],
                job["state"],
                str(job.get("gpus", 0)),
                job.get("priority", ""),
                self.progress_words(job),
                job.get("owner", ""),
            ]
            for job in jobs
        ]
        html_rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
        )
        html_table = (
            "<table><thead><tr>"
            + "".join(f"<th>{title}</th>" for title in header)
            + f"</tr></thead><tbody>{html_rows}</tbody></table>"
        )
        display({"text/plain": _table(rows, header), "text/html": html_table}, raw=True)

    @staticmethod
    def progress_words(job: dict[str, Any]) -> str:
        if job["state"] == JobState.queued:
            return f"#{job['queue_position']}" if job.get("queue_position") is not None else "waiting"
        if job.get("started_at") and job.get("ended_at"):
            return elapsed_words(job["ended_at"] - job["started_at"])
        return ""

    @line_magic
    def job(self, line: str) -> None:
        """``%job logs ID [-f]``, ``%job cancel ID``, ``%job fetch ID``, ``%job status ID``."""
        parser = _ArgumentParser(
            prog="%job", description="One batch job: its logs, cancel, fetch its values."
        )
        parser.add_argument("action", choices=["logs", "cancel", "fetch", "status"])
        parser.add_argument("job_id")
        parser.add_argument(
            "-f", "--follow", action="store_true", help="logs: keep streaming until the job ends"
        )
        options = parser.parse_args(shlex.split(line))
        try:
            if options.action == "logs":
                self.show_logs(options.job_id, options.follow)
            elif options.action == "cancel":
                state = JobHandle(options.job_id, self.client).cancel()
                print(f"{options.job_id} {state}")
            elif options.action == "status":
                handle = JobHandle(options.job_id, self.client)
                print(handle.job()["state"])
            else:
                self.fetch_into_namespace(options.job_id)
        except (ServiceError, JobError) as refusal:
            self.refuse(refusal.describe() if isinstance(refusal, JobError) else str(refusal))

    def show_logs(self, job_id: str, follow: bool) -> None:
        offset = 0
        try:
            while True:
                chunk = self.client.logs(job_id, offset, follow=follow)
                if chunk["data"]:
                    print(chunk["data"], end="", flush=True)
                offset = chunk["next_offset"]
                if not chunk["data"] and (chunk["done"] or not follow):
                    return
        except KeyboardInterrupt:
            return

    def fetch_into_namespace(self, job_id: str) -> None:
        """Bring a job's values into the notebook, warning before replacing a name that exists."""
        try:
            values, summary = fetch_result(self.client, job_id)
        except JobError as failure:
            self.refuse(failure.describe())
            return
        namespace = self.shell.user_ns
        for name, value in values.items():
            if name in namespace and namespace[name] is not value:
                self.refuse(
                    f"warning: {name} already exists here ({type(namespace[name]).__name__}); "
                    f"replacing it with the value from job {job_id}"
                )
            namespace[name] = value
        fetched = (
            ", ".join(f"{name} ({type(value).__name__})" for name, value in values.items())
            or "nothing (the cell assigned no names; use --out to choose some)"
        )
        print(f"fetched from {job_id}: {fetched}", flush=True)
        for name, why in (summary.get("not_returned") or {}).items():
            self.refuse(f"{name} did not come back: {why}")
