"""The REST API of batch jobs: ``jobs``, ``jobs/{job_id}`` and its cancel, logs and results.

The same rules as for leases: users see and touch only their own jobs, admins and the service
itself see everyone's. Another user's job answers 404 exactly as an unknown id does, so that ids
say nothing about who owns what.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
from collections.abc import Iterator
from typing import Any

from spawner.core.vocabulary import CELL_PAYLOAD, STATES, TERMINAL_STATES, JobState
from spawner.ledger.jobs import JobRecord, JobStateError

from .. import job_files
from ..executor.kube import payload_token
from ..hub_users import UnknownUserError
from ..job_files import UntrustedFile
from ..job_request import JobBody, JobBodyError, parse_job_body, shown
from ..jobs import BatchRefused
from ..payload import PAYLOAD_FILE, job_key
from ..runs import run_id
from ..serialize import job_json, listed_jobs_json, result_json, to_json
from ..submissions import IDEMPOTENCY_HEADER, IdempotencyConflict, parse_idempotency_key
from .base import APIHandler, PublicHandler, api_error

DEFAULT_LIST_LIMIT = 500
"""How many of the newest jobs ``GET jobs`` returns unless ``limit`` says otherwise."""
MAX_LIST_LIMIT = 10000
MAX_LOG_OFFSET = 2**53 - 1
"""The largest byte offset ``GET jobs/{id}/logs`` takes (the largest integer JSON numbers hold)."""
TRUE_WORDS = ("1", "true", "yes")
FALSE_WORDS = ("0", "false", "no")
_DIGITS = re.compile("[0-9]{1,16}")
"""A whole number as query parameters write it: ASCII digits only (``str.isdigit`` takes ``²``)."""


@contextlib.contextmanager
def submission_errors() -> Iterator[None]:
    """The answers to a submission the service refuses, one way for ``POST jobs`` and
    ``POST jobs/batch``: a body or a limit that refuses it is a 400, a reused idempotency key a
    409, a token whose user the hub no longer has a 403. A refused batch passes through: its
    handler answers it with every job's error."""
    try:
        yield
    except BatchRefused:
        raise
    except JobBodyError as error:
        raise api_error(400, str(error)) from None
    except IdempotencyConflict as error:
        raise api_error(409, str(error)) from None
    except UnknownUserError as error:
        raise api_error(403, str(error)) from None


class JobsAPIHandler(APIHandler):
    async def readable_job(self, job_id: str, action: str) -> JobRecord:
        """The job, if the caller may ``action`` it; another user's job is as unknown as no job."""
        record = await self.jobs.get(job_id)
        if record is None or not self.requester.may_act_for(record.owner):
            raise api_error(404, f"no job {shown(job_id, 80)}; list yours with GET jobs")
        return record

    def flag_argument(self, name: str) -> bool:
        """A yes/no query parameter: 1, true or yes; 0, false or no (or left out); a 400 otherwise,
        so that a typo such as ``all=ture`` is not read as no."""
        value = self.get_argument(name, "0", strip=False)
        if value not in TRUE_WORDS + FALSE_WORDS:
            raise api_error(
                400,
                f"{name}: {shown(value)} is neither yes nor no; give one of {', '.join(TRUE_WORDS)} "
                f"or {', '.join(FALSE_WORDS)}",
            )
        return value in TRUE_WORDS

    def whole_number_argument(self, name: str, default: int, low: int, high: int, what: str) -> int:
        """A query parameter that is a whole number from ``low`` to ``high``; a 400 that says
        ``what`` it counts otherwise."""
        text = self.get_argument(name, str(default), strip=False)
        if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
            raise api_error(400, f"{name}: give {what} from {low} to {high}, not {shown(text)}")
        return int(text)

    async def cancel_job(self, job_id: str) -> None:
        record = await self.readable_job(job_id, "cancel")
        if record.state in TERMINAL_STATES and record.state != JobState.cancelled:
            raise api_error(409, f"job {job_id} has already {record.state}; there is nothing to cancel")
        try:
            record = await self.jobs.cancel(job_id, by=self.requester.name)
        except JobStateError as error:
            raise api_error(409, str(error)) from None
        self.reply(200, {"job": self.job_model(record)})

    def job_model(self, record: JobRecord) -> dict[str, Any]:
        """One job, placed in the queue as its caller sees it: an admin among everyone's jobs."""
        return job_json(record, self.jobs.queue, everyone=self.requester.sees_everyone)


