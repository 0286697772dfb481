"""``GPUSliceSpawnerMixin``: what every gpuslice spawner does that is not about processes or pods.

It shows the profiles a user may choose with live availability, asks the gpuslice service for a
lease when a GPU profile starts, hands the granted slice to the server as its environment, keeps the
lease across hub restarts, and gives it back when the server stops or fails to start. Process and
pod spawners mix it in before their own class (``LocalGPUSpawner`` today; a Kubernetes spawner would
do the same with KubeSpawner).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jupyterhub.spawner import SpawnException
from traitlets import CaselessStrEnum, Float, List, Unicode, default
from traitlets.config import LoggingConfigurable

from spawner.config.profiles import Profile, ProfileSet, load_profiles
from spawner.core.units import describe_milli
from spawner.core.vocabulary import server_holder
from spawner.enforce.env import CardDaemons, slice_environment, with_kernel_limits
from spawner.enforce.mps import MPSDirectories, default_root, pools_from_environment

from .service_client import LeaseRefused, ServiceClient, ServiceUnavailable

TEMPLATE = "options_form.html"
RECLAIM_POLL_S = 2.0
"""How often a start asks again while batch jobs give back its dev GPU (and updates the page)."""


class SpawnRefused(SpawnException):
    """A start that gpuslice refused or could not serve, with the sentence the user is shown.

    JupyterHub logs a ``SpawnException`` without a traceback, counts it as a policy failure with
    its ``reason`` in the spawn metrics, and shows ``jupyterhub_message`` on the spawn page, in the
    progress stream and in the REST API's answer; the HTTP status keeps it from reading as a 500.
    """

    def __init__(self, status: int, message: str, *, reason: str):
        super().__init__(message, reason=reason, status_code=status)
        self.jupyterhub_message = message


class GPUSliceSpawnerMixin(LoggingConfigurable):
    """Profiles, the options form, and the lease of a GPU slice, for any JupyterHub spawner.

    A configurable of its own, so that ``c.GPUSliceSpawnerMixin.*`` configures every gpuslice
    spawner at once; it goes before the spawner class in the bases.
    """

    service_url = Unicode(
        "http://127.0.0.1:10101/services/gpuslice/",
        help="""
        The gpuslice service as the hub reaches it: its own address plus its prefix, e.g.
        http://127.0.0.1:10101/services/gpuslice/ (the `url` of the service in
        c.JupyterHub.services, then /services/<name>/).
        """,
    ).tag(config=True)

    service_public_url = Unicode(
        "",
        help="""
        The gpuslice service as a notebook server's clients (the %%submit magic, the CLI) reach it,
        given to the server as $GPUSLICE_SERVICE_URL. Empty means `service_url`.
        """,
    ).tag(config=True)

    service_api_token = Unicode(
        "",
        help="""
        The gpuslice service's own API token (the `api_token` of the service in
        c.JupyterHub.services). The service lets only itself ask on behalf of any user.
        """,
    ).tag(config=True)

    @default("service_api_token")
    def _default_service_api_token(self) -> str:
        return os.environ.get("GPUSLICE_SERVICE_API_TOKEN", "")

    profiles_dir = Unicode(
        "profiles",
        help="""
        Directory of profile and quota *.yaml files: the same directory the service reads, so
        that the dropdown and the allocator agree (see profiles/default.yaml).
        """,
    ).tag(config=True)

    enforcement = CaselessStrEnum(
        ["env", "mps"],
        default_value="env",
        help="""
        How a slice is held to its size on the machine.

        - "env": the server sees only its GPUs (CUDA_VISIBLE_DEVICES by UUID) and frameworks are
          told their share of memory (XLA, TensorFlow, PyTorch at kernel start). Cooperative.
        - "mps": as "env", plus CUDA MPS client limits on SMs and pinned device memory, enforced
          by the MPS control daemon the admin runs on the host (nvidia-cuda-mps-control -d).

        Slices of cards in `mps_pools` use their card's own daemon whichever is chosen here.
        """,
    ).tag(config=True)

    mps_pools = List(
        Unicode(),
        [],
        help="""
        The GPU pools whose cards the gpuslice service shares through one CUDA MPS control daemon
        per card: the same list as the service's c.MPSDaemons.pools. A server holding a fraction
        of one real card in these pools gets that card's daemon (CUDA_MPS_PIPE_DIRECTORY
        <mps_root>/<uuid>/pipe, CUDA_MPS_LOG_DIRECTORY <mps_root>/<uuid>/log) and its MPS client
        limits, so the limits the service sets on the daemon hold for it. Empty (the default): no
        server is pointed at a per-card daemon. The hub is told this list, as it is told the
        profiles directory, rather than asking the service. Default: the comma-separated
        $GPUSLICE_MPS_POOLS, which c.MPSDaemons.pools defaults to as well: give the hub and the
        service (c.JupyterHub.services' "environment") that one variable, or set both traits to
        one list. A card's pools come from the service's GET gpus.
        """,
    ).tag(config=True)

    @default("mps_pools")
    def _default_mps_pools(self) -> list[str]:
        return pools_from_environment(os.environ)

    mps_root = Unicode(
        help="""
        The directory the service's per-card MPS daemons live under: the same as the service's
        c.MPSDaemons.root. Default, like the service's: $GPUSLICE_STATE_DIR (or ./var)/mps, so
        with no setting the two agree when the hub runs with the service's GPUSLICE_STATE_DIR
        and working directory; otherwise set both to one path.
        """,
    ).tag(config=True)

    @default("mps_root")
    def _default_mps_root(self) -> str:
        return str(default_root(os.environ.get("GPUSLICE_STATE_DIR", "var")))

    mps_pipe_directory = Unicode(
        "/tmp/nvidia-mps",
        help="""
        CUDA_MPS_PIPE_DIRECTORY of the host's MPS control daemon (enforcement = 'mps'), for slices
        not on a card with a daemon of its own (mps_pools).
        """,
    ).tag(config=True)

    mps_log_directory = Unicode(
        "/tmp/nvidia-log",
        help="CUDA_MPS_LOG_DIRECTORY of the host's MPS control daemon (enforcement = 'mps').",
    ).tag(config=True)

    request_timeout = Float(
        10.0,
        help="Seconds to wait for the gpuslice service on each call before the start fails.",
    ).tag(config=True)

    reclaim_timeout = Float(
        90.0,
        help="""
        Seconds a start waits while batch jobs give back the dev GPUs its slice needs (they get a
        stop signal to checkpoint, then end; see BatchScheduler.preemption_grace_seconds). The spawn
        page shows the wait; after this long the start fails saying so. Keep it below
        Spawner.start_timeout, which bounds the whole start.
        """,
    ).tag(config=True)

    lease_id = Unicode(
        "",
        help="The lease this server holds (kept in the hub's state across restarts); not configuration.",
    )

    profile_slug = Unicode(
        "",
        help="The profile this server was started with (kept in the hub's state); not configuration.",
    )

    @default("options_form")
    def _default_options_form(self):
        return _render_options_form

    # -- profiles ---------------------------------------------------------------------------

    async def load_profile_set(self) -> ProfileSet:
        """The profiles directory as it is now (re-read when a file changes), without blocking."""
        return await asyncio.to_thread(_load_profiles_cached, self.profiles_dir)

    def user_group_names(self) -> list[str]:
        return [group.name for group in self.user.groups]

    async def visible_profiles(self) -> tuple[list[Profile], Profile | None]:
        """The profiles this user may choose, and the one preselected for them."""
        profile_set = await self.load_profile_set()
        groups, is_admin = self.user_group_names(), bool(self.user.admin)
        return profile_set.visible_to(groups, is_admin), profile_set.default_for(groups, is_admin)

    async def chosen_profile(self) -> Profile:
        """The profile of ``user_options`` (the form's or the REST API's), else the default."""
        visible, preselected = await self.visible_profiles()
        slug = (self.user_options or {}).get("profile") or (preselected.slug if preselected else "")
        for profile in visible:
            if profile.slug == slug:
                return profile
        choices = ", ".join(profile.slug for profile in visible) or "none"
        raise SpawnRefused(
            400,
            f"There is no profile {slug!r} for {self.user.name}; choose one of: {choices}.",
            reason="profile",
        )

    def service_client(self) -> ServiceClient:
        return ServiceClient(self.service_url, self.service_api_token, self.request_timeout)

    # -- the options form -------------------------------------------------------------------

    async def render_options_form(self) -> str:
        """The dropdown of the user's profiles, each with what is free now or why it cannot start."""
        visible, preselected = await self.visible_profiles()
        availability: dict[str, Any] = {}
        unavailable = ""
        if any(profile.has_gpu for profile in visible):
            try:
                availability = await self.service_client().availability(self.user.name)
            except ServiceUnavailable as error:
                unavailable = f"GPU service unavailable: {error}"
        by_slug = {entry["slug"]: entry for entry in availability.get("profiles", [])}
        choices = [_choice(profile, by_slug.get(profile.slug), unavailable) for profile in visible]
        selectable = [choice for choice in choices if not choice["disabled"]]
        selected = preselected.slug if preselected else ""
        if selected not in {choice["slug"] for choice in selectable} and selectable:
            selected = selectable[0]["slug"]
        quota = next((entry["quota"] for entry in by_slug.values() if entry.get("quota")), None)
        return _template().render(
            choices=choices,
            selected=selected,
            quota=quota,
            group=availability.get("group"),
            unavailable=unavailable,
        )

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, str]:
        """``{"profile": slug}``; the slug is checked against the user's profiles at start."""
        slug = (formdata.get("profile") or [""])[0].strip()
        return {"profile": slug} if slug else {}

    # -- state ------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.lease_id:
            state["gpuslice_lease_id"] = self.lease_id
        if self.profile_slug:
            state["gpuslice_profile"] = self.profile_slug
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.lease_id = state.get("gpuslice_lease_id", "")
        self.profile_slug = state.get("gpuslice_profile", "")

    def clear_state(self) -> None:
        super().clear_state()
        self.lease_id = ""
        self.profile_slug = ""

    # -- start, stop, poll, progress ----------------------------------------------------------

    @property
    def holder(self) -> str:
        """Who holds the lease, as the service reconciles it: ``user/server`` ("" for the default)."""
        return server_holder(self.user.name, self.name)

    def progress_note(self, message: str) -> None:
        self._progress_log().append({"message": message})
        self._progress_changed().set()

    def _progress_log(self) -> list[dict[str, Any]]:
        if not hasattr(self, "_gpuslice_progress"):
            self._gpuslice_progress: list[dict[str, Any]] = []
        return self._gpuslice_progress

    def _progress_changed(self) -> asyncio.Event:
        if not hasattr(self, "_gpuslice_progress_event"):
            self._gpuslice_progress_event = asyncio.Event()
        return self._gpuslice_progress_event

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """What the start is doing now: asking for a slice, what was granted, starting the server."""
        sent = 0
        while True:
            events = self._progress_log()
            while sent < len(events):
                yield events[sent]
                sent += 1
            if getattr(self, "_gpuslice_start_done", False):
                return
            changed = self._progress_changed()
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), timeout=1)
            except asyncio.TimeoutError:
                continue

    async def start(self):
        """Take the slice (GPU profiles only), then start the server with it; give it back on failure."""
        self._gpuslice_progress = []
        self._gpuslice_start_done = False
        try:
            profile = await self.chosen_profile()
            self.profile_slug = profile.slug
            self.apply_profile(profile)
            # Every server, CPU-only too, can send work to the training queue: it gets the
            # service's URL and the kernelspec that loads %%submit; GPU profiles add their slice.
            self.slice_env = with_kernel_limits(
                {"GPUSLICE_SERVICE_URL": self.service_public_url or self.service_url},
                os.environ.get("JUPYTER_PATH", ""),
            )
            if profile.has_gpu:
                self.slice_env = await self.take_slice(profile)
            self.progress_note("Starting your server")
            return await super().start()
        except BaseException:
            await self.give_back_slice()
            raise
        finally:
            self._gpuslice_start_done = True
            self._progress_changed().set()

    def apply_profile(self, profile: Profile) -> None:
        """The profile's CPU and memory limits and environment, as the spawner's own settings."""
        if profile.cpu_limit is not None:
            self.cpu_limit = profile.cpu_limit
        if profile.cpu_guarantee is not None:
            self.cpu_guarantee = profile.cpu_guarantee
        if profile.mem_limit_mib is not None:
            self.mem_limit = profile.mem_limit_mib * 1024 * 1024
        if profile.mem_guarantee_mib is not None:
            self.mem_guarantee = profile.mem_guarantee_mib * 1024 * 1024
        self.environment = {**self.environment, **profile.environment}

    async def take_slice(self, profile: Profile) -> dict[str, str]:
        """Ask the service for the lease and return the server's slice environment.

        The lease id is chosen (and kept in ``self.lease_id``) before the request, so a retry of
        this attempt after a lost answer is the same request and cannot be granted twice.
        """
        self.lease_id = f"server-{uuid.uuid4().hex}"
        self.progress_note(f"Asking gpuslice for {_slice_words(profile)}")
        client = self.service_client()
        try:
            lease = await self._allocate_waiting_for_reclaim(client, profile)
            gpus = await client.gpus()
        except ServiceUnavailable as error:
            raise SpawnRefused(
                503,
                f"The GPU service is unavailable, so {profile.display_name} cannot start: {error}. "
                "CPU-only profiles still start; try again in a minute or ask your admin.",
                reason="gpu-service-unavailable",
            ) from None
        except LeaseRefused as error:
            self.lease_id = ""
            status = 409 if error.status == 409 else 400
            why = error.reason or ("quota" if status == 409 else "bad-request")
            raise SpawnRefused(status, error.message, reason=why) from None
        env = slice_environment(
            lease,
            profile=profile.slug,
            gpus=gpus,
            service_url=self.service_public_url or self.service_url,
            enforcement=self.enforcement,
            mps=MPSDirectories(self.mps_pipe_directory, self.mps_log_directory),
            card_daemons=CardDaemons(frozenset(self.mps_pools), self.mps_root) if self.mps_pools else None,
        )
        simulated = " (simulated)" if env.get("GPUSLICE_SIMULATED") else ""
        self.progress_note(f"Granted {env['CUDA_VISIBLE_DEVICES']} on {lease['node']}{simulated}")
        return with_kernel_limits(env, os.environ.get("JUPYTER_PATH", ""))

    async def _allocate_waiting_for_reclaim(self, client: ServiceClient, profile: Profile) -> dict[str, Any]:
        """POST leases, and while the service answers ``reclaiming`` (batch jobs borrowing the dev
        GPU are checkpointing to give it back), wait and ask again under the same lease id, telling
        the spawn page what it waits for, until granted, refused, or ``reclaim_timeout``."""
        started = time.monotonic()
        while True:
            try:
                return await self._allocate_with_retry(client, profile)
            except LeaseRefused as refused:
                if not refused.reclaiming:
                    raise
                waited = time.monotonic() - started
                gpus = ", ".join(refused.details.get("gpus") or []) or "its dev GPU"
                if waited >= self.reclaim_timeout:
                    raise LeaseRefused(
                        f"{profile.display_name} needs GPU {gpus}, which batch jobs were still giving "
                        f"back after {round(waited)} s (they get time to save a checkpoint); try again "
                        "in a minute, or ask your admin about the batch jobs' grace period.",
                        409,
                        "reclaim-timeout",
                    ) from None
                jobs = refused.details.get("stopping_jobs", 1)
                who = "a batch job" if jobs == 1 else f"{jobs} batch jobs"
                self.progress_note(
                    f"Waiting for {who} to checkpoint and give back GPU {gpus} ({round(waited)} s)"
                )
                pause = min(refused.retry_after, RECLAIM_POLL_S, self.reclaim_timeout - waited)
                await asyncio.sleep(max(pause, 0.1))

    async def _allocate_with_retry(self, client: ServiceClient, profile: Profile) -> dict[str, Any]:
        """POST leases, once more with the same id if the first answer was lost or the ledger busy."""
        attempts = 2
        for attempt in range(attempts):
            try:
                return await client.allocate(
                    lease_id=self.lease_id, user=self.user.name, holder=self.holder, profile=profile.slug
                )
            except ServiceUnavailable as error:
                if attempt + 1 == attempts or "cannot reach" in str(error):
                    raise
                self.log.warning("gpuslice: retrying lease %s after: %s", self.lease_id, error)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def give_back_slice(self) -> None:
        """Release the lease, if any; a lease the service cannot be told about is logged, not raised.

        Stopping a server must not fail because the service is down; the service reconciles
        leases whose ``user/server`` holder is gone when it is back.
        """
        lease_id = self.lease_id
        if not lease_id:
            return
        try:
            await self.service_client().release(lease_id)
        except ServiceUnavailable as error:
            self.log.warning("gpuslice: could not release lease %s of %s: %s", lease_id, self.holder, error)
            return
        self.log.info("gpuslice: released lease %s of %s", lease_id, self.holder)
        if self.lease_id == lease_id:
            self.lease_id = ""

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(getattr(self, "slice_env", {}))
        return env

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        await self.give_back_slice()

    async def poll(self):
        """The process's status; a server found gone gives its slice back.

        JupyterHub calls ``stop()`` only for servers ``poll()`` says are running, so a server that
        died on its own (or before it was ready) would otherwise keep its lease.
        """
        lease_id = self.lease_id
        status = await super().poll()
        if status is not None and lease_id and not self._start_pending:
            self.lease_id = lease_id
            await self.give_back_slice()
            self.lease_id = ""
        return status


