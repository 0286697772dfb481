"""``leases`` and ``leases/{lease_id}``: interactive grants, under rules on who may ask how.

Granting, and taking dev GPUs back from batch jobs when a slice finds no room, are the
allocator's; these handlers check who asks and render its answers.
"""

from __future__ import annotations

from spawner.core.units import Lease, WorkloadClass
from spawner.core.vocabulary import holder_expiry, server_of_holder
from spawner.ledger import LeaseConflictError, LeaseRecord, LedgerBusyError

from ..hub_users import UnknownUserError
from ..lease_request import LeaseBody, LeaseBodyError, parse_lease_body
from ..serialize import lease_model
from .base import APIHandler, api_error


class LeasesHandler(APIHandler):
    """``GET leases``, and ``POST leases``: a grant, under rules on who may ask how.

    The service itself (the spawner) and admins may ask for any user, by profile or by a raw slice
    ``request``, for a server of that user or for any holder with an ``expires_at``. A user asks
    for themselves only, by ``profile`` only (so every rule of the profile applies: its groups, its
    pool, its size), and for one of their own servers only. Whoever asks, a lease has a holder the
    reconciler checks or an expiry (``Allocator.allocate`` refuses any other with a 400).
    """

    async def get(self) -> None:
        user = self.get_argument("user", None)
        if not self.requester.sees_everyone:
            if user is not None:
                self.refuse_unless_for(user, "list the leases")
            user = self.requester.name
        leases = await self.allocator.leases(user)
        self.reply(200, {"leases": [lease_model(lease) for lease in leases]})

    def refuse_unless_may_ask(self, body: LeaseBody) -> None:
        """The 403 for a user asking as only admins and the service may (see the class)."""
        self.refuse_unless_for(body.user, "create leases on behalf")
        if self.requester.sees_everyone:
            return
        if body.profile_slug is None:
            raise api_error(
                403,
                f"{self.requester.describe()} may not ask for a raw slice 'request'; ask by 'profile' "
                "(one of those GET availability lists, as the hub's spawn page does), so that the "
                "profile's groups, pool and size apply; raw requests are for admins and the service",
            )
        if body.server is None:
            raise api_error(
                403,
                f"{self.requester.describe()} may hold leases only for their own servers: give the "
                f"holder '{body.user}/' (the default server) or '{body.user}/<server name>'",
            )

    async def post(self) -> None:
        body = self.json_body()
        try:
            lease_body = parse_lease_body(body, self.allocator.profiles)
        except LeaseBodyError as error:
            raise api_error(400, str(error)) from None
        self.refuse_unless_may_ask(lease_body)
        try:
            grant = await self.allocator.allocate(lease_body)
        except LeaseBodyError as error:
            raise api_error(400, str(error)) from None
        except UnknownUserError as error:
            raise api_error(400, f"user: {error}; give the name of a hub user") from None
        except LeaseConflictError as error:
            raise api_error(409, await self.conflict_message(lease_body.lease_id, error)) from None
        except LedgerBusyError as error:
            raise api_error(503, str(error)) from None
        result = grant.result
        if result.refusal is not None:
            self.reply(
                409,
                {
                    "status": 409,
                    "message": result.refusal.message,
                    "reason": "quota",
                    "refusal": result.refusal.to_dict(),
                },
            )
        elif grant.reclaiming is not None:
            # Batch jobs were borrowing the dev GPUs this slice needs: they give them back (stop
            # signal, grace period, requeue) while the caller waits and asks again.
            self.set_header("Retry-After", str(grant.reclaiming.retry_after_s))
            self.reply(409, grant.reclaiming.to_dict())
        elif result.no_capacity is not None:
            self.reply(409, {"status": 409, "message": result.no_capacity, "reason": "no_capacity"})
        else:
            self.reply(200 if result.existing else 201, {"lease": lease_model(result.lease)})

    async def conflict_message(self, lease_id: str, error: LeaseConflictError) -> str:
        """The ledger's sentence on a reused lease id, which says what the lease was granted for;
        only its user (and those who see everyone) read that. To anyone else the id is just taken."""
        record = await self.allocator.record(lease_id)
        if record is None or self.requester.may_act_for(record.lease.user):
            return str(error)
        return f"the lease id {lease_id!r} is taken; a lease id names one grant, so ask under a new lease id"


class LeaseHandler(APIHandler):
    """``GET`` and ``DELETE leases/{lease_id}``: a lease belongs to what holds it.

    A lease of another user answers 404 exactly as an unknown id does. A batch job's lease belongs
    to the service: nobody releases it here (409; cancel the job, which gives it back). A server's
    lease, or one with an expiry, is released by the service itself (the spawner, when the server
    stops) or an admin; its user gets 403 (stop the server from the hub), since from inside the
    server its own token could otherwise free a GPU the server keeps using.
    """

    async def _readable(self, lease_id: str) -> LeaseRecord:
        record = await self.allocator.record(lease_id)
        if record is None or not self.requester.may_act_for(record.lease.user):
            raise api_error(404, f"no lease {lease_id!r}")
        return record

    async def get(self, lease_id: str) -> None:
        record = await self._readable(lease_id)
        self.reply(200, {"lease": lease_model(record.lease, record.released_at)})

    def refuse_unless_may_release(self, lease: Lease) -> None:
        if lease.workload is WorkloadClass.batch:
            job_id = lease.holder  # the scheduler grants a job's lease to the job's id
            raise api_error(
                409,
                f"lease {lease.id} is held by job {job_id}, and the service gives it back when the job "
                f"ends; to free its GPUs, cancel the job instead: DELETE jobs/{job_id} "
                f"(or gpuslice jobs cancel {job_id})",
            )
        if self.requester.sees_everyone:
            return
        server = server_of_holder(lease.holder, lease.user)
        if server is None:
            expiry = holder_expiry(lease.holder)
            when = "by an admin" if expiry is None else "when it expires, or by an admin"
            raise api_error(
                403,
                f"lease {lease.id} is held by {lease.holder!r}, not by a server; it is released {when}, "
                f"and {self.requester.describe()} may not release it",
            )
        hub_api = f"/hub/api/users/{lease.user}/" + (f"servers/{server}" if server else "server")
        raise api_error(
            403,
            f"lease {lease.id} is held by the server {lease.holder!r} and is given back when that server "
            f"stops; {self.requester.describe()} may not release it while the server may still use its "
            f"GPU slice. To free it, stop the server from the hub instead (the hub's home page, or "
            f"DELETE {hub_api} with a hub token)",
        )

    async def delete(self, lease_id: str) -> None:
        record = await self._readable(lease_id)
        self.refuse_unless_may_release(record.lease)
        try:
            await self.allocator.release(lease_id)
        except LedgerBusyError as error:
            raise api_error(503, str(error)) from None
        record = await self.allocator.record(lease_id)
        self.reply(200, {"lease": lease_model(record.lease, record.released_at)})


default_handlers = [
    ("leases", LeasesHandler),
    ("leases/{lease_id}", LeaseHandler),
]