class JobsHandler(JobsAPIHandler):
    async def get(self) -> None:
        user = self.get_argument("user", None)
        everyone = self.flag_argument("all")
        if everyone and not self.requester.sees_everyone:
            raise api_error(
                403, f"{self.requester.describe()} may not list every user's jobs; leave out all=1 for yours"
            )
        if user is not None:
            self.refuse_unless_for(user, "list the jobs")
        elif not everyone:
            user = self.requester.name
        states = self.get_arguments("state", strip=False) or None
        for state in states or ():
            if state not in STATES:
                raise api_error(400, f"state: no state {shown(state)}; give one of {', '.join(STATES)}")
        limit = self.whole_number_argument(
            "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT, "a whole number of jobs"
        )
        # The jobs as the ledger wrote them, no payloads and no records: a listing shows hundreds.
        listed = await self.jobs.listing(user, states, limit)
        queue = self.jobs.queue  # one pass's places for the whole listing
        jobs = listed_jobs_json(listed, queue, everyone=user is None)
        self.reply_json(200, b'{"jobs":' + jobs + b',"as_of":' + to_json(queue.as_of or None) + b"}")

    async def post(self) -> None:
        if self.requester.kind != "user":
            raise api_error(
                403, f"{self.requester.describe()} may not submit jobs; submit with a user's token"
            )
        with submission_errors():
            body = parse_job_body(
                self.json_body(),
                max_payload_bytes=self.jobs.max_payload_bytes,
                default_time_limit_s=self.jobs.default_time_limit_s(),
                max_cell_payload_bytes=self.jobs.max_cell_payload_bytes,
                max_time_limit_s=self.settings["max_time_limit_s"],
            )
            # Optional; the same key again answers the job it made (200), see ..submissions.
            key = parse_idempotency_key(self.request.headers.get(IDEMPOTENCY_HEADER))
            user = await self.allocator.users.get(self.requester.name)
            submission = await self.jobs.submit(user, body, idempotency_key=key)
        self.reply(201 if submission.created else 200, {"job": self.job_model(submission.record)})


class JobsBatchHandler(JobsAPIHandler):
    """``POST jobs/batch``: many jobs in one call, queued in one transaction, all or none.

    The body is ``{"jobs": [...]}``, each job as ``POST jobs`` takes it; the answer is 201 with
    ``{"jobs": [...]}`` in the batch's order (each as ``GET jobs`` lists it), or a 400 whose
    ``errors`` list every refused job by its index, and then nothing was queued. An
    Idempotency-Key covers the whole batch: the same batch again under the same key answers the
    same jobs (200), another batch under it is a 409.
    """

    async def post(self) -> None:
        if self.requester.kind != "user":
            raise api_error(
                403, f"{self.requester.describe()} may not submit jobs; submit with a user's token"
            )
        bodies = self.batch_bodies()
        try:
            with submission_errors():
                key = parse_idempotency_key(self.request.headers.get(IDEMPOTENCY_HEADER))
                user = await self.allocator.users.get(self.requester.name)
                batch = await self.jobs.submit_many(user, bodies, idempotency_key=key)
        except BatchRefused as refused:
            self.refuse_batch(refused)
            return
        queue = self.jobs.queue
        everyone = self.requester.sees_everyone
        created = any(submission.created for submission in batch.submissions)
        self.reply(
            201 if created else 200,
            {"jobs": [job_json(record, queue, listing=True, everyone=everyone) for record in batch.records]},
        )

    def batch_bodies(self) -> list[JobBody | JobBodyError]:
        """Every job of the body parsed as ``POST jobs`` parses one, or the error that says why it
        does not parse (``JobService.submit_many`` refuses it with the others); a 400 if the body
        is not a batch."""
        body = self.json_body()
        most = self.jobs.max_jobs_per_batch
        if not isinstance(body, dict) or set(body) != {"jobs"} or not isinstance(body["jobs"], list):
            raise api_error(
                400, f'body: give {{"jobs": [...]}}, a list of 1 to {most} jobs as POST jobs takes them'
            )
        jobs = body["jobs"]
        if not 1 <= len(jobs) <= most:
            raise api_error(
                400,
                f"jobs: {len(jobs)} jobs; a batch has 1 to {most} (JobService.max_jobs_per_batch):"
                " split it into several batches",
            )
        bodies: list[JobBody | JobBodyError] = []
        for job in jobs:
            try:
                bodies.append(
                    parse_job_body(
                        job,
                        max_payload_bytes=self.jobs.max_payload_bytes,
                        default_time_limit_s=self.jobs.default_time_limit_s(),
                        max_cell_payload_bytes=self.jobs.max_cell_payload_bytes,
                        max_time_limit_s=self.settings["max_time_limit_s"],
                    )
                )
            except JobBodyError as error:
                bodies.append(error)  # refused with the others the service finds
        return bodies

    def refuse_batch(self, refused: BatchRefused) -> None:
        """The 400 of a batch of which nothing was queued, with every refused job's index and why."""
        self.reply(
            400,
            {
                "status": 400,
                "message": str(refused),
                "errors": [{"index": index, "message": message} for index, message in refused.errors],
            },
        )


