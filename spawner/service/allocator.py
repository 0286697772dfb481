"""The allocator: the service's one owner of every grant, with every blocking call in a thread.

Interactive slices (``POST leases``) and batch jobs' leases (the scheduler's starts) are granted
here and nowhere else; only the allocator and the job store touch the ledger. It decides which
group a lease is charged to, which profiles a user may see and what is still free, and it runs
each ledger call through ``asyncio.to_thread`` so that the service's event loop keeps answering
while SQLite waits.

It also lends idle dev GPUs to batch work and takes them back: when a slice finds no room,
:meth:`Allocator.allocate` asks ``core.scheduler.reclaim_for_interactive`` which borrowing jobs
must go, has the batch side (:class:`Borrowers`) preempt them, and holds their GPUs for that
slice (out of the pools batch work may use, :meth:`Allocator.nodes_for_batch`) until the
spawner's retry takes them or the hold expires.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from spawner.config.profiles import ProfileSet
from spawner.core import quota, scheduler
from spawner.core.holds import InteractiveHolds, nodes_without
from spawner.core.quota import QuotaPolicy
from spawner.core.scheduler import BatchJob, RunningJob
from spawner.core.units import Lease, Node, Placement, SliceRequest, WorkloadClass, gpus_by_uuid
from spawner.ledger import AllocationResult, LeaseRecord, Ledger

from .capacity import cluster_with, free_slices
from .hub_users import HubUser, HubUserDirectory
from .lease_request import LeaseBody, LeaseBodyError
from .serialize import gpu_json, group_view, holder_json, profile_json


class Borrowers(Protocol):
    """What the allocator needs of the batch side to take lent dev GPUs back (the scheduler)."""

    interactive_hold_seconds: float
    """How long reclaimed GPUs stay held for their slice once their borrowers are gone."""

    @property
    def lock(self) -> asyncio.Lock:
        """Held by every change of a job's state, so that a reclaim never races a pass."""

    async def batch_holdings(self, leases_by_id: dict[str, Lease]) -> tuple[list[RunningJob], set[str]]:
        """The jobs holding GPUs, in the scheduler's view (their leases taken out of
        ``leases_by_id``), and the ids of those already stopping."""

    async def preempt(self, job_id: str, reason: str) -> None:
        """Send a borrowing job its stop signal; it gives its GPUs back once its process is gone."""

    def seconds_left(self, job_ids: Iterable[str]) -> float:
        """How long the slowest of these stopping jobs may still take to give its GPUs back."""


@dataclass(frozen=True)
class Reclaiming:
    """What ``POST leases`` answers while batch jobs give back the dev GPUs a slice needs."""

    jobs: int
    gpus: list[str]
    retry_after_s: int
    ready_within_s: float

    def message(self) -> str:
        jobs = f"{self.jobs} batch job{'s' if self.jobs != 1 else ''}"
        gpus = f"dev GPU{'s' if len(self.gpus) != 1 else ''} {', '.join(self.gpus)}"
        return (
            f"stopping {jobs} that borrowed the {gpus} (a stop signal to checkpoint, then the end); "
            f"the slice is ready within ~{max(1, math.ceil(self.ready_within_s))} s: ask again then"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "status": 409,
            "reason": "reclaiming",
            "message": self.message(),
            "retry_after": self.retry_after_s,
            "stopping_jobs": self.jobs,
            "gpus": self.gpus,
        }


@dataclass(frozen=True)
class Grant:
    """What a lease request came to: the ledger's answer, the group it was charged to, and, when
    it found no room, the batch jobs stopping to make it (None if stopping them would not)."""

    result: AllocationResult
    group: str | None
    reclaiming: Reclaiming | None = None


