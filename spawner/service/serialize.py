"""How leases, requests and GPUs look in the REST API.

One place turns the shared units into JSON so that every endpoint (and the spawner reading them
back) sees the same field names.
"""

from __future__ import annotations

import json
from typing import Any

from spawner.core.units import GPU, MILLI_PER_GPU, Lease, SliceRequest
from spawner.ledger import GPUHolder
from spawner.ledger.jobs import JobRecord

from .queue_view import QueueSnapshot


def to_json(payload: Any) -> str:
    """The text of a JSON answer, never with ``NaN`` or ``Infinity``: they are not JSON, and a
    client's parser would refuse the whole answer.

    The API refuses non-finite numbers on the way in, so nothing stored since holds one; a value
    stored before it did (a job's time limit of ``inf``) is written as null.
    """
    try:
        return json.dumps(payload, allow_nan=False)
    except ValueError:
        finite = json.loads(json.dumps(payload), parse_constant=lambda _: None)
        return json.dumps(finite, allow_nan=False)


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
    out the provenance, which ``GET jobs/{id}`` has.

    ``queue`` is one pass's snapshot, read once per answer so that every job of a listing stands
    where that pass put it. ``queue_position`` counts among everyone's waiting jobs when
    ``everyone`` (an admin's view of the whole queue), else among the owner's own, so what a
    caller sees is numbered 0..n-1; ``jobs_ahead`` is always the whole queue's figure.
    """
    model = record.to_dict(include_provenance=not listing)
    place = queue.place(record.id, everyone) if record.state == "queued" else None
    model["queue_position"] = place.position if place else None
    model["jobs_ahead"] = place.jobs_ahead if place else None
    model["waiting_reason"] = place.reason if place else None
    model["queue_as_of"] = place.as_of if place else None
    return model
