"""GPU-aware idle culling: a notebook server whose slice sits idle too long gives its GPU back.

jupyterhub-idle-culler stops servers whose *activity* is old; a notebook whose kernel spins on the
CPU (or a terminal left open) keeps its activity fresh while its GPU slice does nothing. The GPU
monitor knows, per lease, since when its processes have used less than
``GPUMonitor.idle_threshold_percent`` of the slice (a kernel busy on the CPU only is GPU-idle);
this culler stops the server holding it once that lasts longer than its profile allows, through
the hub's REST API (``DELETE /users/{name}/servers/{server}``), so the hub stops it the way an
admin's Stop button does and the spawner gives the lease back.

With ``action = 'flag'`` nothing is stopped: the server is listed as GPU-idle on the admins' usage
page, for sites that cull with jupyterhub-idle-culler alone. Batch jobs are never culled here
(their idleness is flagged instead, see ``GPUMonitor.batch_idle_flag_s``).

What jupyterhub-idle-culler can be told: it decides on each server's ``last_activity`` (and its
age) from the hub's ``GET /users``, nothing else, and the hub's ``POST /users/{name}/activity``
only ever moves ``last_activity`` forward. So GPU *idleness* cannot be reported to it (no call
makes a server look older), but GPU *use* can: with ``report_gpu_activity`` on, a server whose
slice was measurably busy in a sample gets that sample's time as its activity, so idle-culler does
not stop a server training from a background process while nobody types (a script started from a
terminal, whose output nobody reads, is no activity to the server). Stopping GPU-idle servers
stays this culler's (``action = 'stop'``).

The user sees why: the reason is kept as a notice of theirs, shown at the top of every gpuslice
page they open, and in the service's log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Dict, Float, Unicode, validate
from traitlets.config import LoggingConfigurable

from spawner.core.scheduler import describe_duration
from spawner.core.units import Lease, SliceRequest, WorkloadClass
from spawner.core.vocabulary import server_of_holder

ACTIONS = ("stop", "flag")


def _gpu_terms(request: SliceRequest) -> tuple:
    """What identifies a profile's slice in a lease: the GPU part of the request (the CPU and memory
    part may have been left out when placed, see Allocator.placed)."""
    return (
        request.milli_gpu,
        request.gpus,
        request.gpu_memory_mib,
        frozenset(request.gpu_models),
        request.pool,
    )


@dataclass(frozen=True, slots=True)
class IdleServer:
    """A server whose slice has been GPU-idle past its profile's limit."""

    lease: Lease
    server: str
    idle_s: float
    limit_s: float
    profile: str | None