class Allocator:
    """Grants and views over one ledger, one profile set and the hub's users."""

    def __init__(
        self,
        ledger: Ledger,
        profiles: ProfileSet,
        users: HubUserDirectory,
        policy_name: str,
        reserve_cpu_and_memory: bool = False,
    ):
        self.ledger = ledger
        self.profiles = profiles
        self.users = users
        self.policy_name = policy_name
        self.reserve_cpu_and_memory = reserve_cpu_and_memory
        self.borrowers: Borrowers | None = None
        """The batch side idle dev GPUs are lent to (see :meth:`lend_dev_gpus_to`); without it
        a slice that finds no room is refused at once."""
        self.holds = InteractiveHolds()
        """Dev GPUs reclaimed for an interactive slice, by the lease id the slice is asked under
        (on ``time.monotonic()``'s clock)."""

    def lend_dev_gpus_to(self, borrowers: Borrowers) -> None:
        """Lend idle dev GPUs to ``borrowers`` (the batch scheduler), which give them back when a
        slice needs them. The scheduler is built on the allocator, so the service wires this
        once, after building both."""
        self.borrowers = borrowers

    @property
    def quotas(self) -> QuotaPolicy:
        return self.profiles.quotas

    def placed(self, slice_request: SliceRequest) -> SliceRequest:
        """The request as the allocator places it: without host CPU and memory unless they are
        really reserved, since local processes share the host's CPUs and memory with no guarantee
        and counting them would refuse GPU slices for CPUs nobody holds."""
        if self.reserve_cpu_and_memory:
            return slice_request
        return replace(slice_request, cpu_milli=0, memory_mib=0)

    def charged_group(self, user: HubUser, asked: str | None) -> str | None:
        """The group a lease of ``user`` is charged to: the one asked for, if the user is in it."""
        if asked is None:
            return quota.charge_group(user.groups, self.quotas)
        if asked not in user.groups:
            groups = ", ".join(sorted(user.groups)) or "no group"
            raise LeaseBodyError(
                f"group: user {user.name} is not in group {asked!r} (member of: {groups}); "
                "leave 'group' out to charge the user's quota group"
            )
        return asked

    # ------------------------------------------------------------------------------ grants

    async def allocate(self, body: LeaseBody) -> Grant:
        """Grant ``body`` as an interactive lease, or say why not.

        Whoever asked, the lease must have a holder the reconciler checks or an expiry, and a
        profile must be one the lease's user may choose (its groups; admins may choose any): a
        :class:`LeaseBodyError` says which. Who may ask by a raw request is the handler's rule.
        A request that finds no room takes dev GPUs back from the batch jobs borrowing them, if
        that would make room (:attr:`Grant.reclaiming`).
        """
        unreleasable = body.unreleasable()
        if unreleasable is not None:
            raise LeaseBodyError(unreleasable)
        user = await self.users.get(body.user)
        if body.profile_slug is not None:
            profile = self.profiles.by_slug[body.profile_slug]
            if not profile.visible_to(user.groups, user.admin):
                raise LeaseBodyError(
                    f"profile: {body.profile_slug!r} is for the groups {', '.join(sorted(profile.groups))}, "
                    f"and user {user.name} is in none of them; choose another profile"
                )
        group = self.charged_group(user, body.group)
        request = self.placed(body.slice_request)
        result = await self._allocate_interactive(body, group, request)
        if result.no_capacity is not None:
            reclaiming = await self.reclaim_for_interactive(body.lease_id, request)
            if reclaiming is not None:
                return Grant(result, group, reclaiming)
            # The reclaim found nothing to stop. Either stopping borrowers would not make room,
            # or room came back since the ledger looked (a borrower's stop finished in between):
            # the ledger is asked once more, so that a slice that fits now is not refused.
            result = await self._allocate_interactive(body, group, request)
        if result.granted:
            # The GPUs reclaimed for this request, if any, are its own now.
            self.holds.release(body.lease_id)
        return Grant(result, group)

    async def _allocate_interactive(
        self, body: LeaseBody, group: str | None, request: SliceRequest
    ) -> AllocationResult:
        return await asyncio.to_thread(
            self.ledger.allocate,
            body.lease_id,
            body.holder,
            body.user,
            group,
            WorkloadClass.interactive,
            request,
            self.quotas,
            policy_name=self.policy_name,
        )

    async def grant_batch(
        self,
        lease_id: str,
        job: BatchJob,
        pool: str,
        placement: Placement,
        *,
        preemptible: bool,
        now: float,
    ) -> AllocationResult:
        """Grant a batch job's run the placement the scheduler chose, or say why not (the
        placement no longer fits, or the group's batch quota refuses it)."""
        return await asyncio.to_thread(
            self.ledger.grant,
            lease_id,
            job.id,
            job.owner,
            job.group,
            WorkloadClass.batch,
            job.request(pool),
            placement,
            self.quotas,
            preemptible=preemptible,
            now=now,
            expected_gpu_hours=scheduler.expected_gpu_hours(job),
        )

    async def release(self, lease_id: str) -> Lease | None:
        return await asyncio.to_thread(self.ledger.release, lease_id)

    # ---------------------------------------------------- dev GPUs lent to batch work

    async def reclaim_for_interactive(self, lease_id: str, slice_request: SliceRequest) -> Reclaiming | None:
        """Take dev GPUs back from the batch jobs borrowing them so ``slice_request`` fits.

        Called when an interactive slice found no capacity. ``core.scheduler.reclaim_for_interactive``
        decides which jobs must go (counting those already stopping first, so a retry of the same
        request never stops another job); the batch side preempts them, their GPUs are held for
        this request, and the answer says how long the caller should wait. None when stopping
        batch jobs would not make room (or nothing borrows), so the slice is refused as usual.
        """
        borrowers = self.borrowers
        if borrowers is None:
            return None
        async with borrowers.lock:
            nodes, leases = await self.holdings()
            by_id = {lease.id: lease for lease in leases}
            running, stopping = await borrowers.batch_holdings(by_id)
            victims = await asyncio.to_thread(
                scheduler.reclaim_for_interactive,
                nodes,
                [lease.placement for lease in by_id.values()],
                running,
                slice_request,
                self.policy_name,
                stopping,
            )
            if not victims:
                return None
            gpu_names = {gpu.uuid: f"{node.name}:{gpu.index}" for node in nodes for gpu in node.gpus}
            uuids = tuple(dict.fromkeys(uuid for victim in victims for uuid in victim.placement.gpu_uuids))
            names = [gpu_names.get(uuid, uuid) for uuid in uuids]
            for victim in victims:
                if victim.job.id not in stopping:
                    await borrowers.preempt(
                        victim.job.id,
                        f"an interactive slice needs the dev GPU {', '.join(names)} it borrowed",
                    )
            left = borrowers.seconds_left(victim.job.id for victim in victims)
            self.holds.hold(lease_id, uuids, time.monotonic() + left + borrowers.interactive_hold_seconds)
        return Reclaiming(
            jobs=len(victims), gpus=names, retry_after_s=min(max(1, math.ceil(left)), 10), ready_within_s=left
        )

    def nodes_for_batch(self, nodes: list[Node]) -> list[Node]:
        """``nodes`` as batch work may use them: the GPUs held for interactive slices moved to a
        pool no job asks for."""
        return nodes_without(nodes, self.holds.held_uuids(time.monotonic()))

    # ------------------------------------------------------------------------------- views

    async def record(self, lease_id: str) -> LeaseRecord | None:
        return await asyncio.to_thread(self.ledger.record, lease_id)

    async def leases(self, user: str | None = None) -> list[Lease]:
        """Every live lease, or those of ``user``."""
        return await asyncio.to_thread(self.ledger.list_leases, user)

    async def nodes(self) -> list[Node]:
        """The inventory as the ledger holds it."""
        return await asyncio.to_thread(self.ledger.nodes)

    async def holdings(self) -> tuple[list[Node], list[Lease]]:
        """The nodes and every live lease, read together."""
        nodes, leases = await asyncio.gather(self.nodes(), self.leases())
        return nodes, leases

    async def gpus(self, *, show_holders: bool) -> list[dict[str, Any]]:
        nodes, holders = await asyncio.gather(self.nodes(), asyncio.to_thread(self.ledger.gpu_holders))
        return [
            gpu_json(gpu, holders.get(uuid, []), show_holders=show_holders)
            for uuid, gpu in gpus_by_uuid(nodes).items()
        ]

    async def group_usage(self) -> list[dict[str, Any]]:
        """Every group with a quota entry or a holding: what it holds and its limits."""
        return await asyncio.to_thread(self._group_usage)

    def _group_usage(self) -> list[dict[str, Any]]:
        policy = self.quotas
        usage = self.ledger.usage()
        names = sorted(set(policy.groups) | set(usage.groups))
        return [group_view(name, usage.of_group(name), policy.for_group(name)) for name in names]

    async def fair_share_usage(self) -> tuple[dict[str | None, float], float | None]:
        """Each group's decayed batch GPU-seconds as last saved, and when they were saved."""
        return await asyncio.to_thread(self.ledger.fair_share_usage)

    async def save_fair_share_usage(self, usage: Mapping[str | None, float], now: float) -> None:
        await asyncio.to_thread(self.ledger.save_fair_share_usage, dict(usage), now)

    async def availability(self, name: str) -> dict[str, Any]:
        """Every profile ``name`` may choose, with whether it can be granted now and why not."""
        user = await self.users.get(name)
        nodes, live, usage = await asyncio.gather(
            self.nodes(), self.leases(), asyncio.to_thread(self.ledger.usage)
        )
        return await asyncio.to_thread(self._availability, user, nodes, live, usage)

    def _availability(self, user: HubUser, nodes, live, usage: quota.Usage) -> dict[str, Any]:
        # Counting free slices places each profile again and again: CPU work that belongs in a
        # worker thread, not on the event loop that answers the hub's spawn pages.
        group = quota.charge_group(user.groups, self.quotas)
        quota_json = self._quota_json(usage, user, group)
        profiles = []
        for profile in self.profiles.visible_to(user.groups, user.admin):
            request = self.placed(profile.slice_request)
            refusal = quota.check(self.quotas, usage, user.name, group, WorkloadClass.interactive, request)
            cluster = cluster_with(nodes, live)
            count = free_slices(cluster, request, self.policy_name)
            reason = refusal.message if refusal else None
            if reason is None and count == 0:
                reason = cluster.explain_no_fit(request)
            eligible = [
                gpu for node in nodes for gpu in node.gpus if request.gpu_count and request.allows(gpu)
            ]
            simulated = bool(eligible) and all(gpu.simulated for gpu in eligible)
            profiles.append(profile_json(profile, count, reason, refusal, quota_json, simulated))
        return {"user": user.name, "group": group, "profiles": profiles}

    def _quota_json(self, usage: quota.Usage, user: HubUser, group: str | None) -> dict[str, Any]:
        policy = self.quotas
        return {
            "user": holder_json(user.name, usage.of_user(user.name), policy.for_user(user.name)),
            "group": holder_json(group, usage.of_group(group), policy.for_group(group)) if group else None,
        }
