"""How leases, requests, GPUs, jobs, results and quotas look in the REST API and on the pages.

One place turns the shared units into JSON so that every endpoint (and the spawner reading them
back) sees the same field names; the admin page's views of holders and groups are built here too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

from spawner.config.profiles import Profile
from spawner.core.quota import HolderUsage, Limits, Refusal
from spawner.core.units import GPU, MILLI_PER_GPU, Lease, SliceRequest
from spawner.core.vocabulary import TERMINAL_STATES, JobState, holder_expiry
from spawner.ledger import GPUHolder
from spawner.ledger.jobs import JobRecord, ListedJob

from .queue_view import NOT_WAITING, QueueSnapshot


def to_json(payload: Any) -> bytes:
    """The body of a JSON answer, never with ``NaN`` or ``Infinity``: they are not JSON, and a
    client's parser would refuse the whole answer.

    The API refuses non-finite numbers on the way in, so nothing stored since holds one; a value
    stored before it did (a job's time limit of ``inf``) is written as null, which is what
    ``orjson`` does with them. ``orjson`` because a listing of hundreds of jobs is the service's
    largest answer, and encoding it with the standard library took a third of the event loop's
    time under load (``benchmarks/load.py``). What ``orjson`` cannot write (an integer past 64
    bits, which a job's free-form provenance may hold) is written by the standard library.
    """
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        try:
            return json.dumps(payload, allow_nan=False).encode()
        except ValueError:
            finite = json.loads(json.dumps(payload), parse_constant=lambda _: None)
            return json.dumps(finite, allow_nan=False).encode()


def request_json(request: SliceRequest) -> dict[str, Any]:
    return {
        "milli_gpu": request.milli_gpu,
        "gpus": request.gpus,
        "gpu_memory_mib": request.gpu_memory_mib,
        "cpu_milli": request.cpu_milli,
        "memory_mib": request.memory_mib,
        "gpu_models": sorted(request.gpu_models),
        "pool": request.pool,
        "description": request.describe(),
    }


def lease_json(lease: Lease, released_at: float | None = None) -> dict[str, Any]:
    """A lease as the API returns it; ``released_at`` is null while the lease is live."""
    return {
        "id": lease.id,
        "holder": lease.holder,
        "user": lease.user,
        "group": lease.group,
        "workload": lease.workload.value,
        "request": request_json(lease.request),
        "node": lease.placement.node,
        "shares": [
            {"gpu_uuid": share.gpu_uuid, "milli_gpu": share.milli_gpu, "memory_mib": share.memory_mib}
            for share in lease.placement.shares
        ],
        "cpu_milli": lease.placement.cpu_milli,
        "memory_mib": lease.placement.memory_mib,
        "created_at": lease.created_at,
        "released_at": released_at,
        "preemptible": lease.preemptible,
    }


def lease_model(lease: Lease, released_at: float | None = None) -> dict[str, Any]:
    """A lease as the lease endpoints return it: with ``expires_at``, the expiry its holder carries
    (null for a lease that lasts as long as its server or job)."""
    return {**lease_json(lease, released_at), "expires_at": holder_expiry(lease.holder)}


def gpu_json(gpu: GPU, holders: list[GPUHolder], *, show_holders: bool) -> dict[str, Any]:
    """A GPU with what is free on it; who holds it only for admins and the service itself."""
    model: dict[str, Any] = {
        "uuid": gpu.uuid,
        "node": gpu.node,
        "index": gpu.index,
        "model": gpu.model,
        "label": gpu.label,
        "memory_mib": gpu.memory_mib,
        "pools": sorted(gpu.pools),
        "simulated": gpu.simulated,
        "milli_free": max(0, MILLI_PER_GPU - sum(holder.milli_gpu for holder in holders)),
    }
    if show_holders:
        model["holders"] = [
            {"lease_id": h.lease_id, "holder": h.holder, "user": h.user, "milli_gpu": h.milli_gpu}
            for h in holders
        ]
    return model


def job_json(
    record: JobRecord, queue: QueueSnapshot, *, listing: bool = False, everyone: bool = False
) -> dict[str, Any]:
    """A job as the API returns it, with its place in the queue while it waits; a listing leaves
    out the provenance, which ``GET jobs/{id}`` has (``GET jobs`` itself writes its jobs with
    :func:`listed_jobs_json`, which must say the same).

    ``queue`` is one pass's snapshot, read once per answer so that every job of a listing stands
    where that pass put it. ``queue_position`` counts among everyone's waiting jobs when
    ``everyone`` (an admin's view of the whole queue), else among the owner's own, so what a
    caller sees is numbered 0..n-1; ``jobs_ahead`` is always the whole queue's figure.
    """
    model = record.to_dict(include_provenance=not listing)
    waiting = model["state"] == JobState.queued
    model.update(queue.json_fields(model["id"], everyone) if waiting else NOT_WAITING)
    return model


def listed_jobs_json(listed: Sequence[ListedJob], queue: QueueSnapshot, *, everyone: bool = False) -> bytes:
    """The jobs of a listing as a JSON array, each as :func:`job_json` writes it with
    ``listing=True``: the object the ledger wrote, completed with its queue fields. The listing is
    the service's largest answer, and its jobs are never made into Python objects: each is the
    ledger's text with the snapshot's text of its queue fields put in, written once per pass and
    job (:meth:`~.queue_view.QueueSnapshot.listed_objects`) however many listings show it."""
    queued = JobState.queued.value
    completed = queue.listed_objects(everyone)
    objects = []
    append = objects.append
    for job in listed:
        known = completed.get(job.id)
        if known is not None and known[0] == job.json_object:
            append(known[1])
        else:
            append(queue.complete(job.id, job.state == queued, job.json_object, everyone))
    return ("[" + ",".join(objects) + "]").encode()


def result_json(record: JobRecord, summary: dict[str, Any] | None) -> dict[str, Any]:
    """How a job ended and, for a cell job, what came back (``summary``, the runner's JSON; None
    for a script job or a cell that wrote none): the names of its values, or its exception."""
    summary = summary or {}
    values_available = bool(summary.get("values_available"))
    return {
        "id": record.id,
        "kind": record.payload_kind,
        "state": record.state,
        "done": record.state in TERMINAL_STATES,
        "exit_code": record.exit_code,
        "reason": record.reason,
        "values_available": values_available,
        "values": list(summary.get("values", [])) if values_available else [],
        "not_returned": dict(summary.get("not_returned", {})),
        "error": summary.get("error"),
    }


def holder_json(name: str, held: HolderUsage, limits: Limits) -> dict[str, Any]:
    """A user's or group's interactive holdings beside their limits (the spawn page and admin page)."""
    return {
        "name": name,
        "servers": held.servers,
        "max_servers": limits.interactive.max_servers,
        "milli_gpu": held.interactive_milli,
        "max_milli_gpu": limits.interactive.max_milli_gpu,
    }


def profile_json(
    profile: Profile,
    count: int,
    reason: str | None,
    refusal: Refusal | None,
    quota_json: dict[str, Any],
    simulated: bool,
) -> dict[str, Any]:
    """A profile in ``GET availability``: whether it can be granted now, how often, and why not."""
    return {
        "slug": profile.slug,
        "display_name": profile.display_name,
        "description": profile.description,
        "summary": profile.describe(),
        "milli_gpu": profile.milli_gpu,
        "gpus": profile.gpus,
        "available": reason is None,
        "free_slices": count,
        "simulated": simulated,  # every GPU this profile can land on is a simulated demo GPU
        "reason": reason,
        "refusal": refusal.to_dict() if refusal else None,
        "quota": quota_json,
    }


def group_view(name: str, held: HolderUsage, limits: Limits) -> dict[str, Any]:
    """A group's holdings beside its limits, as the admin page's quota table shows them: the
    interactive figures the spawn page shows too, and the batch ones."""
    return {
        **holder_json(name, held, limits),
        "batch_jobs": held.batch_jobs,
        "max_running_jobs": limits.batch.max_running_jobs,
        "batch_gpus": held.batch_gpus,
        "guaranteed_gpus": limits.batch.guaranteed_gpus,
        "max_batch_gpus": limits.batch.max_gpus,
        "borrowing_limit_gpus": limits.batch.borrowing_limit_gpus,
        "gpu_hours_week": held.batch_gpu_hours_week,
        "max_gpu_hours_week": limits.batch.max_gpu_hours_week,
    }


def holder_view(holder: dict[str, Any], jobs_by_lease: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One lease's share of a GPU on the admin page, saying whether a batch job or a notebook
    server holds it."""
    job = jobs_by_lease.get(holder["lease_id"])
    return {
        **holder,
        "kind": "job" if job else "server",
        "job_id": job["id"] if job else None,
        "job_name": job["name"] if job else None,
    }