class IdleCuller(LoggingConfigurable):
    """Stops (or flags) notebook servers whose GPU slice stays idle past their profile's limit."""

    idle_timeout_s = Float(
        0.0,
        help="""
        Seconds a notebook server's GPU slice may stay idle before the server is stopped, for
        profiles that IdleCuller.idle_timeouts does not name; 0 (the default) never culls them.
        """,
    ).tag(config=True)

    idle_timeouts = Dict(
        {},
        help="""
        Per profile slug, the seconds its slices may stay GPU-idle before the server is stopped,
        e.g. {'a100-1-8': 4 * 3600, 'a100-full': 3600}: a whole card is worth culling sooner than
        an eighth. 0 never culls that profile. A lease is matched to the profile whose slice
        request it holds; where several profiles have the same slice, the shortest limit holds.
        """,
    ).tag(config=True)

    action = Unicode(
        "stop",
        help="""
        'stop': stop the server through the hub's API (the service's token needs the scope
        'delete:servers', which the shipped hub_config.py gives it); 'flag': only list it on the
        admins' usage page, for sites that leave stopping to jupyterhub-idle-culler.
        """,
    ).tag(config=True)

    report_gpu_activity = Bool(
        False,
        help="""
        Report to the hub, as the server's activity (POST /users/{name}/activity), every sample
        in which a notebook server's GPU slice was measurably busy, at most once per
        activity_report_interval_s per server. jupyterhub-idle-culler then keeps servers doing GPU
        work from a background process. The service's token needs the scope 'users:activity'.
        Idleness cannot be reported: the hub only moves last_activity forward.
        """,
    ).tag(config=True)

    activity_report_interval_s = Float(
        60.0,
        help="""
        Seconds between two activity reports for one server. The hub itself gathers activity
        every JupyterHub.last_activity_interval (300 s by default), and idle-culler timeouts are
        minutes to hours, so a report a minute is plenty and spares the hub one call per sample.
        """,
    ).tag(config=True)

    @validate("action")
    def _valid_action(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in ACTIONS:
            raise ValueError(
                f"IdleCuller.action must be one of {', '.join(ACTIONS)}, got {proposal['value']!r}"
            )
        return proposal["value"]

    def __init__(
        self, profiles: Iterable[Any], hub_api_url: str = "", hub_api_token: str = "", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.profiles = list(profiles)
        self.hub_api_url = hub_api_url.rstrip("/")
        self.hub_api_token = hub_api_token
        self.flagged: list[IdleServer] = []
        self._stopping: set[str] = set()
        self._reported_at: dict[str, float] = {}
        """Lease id -> when its server's activity was last reported to the hub."""

    def limit_for(self, lease: Lease) -> tuple[float, str | None]:
        """(seconds allowed idle, the profile's slug) for ``lease``; 0 seconds: never culled."""
        terms = _gpu_terms(lease.request)
        matches = [profile for profile in self.profiles if _gpu_terms(profile.slice_request) == terms]
        if not matches:
            return self.idle_timeout_s, None
        limits = sorted(
            (float(self.idle_timeouts.get(profile.slug, self.idle_timeout_s)), profile.slug)
            for profile in matches
        )
        culled = [limit for limit in limits if limit[0] > 0]
        return culled[0] if culled else (0.0, limits[0][1])

    def due(self, lease_use: Mapping[str, Any], now: float) -> list[IdleServer]:
        """Notebook servers idle past their limit (batch leases and other holders are never due)."""
        found = []
        for use in lease_use.values():
            lease = use.lease
            if lease.workload != WorkloadClass.interactive or use.idle_since is None:
                continue
            server = server_of_holder(lease.holder, lease.user)
            if server is None:
                continue
            limit, profile = self.limit_for(lease)
            idle = now - use.idle_since
            if limit > 0 and idle >= limit:
                found.append(IdleServer(lease, server, idle, limit, profile))
        return found

    def reason(self, idle: IdleServer, threshold_percent: float) -> str:
        where = f"server {idle.server!r}" if idle.server else "default server"
        profile = f"the {idle.profile} profile" if idle.profile else "its profile"
        return (
            f"{idle.lease.user}'s {where} was stopped: its GPU slice ({idle.lease.request.describe()}) "
            f"was idle for {describe_duration(idle.idle_s)} (its processes used under "
            f"{threshold_percent:g}% of it), longer than {profile} allows "
            f"({describe_duration(idle.limit_s)}). "
            "Its GPU went back to the pool; start the server again from the hub's home page when you need it"
        )

    async def cull(self, due: list[IdleServer], threshold_percent: float) -> list[tuple[IdleServer, str]]:
        """Stop (or flag) each server of ``due``; returns the ones stopped, each with the reason."""
        self.flagged = list(due) if self.action == "flag" else []
        if self.action == "flag":
            return []
        stopped = []
        for idle in due:
            if idle.lease.id in self._stopping:
                continue  # asked already; the hub is stopping it and the lease goes when it has
            reason = self.reason(idle, threshold_percent)
            if await self.stop_server(idle):
                self._stopping.add(idle.lease.id)
                self.log.warning("idle culling: %s", reason)
                stopped.append((idle, reason))
        live = {idle.lease.id for idle in due}
        self._stopping &= live
        return stopped

    async def stop_server(self, idle: IdleServer) -> bool:
        """Ask the hub to stop the server; False (and a log line) if it refused."""
        user = quote(idle.lease.user, safe="")
        path = (
            f"/users/{user}/servers/{quote(idle.server, safe='')}" if idle.server else f"/users/{user}/server"
        )
        request = HTTPRequest(
            self.hub_api_url + path,
            method="DELETE",
            headers={"Authorization": f"token {self.hub_api_token}"},
            request_timeout=30,
        )
        try:
            await AsyncHTTPClient().fetch(request)
        except HTTPClientError as error:
            body = error.response.body.decode(errors="replace")[:300] if error.response is not None else ""
            self.log.error(
                "idle culling: the hub refused to stop %s's server %r (%s %s); give the service's token "
                "the scope 'delete:servers', or set IdleCuller.action = 'flag'",
                idle.lease.user,
                idle.server,
                error.code,
                body,
            )
            return False
        except OSError as error:
            self.log.error("idle culling: the hub could not be reached to stop a server (%s)", error)
            return False
        return True

    def busy_servers(self, lease_use: Mapping[str, Any], now: float) -> dict[str, dict[str, str]]:
        """Per user, the servers whose slice was measurably busy in the sample and not reported in
        the last ``activity_report_interval_s``: {user: {server name: lease id}}."""
        found: dict[str, dict[str, str]] = {}
        for use in lease_use.values():
            lease = use.lease
            if lease.workload != WorkloadClass.interactive or not use.measured:
                continue
            if use.idle_since is not None or use.used_gpus <= 0:
                continue
            server = server_of_holder(lease.holder, lease.user)
            if server is None:
                continue
            if now - self._reported_at.get(lease.id, float("-inf")) < self.activity_report_interval_s:
                continue
            found.setdefault(lease.user, {})[server] = lease.id
        return found

    async def report_activity(self, lease_use: Mapping[str, Any], now: float) -> list[str]:
        """Tell the hub that the servers whose GPU is busy were active at ``now`` (when
        ``report_gpu_activity``); returns the lease ids reported."""
        if not self.report_gpu_activity:
            return []
        live = {use.lease.id for use in lease_use.values()}
        self._reported_at = {lease: at for lease, at in self._reported_at.items() if lease in live}
        stamp = datetime.fromtimestamp(now, timezone.utc).isoformat().replace("+00:00", "Z")
        reported = []
        for user, servers in self.busy_servers(lease_use, now).items():
            body = {"servers": {server: {"last_activity": stamp} for server in servers}}
            request = HTTPRequest(
                f"{self.hub_api_url}/users/{quote(user, safe='')}/activity",
                method="POST",
                headers={"Authorization": f"token {self.hub_api_token}", "Content-Type": "application/json"},
                body=json.dumps(body),
                request_timeout=30,
            )
            try:
                await AsyncHTTPClient().fetch(request)
            except HTTPClientError as error:
                answer = (
                    error.response.body.decode(errors="replace")[:300] if error.response is not None else ""
                )
                self.log.error(
                    "GPU activity: the hub refused %s's activity (%s %s); give the service's token the "
                    "scope 'users:activity', or turn IdleCuller.report_gpu_activity off",
                    user,
                    error.code,
                    answer,
                )
                continue
            except OSError as error:
                self.log.error("GPU activity: the hub could not be reached (%s)", error)
                return reported
            for lease_id in servers.values():
                self._reported_at[lease_id] = now
                reported.append(lease_id)
        return reported