_PROFILE_CACHE: dict[str, tuple[tuple, ProfileSet]] = {}


def _load_profiles_cached(profiles_dir: str) -> ProfileSet:
    """The profiles of ``profiles_dir``, read again only when a file in it changed (blocking I/O)."""
    folder = Path(profiles_dir).resolve()
    stamp = tuple(sorted((path.name, path.stat().st_mtime_ns) for path in folder.glob("*.yaml")))
    cached = _PROFILE_CACHE.get(str(folder))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    profile_set = load_profiles(profiles_dir)
    _PROFILE_CACHE[str(folder)] = (stamp, profile_set)
    return profile_set


async def _render_options_form(spawner: GPUSliceSpawnerMixin) -> str:
    """The hub calls ``options_form(spawner)`` when it is callable; this renders the template."""
    return await spawner.render_options_form()


def _template() -> jinja2.Template:
    source = resources.files("spawner.hub").joinpath("templates", TEMPLATE).read_text()
    return jinja2.Environment(autoescape=True).from_string(source)


def _slice_words(profile: Profile) -> str:
    """'a 1/8 GPU slice', '2 whole GPUs': what is being asked for, in the progress message."""
    if profile.milli_gpu:
        return f"a {describe_milli(profile.milli_gpu)} GPU slice"
    return f"{profile.gpus} whole GPU{'s' if profile.gpus > 1 else ''}"


def _choice(profile: Profile, entry: dict[str, Any] | None, unavailable: str) -> dict[str, Any]:
    """One option of the dropdown: its label, and the reason when it cannot be chosen now."""
    label = f"{profile.display_name} — {profile.describe()}"
    reason = None
    if profile.has_gpu:
        if unavailable:
            reason = unavailable
        elif entry is None:
            reason = "GPU service unavailable: it does not list this profile; ask your admin"
        elif not entry["available"]:
            reason = entry["reason"]
        else:
            label += f" · {entry['free_slices']} free"
        if entry is not None and entry.get("simulated"):
            # Demo GPUs must never pass for real ones, on this page least of all.
            label += " · simulated GPU"
    return {
        "slug": profile.slug,
        "label": label,
        "description": profile.description,
        "disabled": reason is not None,
        "reason": reason,
    }
