"""Submitting a job once, and within the owner's limits: the idempotency key and the refusals.

``POST jobs`` takes an optional ``Idempotency-Key`` header (the name of the IETF draft that Stripe
and others follow). A client that sent a submission and lost the answer (the proxy's 503 while
the service restarted, a timeout) sends it again under the same key: if the first one was
stored, the answer is that job (200 instead of 201) and nothing is queued twice. The key is the
client's, unique per user; the ledger keeps it with a digest of what it named
(:class:`~spawner.ledger.models.JobSubmissionRow`), so the same key with another body is a 409
rather than the wrong job. The digest is of the request as parsed (``"1h"`` and ``3600`` are the
same time limit), not of its bytes.

The limits (``JobService.max_queued_jobs_per_user``, ``JobService.max_payload_bytes_per_user``)
are counted and checked in the same ledger transaction that queues the job
(:meth:`~spawner.ledger.jobs.JobStore.submit_checked`), so concurrent submissions cannot pass them
together. A refusal says the limit, what the user has now, and what to do.
"""

from __future__ import annotations

import hashlib
import json
import re

from spawner.core.units import describe_size
from spawner.ledger.jobs import SubmissionRefusal

from .job_request import JobBody, JobBodyError

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
"""1 to 255 visible ASCII characters: a UUID, as the magic and the CLI send, fits many times."""


class IdempotencyConflict(Exception):
    """The key was used before for a different submission; the message says so (HTTP 409)."""


class SubmissionRefused(JobBodyError):
    """A limit of the user's refused the job; the message names it, the usage, and what to do (400)."""


def parse_idempotency_key(value: str | None) -> str | None:
    """The header's key, None without one; :class:`JobBodyError` for one that is not a key."""
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(value):
        if not value:
            problem = "an empty one"
        elif len(value) > 255:
            problem = f"{len(value)} characters"
        else:
            problem = "one with spaces, control or non-ASCII characters"
        raise JobBodyError(
            f"{IDEMPOTENCY_HEADER}: give 1 to 255 visible ASCII characters (a fresh UUID per submission,"
            f" the same one when you retry it), not {problem}"
        )
    return value


def payload_size(body: JobBody) -> int:
    """What a job's payload counts against its owner's limit: a script's UTF-8 bytes, a cell's
    decoded bytes (the sizes ``max_payload_bytes`` and ``max_cell_payload_bytes`` bound)."""
    return len(body.script.encode("utf-8", "surrogatepass")) if body.cell is None else len(body.cell.payload)


def body_digest(body: JobBody) -> str:
    """A SHA-256 of what ``body`` asks for, as parsed: equal for a retry of the same submission.

    Blocking for a large cell (it reads every byte): call it in a thread.
    """
    document = {
        "name": body.name,
        "script": body.script,
        "workdir": body.workdir,
        "gpus": body.gpus,
        "gpu_models": sorted(body.gpu_models),
        "priority": body.priority,
        "time_limit_s": body.time_limit_s,
        "environment": body.environment,
        "provenance": body.provenance,
        "cell_python": body.cell.python if body.cell is not None else None,
    }
    try:
        text = json.dumps(document, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=repr)
    except RecursionError:
        raise JobBodyError("body: nested too deeply to be compared with an earlier submission") from None
    digest = hashlib.sha256(text.encode("ascii"))
    digest.update(b"\0")
    digest.update(body.cell.payload if body.cell is not None else b"")
    return digest.hexdigest()


def conflict_message(key: str, refusal: SubmissionRefusal) -> str:
    return (
        f"{IDEMPOTENCY_HEADER} {key!r} was used before for a different submission (job {refusal.job_id});"
        " a retry must send the same body under the same key, and a new submission needs a new key"
    )


def limit_message(user: str, refusal: SubmissionRefusal, size: int) -> str:
    """The 400's sentence for a submission a limit refused: the limit, the usage, what to do."""
    if refusal.rule == "max_queued_jobs":
        return (
            f"user {user} has {refusal.usage} jobs queued, and the limit is {refusal.limit} queued jobs per"
            " user (JobService.max_queued_jobs_per_user); wait for some of them to start, or cancel those"
            " you no longer need (they are listed by GET jobs?state=queued), then submit again"
        )
    return (
        f"the unfinished jobs of user {user} hold {describe_size(refusal.usage)} of scripts and cells, and"
        f" this one adds {describe_size(size)}: the limit is {describe_size(refusal.limit)} per user"
        " (JobService.max_payload_bytes_per_user); wait for some of them to end or cancel those you no"
        " longer need, and keep large data out of cells: save it to a file the job reads"
    )
