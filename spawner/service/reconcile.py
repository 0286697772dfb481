"""Giving back the slices of notebook servers that are gone.

A server's lease is released by its spawner when it stops. But the hub can die between a server's
end and that release, or a server can be deleted while the hub is down, and a lease nobody
releases holds its GPU slice for ever. The service therefore compares, now and then, the live
interactive leases with the servers the hub knows, and releases the leases of servers the hub no
longer has. Spawners name a lease's holder ``"user/server"`` ("" is the default server); leases
held by anything else (batch jobs) are never touched here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

from tornado.ioloop import PeriodicCallback
from traitlets import Float
from traitlets.config import LoggingConfigurable

from spawner.core.units import Lease, WorkloadClass

from .allocator import Allocator
from .hub_users import HubUserDirectory


def server_of(lease: Lease) -> tuple[str, str] | None:
    """``(user, server name)`` of an interactive lease held by a notebook server, else None."""
    if lease.workload != WorkloadClass.interactive or "/" not in lease.holder:
        return None
    user, _, server = lease.holder.partition("/")
    return (user, server) if user == lease.user else None


def stale_leases(
    leases: Iterable[Lease],
    servers_of: Mapping[str, frozenset[str] | None],
    now: float,
    grace_seconds: float,
) -> list[Lease]:
    """Leases whose server the hub no longer has, granted more than ``grace_seconds`` ago.

    ``servers_of`` maps each user to the names of the servers the hub has for them (None: the
    user is gone); a user missing from it is unknown and keeps its leases. The grace period covers
    a lease taken by a spawner whose server the hub has not recorded yet.
    """
    stale = []
    for lease in leases:
        held_by = server_of(lease)
        if held_by is None or now - lease.created_at < grace_seconds:
            continue
        user, server = held_by
        if user not in servers_of:
            continue
        servers = servers_of[user]
        if servers is None or server not in servers:
            stale.append(lease)
    return stale


class LeaseReconciler(LoggingConfigurable):
    """Periodically releases the leases of notebook servers the hub no longer has."""

    interval_seconds = Float(
        60.0,
        help="How often (seconds) live leases are compared with the hub's servers; 0 turns it off.",
    ).tag(config=True)

    grace_seconds = Float(
        120.0,
        help="""
        Leases younger than this are never released, so that a server still being started (the
        spawner takes its lease before the hub records the server) keeps its slice.
        """,
    ).tag(config=True)

    async def reconcile_once(self, allocator: Allocator, users: HubUserDirectory) -> list[Lease]:
        """Release every stale lease now; returns what was released."""
        leases = await allocator.leases(None)
        holders = {held[0] for held in map(server_of, leases) if held is not None}
        names = sorted(holders)
        try:
            answers = await asyncio.gather(*(users.server_names(name) for name in names))
        except PermissionError as error:
            self.log.warning("not reconciling leases: %s", error)
            return []
        released = []
        for lease in stale_leases(
            leases, dict(zip(names, answers, strict=True)), time.time(), self.grace_seconds
        ):
            if await allocator.release(lease.id) is not None:
                self.log.info(
                    "released lease %s of %s: the hub no longer has server %r",
                    lease.id,
                    lease.user,
                    lease.holder,
                )
                released.append(lease)
        return released

    def start(self, allocator: Allocator, users: HubUserDirectory) -> PeriodicCallback | None:
        """Run now and then every ``interval_seconds``; failures are logged, never fatal."""
        if self.interval_seconds <= 0:
            return None

        async def tick() -> None:
            try:
                await self.reconcile_once(allocator, users)
            except Exception:
                self.log.exception("lease reconciliation failed; trying again in %ss", self.interval_seconds)

        callback = PeriodicCallback(tick, self.interval_seconds * 1000)
        callback.start()
        asyncio.get_running_loop().create_task(tick())
        return callback