class JobHandler(JobsAPIHandler):
    async def get(self, job_id: str) -> None:
        record = await self.readable_job(job_id, "see")
        events = await self.jobs.events(job_id)
        self.reply(200, {"job": self.job_model(record), "events": [event.to_dict() for event in events]})

    async def delete(self, job_id: str) -> None:
        await self.cancel_job(job_id)


class JobCancelHandler(JobsAPIHandler):
    async def post(self, job_id: str) -> None:
        await self.cancel_job(job_id)


class JobLogsHandler(JobsAPIHandler):
    async def get(self, job_id: str) -> None:
        offset = self.whole_number_argument(
            "offset", 0, 0, MAX_LOG_OFFSET, "a byte offset (next_offset of the last answer)"
        )
        follow = self.flag_argument("follow")
        record = await self.readable_job(job_id, "read the logs of")
        self.reply(200, await self.jobs.read_log(record, offset, follow))


class JobResultHandler(JobsAPIHandler):
    """How a job ended and, for a cell job, what came back: the names of its values, or its exception."""

    async def get(self, job_id: str) -> None:
        record = await self.readable_job(job_id, "read the result of")
        summary = await self.jobs.result_summary(record) if record.payload_kind == CELL_PAYLOAD else None
        self.reply(200, result_json(record, summary))


class JobResultValuesHandler(JobsAPIHandler):
    """The pickled ``{name: value}`` of a cell job, as bytes the notebook unpickles (never the service).

    The file is in a folder the job's owner may write; what is there is handed out only if it is
    a regular file the job wrote, never through a link (see :mod:`..job_files`).
    """

    async def get(self, job_id: str) -> None:
        record = await self.readable_job(job_id, "read the result of")
        try:
            values = await self.jobs.result_values(record)
        except UntrustedFile as error:
            raise api_error(
                404,
                f"job {job_id} has no result values the service can hand out: {error}; run the cell again"
                " and leave its results directory to it",
            ) from None
        except FileNotFoundError:
            if record.state not in TERMINAL_STATES:
                why = f"it is still {record.state}; ask again when it has ended"
            elif record.payload_kind != CELL_PAYLOAD:
                why = "it is a script job; only %%submit cells return values"
            else:
                why = f"it {record.state} without returning values; see GET jobs/{job_id}/result and its logs"
            raise api_error(404, f"job {job_id} has no result values: {why}") from None
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f'attachment; filename="{job_id}-values.pickle"')
        self.finish(values)


class JobPayloadHandler(PublicHandler):
    """The signed payload of a cell job, for its runner in a Kubernetes Job's pod (see
    ``KubeJobExecutor.payload_service_url``).

    Authenticated by the token of the job's current run alone (``Authorization: token <run token>``,
    :func:`..executor.kube.payload_token`), never by a hub token: the pod holds no hub credential,
    and its token opens this one payload while that run is starting or running, nothing else. Any
    other token, job or moment gets the same 403, so the endpoint tells nobody which jobs exist.
    """

    async def get(self, job_id: str) -> None:
        jobs = self.settings["jobs"]
        presented = self.request.headers.get("Authorization", "").partition(" ")[2].strip()
        record = await jobs.get(job_id)
        if not presented or record is None or not await self._opens(jobs, record, presented):
            raise api_error(
                403,
                f"this token opens no payload of job {job_id}: the payload is fetched with the token "
                "of the job's current run (GPUSLICE_PAYLOAD_TOKEN in its pod), never a hub token",
            )
        uid = jobs.executor.job_uid(record.owner)
        directory_owners = {os.geteuid()} | ({uid} if uid is not None else set())
        payload = await jobs.call(
            job_files.read_file,
            jobs.job_files_dir(record.id),
            (PAYLOAD_FILE,),
            owners={os.geteuid()},
            directory_owners=directory_owners,
        )
        self.set_header("Content-Type", "application/json")
        self.finish(payload)

    @staticmethod
    async def _opens(jobs: Any, record: JobRecord, presented: str) -> bool:
        """Whether ``presented`` is the token of the run the job is in (running) or starting
        (queued, its next run being launched), for a cell job."""
        if record.payload_kind != CELL_PAYLOAD or record.state not in (JobState.queued, JobState.running):
            return False
        key = job_key(await jobs.call(jobs.master_key), record.id)
        run = run_id(record) if record.state == JobState.running else run_id(record, record.attempts + 1)
        return hmac.compare_digest(presented, payload_token(key, run or ""))


default_handlers = [
    ("jobs", JobsHandler),
    ("jobs/batch", JobsBatchHandler),
    ("jobs/{job_id}", JobHandler),
    ("jobs/{job_id}/cancel", JobCancelHandler),
    ("jobs/{job_id}/logs", JobLogsHandler),
    ("jobs/{job_id}/result", JobResultHandler),
    ("jobs/{job_id}/result/values", JobResultValuesHandler),
    ("jobs/{job_id}/payload", JobPayloadHandler),
]
