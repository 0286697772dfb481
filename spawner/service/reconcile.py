"""Giving back the slices of notebook servers that are gone, and leases that expired.

A server's lease is released by its spawner when it stops. But the hub can die between a server's
end and that release, or a server can be deleted while the hub is down, and a lease nobody
releases holds its GPU slice for ever. The service therefore compares, now and then, the live
interactive leases with the servers the hub knows, and releases the leases of servers the hub no
longer has. Spawners name a lease's holder ``"user/server"`` ("" is the default server).

A lease held by anything else has an expiry (:mod:`spawner.core.vocabulary` says how holders are written,
and the API refuses any other lease), and is released once that has passed, whether or not the hub
is reachable. Leases of batch jobs are never touched here: the scheduler gives them back. An
interactive lease with neither (granted before expiries existed) is logged once, for an admin to
release.

With the inventory read from a Kubernetes cluster (``Inventory.source = "kubernetes"``),
:class:`NodeLossReconciler` keeps the ledger's inventory the cluster's, and when a node is deleted
fails the batch jobs that ran there and frees every lease on it, batch or interactive: nothing runs
on a deleted node, so waiting for each holder to notice would only keep its GPUs counted as taken.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from tornado.ioloop import PeriodicCallback
from traitlets import Float
from traitlets.config import LoggingConfigurable

from spawner.core.units import Lease, WorkloadClass
from spawner.core.vocabulary import JobState, holder_expiry, server_of_holder

from .allocator import Allocator
from .hub_users import HubUserDirectory

if TYPE_CHECKING:
    from spawner.inventory.kube import ClusterNodes

    from .jobs import JobService


def server_of(lease: Lease) -> tuple[str, str] | None:
    """``(user, server name)`` of an interactive lease held by a notebook server, else None."""
    if lease.workload != WorkloadClass.interactive:
        return None
    server = server_of_holder(lease.holder, lease.user)
    return None if server is None else (lease.user, server)


def expired_leases(leases: Iterable[Lease], now: float) -> list[Lease]:
    """Interactive leases whose holder carries an expiry that has passed by ``now``."""
    return [
        lease
        for lease in leases
        if lease.workload == WorkloadClass.interactive
        and (expiry := holder_expiry(lease.holder)) is not None
        and expiry <= now
    ]


def unchecked_leases(leases: Iterable[Lease]) -> list[Lease]:
    """Interactive leases nothing here would ever release: neither a server's nor expiring."""
    return [
        lease
        for lease in leases
        if lease.workload == WorkloadClass.interactive
        and server_of(lease) is None
        and holder_expiry(lease.holder) is None
    ]


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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._reported: set[str] = set()  # ids of unchecked leases already logged

    async def reconcile_once(self, allocator: Allocator, users: HubUserDirectory) -> list[Lease]:
        """Release every expired and every stale lease now; returns what was released."""
        leases = await allocator.leases(None)
        released = []
        for lease in expired_leases(leases, time.time()):
            if await allocator.release(lease.id) is not None:
                self.log.info(
                    "released lease %s of %s: it expired (holder %r)", lease.id, lease.user, lease.holder
                )
                released.append(lease)
        self._report_unchecked(leases)
        gone = {lease.id for lease in released}
        leases = [lease for lease in leases if lease.id not in gone]
        holders = {held[0] for held in map(server_of, leases) if held is not None}
        names = sorted(holders)
        try:
            answers = await asyncio.gather(*(users.server_names(name) for name in names))
        except PermissionError as error:
            self.log.warning("not reconciling leases: %s", error)
            return released
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

    def _report_unchecked(self, leases: Iterable[Lease]) -> None:
        for lease in unchecked_leases(leases):
            if lease.id not in self._reported:
                self._reported.add(lease.id)
                self.log.warning(
                    "lease %s of %s is held by %r, which is neither a server of %s nor expiring, so "
                    "nothing will release it; an admin can, with DELETE leases/%s",
                    lease.id,
                    lease.user,
                    lease.holder,
                    lease.user,
                    lease.id,
                )

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


def node_gone_reason(node: str) -> str:
    """Why a job on a deleted node failed, as its events and the log say it."""
    return f"node {node} was deleted from the cluster while the job ran there"


class NodeLossReconciler(LoggingConfigurable):
    """Follows the cluster's nodes (Inventory source "kubernetes") into the ledger: new and changed
    nodes join the inventory, cordoned ones leave it (their leases stay, what runs there goes on),
    and a deleted node's batch jobs fail and every lease on it is freed."""

    retry_seconds = Float(
        5.0,
        help="""
        How long (seconds) to wait before following the nodes again when the watch failed (the API
        server restarting, say); the list that starts it again catches up on what was missed.
        """,
    ).tag(config=True)

    def start(self, cluster: ClusterNodes, allocator: Allocator, jobs: JobService) -> asyncio.Task:
        """Follow ``cluster`` until the task is cancelled; failures are logged, never fatal."""

        async def changed() -> None:
            await self.sync(cluster, allocator)

        async def gone(name: str) -> None:
            await self.node_gone(name, cluster, allocator, jobs)

        cluster.on_change, cluster.on_node_gone = changed, gone
        return asyncio.get_running_loop().create_task(self._follow(cluster))

    async def _follow(self, cluster: ClusterNodes) -> None:
        while True:
            try:
                await cluster.watch()
            except Exception:
                self.log.exception("following the cluster's nodes failed; again in %ss", self.retry_seconds)
            await asyncio.sleep(self.retry_seconds)

    async def sync(self, cluster: ClusterNodes, allocator: Allocator) -> None:
        """Make the ledger's inventory the cluster's GPU nodes as they are now."""
        synced = await asyncio.to_thread(allocator.ledger.sync_inventory, list(cluster.nodes.values()))
        if synced.added or synced.removed:
            self.log.info(
                "inventory from the cluster: %d GPUs added, %d gone", len(synced.added), len(synced.removed)
            )

    async def node_gone(
        self, node: str, cluster: ClusterNodes, allocator: Allocator, jobs: JobService
    ) -> list[Lease]:
        """Fail the running batch jobs on the deleted ``node`` and free every lease on it; returns
        the leases freed. The node leaves the ledger's inventory first, so nothing is placed there
        meanwhile; the job service's lock keeps a scheduling pass from starting a job on it."""
        await self.sync(cluster, allocator)
        reason = node_gone_reason(node)
        freed = []
        async with jobs.lock:
            for record in await jobs.running():
                if record.node == node:
                    await jobs.finish(record, JobState.failed, reason, exit_code=None)
            for lease in await allocator.leases(None):
                if lease.placement.node == node and await allocator.release(lease.id) is not None:
                    freed.append(lease)
        for lease in freed:
            self.log.warning(
                "released lease %s of %s (holder %r): node %s was deleted from the cluster",
                lease.id,
                lease.user,
                lease.holder,
                node,
            )
        return freed
