"""The allocator: the service's one handle on the ledger, with every blocking call in a thread.

Handlers ask it for grants, releases and views; it decides which group a lease is charged to,
which profiles a user may see, and what is still free, and it runs each ledger call through
``asyncio.to_thread`` so that the service's event loop keeps answering while SQLite waits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from spawner.config.profiles import Profile, ProfileSet
from spawner.core import quota
from spawner.core.quota import HolderUsage, Limits, Refusal
from spawner.core.units import SliceRequest, WorkloadClass, gpus_by_uuid
from spawner.ledger import AllocationResult, LeaseRecord, Ledger

from .capacity import cluster_with, free_slices
from .hub_users import HubUser, HubUserDirectory
from .lease_request import LeaseBody, LeaseBodyError
from .serialize import gpu_json


@dataclass(frozen=True)
class Grant:
    """What a lease request came to: the ledger's answer and the group it was charged to."""

    result: AllocationResult
    group: str | None


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
            return quota.charge_group(user.groups, self.profiles.quotas)
        if asked not in user.groups:
            groups = ", ".join(sorted(user.groups)) or "no group"
            raise LeaseBodyError(
                f"group: user {user.name} is not in group {asked!r} (member of: {groups}); "
                "leave 'group' out to charge the user's quota group"
            )
        return asked

    async def allocate(self, body: LeaseBody) -> Grant:
        """Grant ``body`` as an interactive lease, or say why not.

        Whoever asked, the lease must have a holder the reconciler checks or an expiry, and a
        profile must be one the lease's user may choose (its groups; admins may choose any): a
        :class:`LeaseBodyError` says which. Who may ask by a raw request is the handler's rule.
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
        result = await asyncio.to_thread(
            self.ledger.allocate,
            body.lease_id,
            body.holder,
            body.user,
            group,
            WorkloadClass.interactive,
            self.placed(body.slice_request),
            self.profiles.quotas,
            policy_name=self.policy_name,
        )
        return Grant(result, group)

    async def release(self, lease_id: str):
        return await asyncio.to_thread(self.ledger.release, lease_id)

    async def record(self, lease_id: str) -> LeaseRecord | None:
        return await asyncio.to_thread(self.ledger.record, lease_id)

    async def leases(self, user: str | None):
        return await asyncio.to_thread(self.ledger.list_leases, user)

    async def gpus(self, *, show_holders: bool) -> list[dict[str, Any]]:
        nodes, holders = await asyncio.gather(
            asyncio.to_thread(self.ledger.nodes), asyncio.to_thread(self.ledger.gpu_holders)
        )
        return [
            gpu_json(gpu, holders.get(uuid, []), show_holders=show_holders)
            for uuid, gpu in gpus_by_uuid(nodes).items()
        ]

    async def availability(self, name: str) -> dict[str, Any]:
        """Every profile ``name`` may choose, with whether it can be granted now and why not."""
        user = await self.users.get(name)
        nodes, live, usage = await asyncio.gather(
            asyncio.to_thread(self.ledger.nodes),
            asyncio.to_thread(self.ledger.list_leases),
            asyncio.to_thread(self.ledger.usage),
        )
        return await asyncio.to_thread(self._availability, user, nodes, live, usage)

    def _availability(self, user: HubUser, nodes, live, usage: quota.Usage) -> dict[str, Any]:
        # Counting free slices places each profile again and again: CPU work that belongs in a
        # worker thread, not on the event loop that answers the hub's spawn pages.
        group = quota.charge_group(user.groups, self.profiles.quotas)
        quota_json = self._quota_json(usage, user, group)
        profiles = []
        for profile in self.profiles.visible_to(user.groups, user.admin):
            request = self.placed(profile.slice_request)
            refusal = quota.check(
                self.profiles.quotas, usage, user.name, group, WorkloadClass.interactive, request
            )
            cluster = cluster_with(nodes, live)
            count = free_slices(cluster, request, self.policy_name)
            reason = refusal.message if refusal else None
            if reason is None and count == 0:
                reason = cluster.explain_no_fit(request)
            eligible = [
                gpu for node in nodes for gpu in node.gpus if request.gpu_count and request.allows(gpu)
            ]
            simulated = bool(eligible) and all(gpu.simulated for gpu in eligible)
            profiles.append(_profile_json(profile, count, reason, refusal, quota_json, simulated))
        return {"user": user.name, "group": group, "profiles": profiles}

    def _quota_json(self, usage: quota.Usage, user: HubUser, group: str | None) -> dict[str, Any]:
        policy = self.profiles.quotas
        return {
            "user": holder_json(user.name, usage.of_user(user.name), policy.for_user(user.name)),
            "group": holder_json(group, usage.of_group(group), policy.for_group(group)) if group else None,
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


def _profile_json(
    profile: Profile,
    count: int,
    reason: str | None,
    refusal: Refusal | None,
    quota_json: dict[str, Any],
    simulated: bool,
) -> dict[str, Any]:
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
