"""The service's web pages: a user's jobs, and the admins' view of the queue, the GPUs and quotas.

People reach them from the hub's "Services" menu and log in through the hub's OAuth
(:class:`~jupyterhub.services.auth.HubOAuth`); the login leaves a cookie for the service's path.
The jobs page is a shell that its script fills from the REST API (the same calls the CLI makes,
authenticated by that cookie plus the page's XSRF token), so that states, queue positions and logs
follow live without reloading. The admin page is rendered on the server, from the allocator's
and the job service's views, because it shows everyone's holdings and no user-facing API call
returns all of it.

Every piece of user-provided text (job names, reasons, log lines) is escaped: Jinja2 autoescapes the
templates, and the script only ever sets ``textContent``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jinja2 import Environment, FileSystemLoader
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web

from spawner.core.scheduler import describe_duration
from spawner.core.units import MILLI_PER_GPU
from spawner.core.vocabulary import TERMINAL_STATES, JobState

from .api.base import ServiceUserMixin, error_sentence
from .serialize import holder_view, job_json
from .telemetry import plots
from .telemetry.usage import UsageRangeError, report_for

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

TEMPLATES = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True)
"""Autoescaping on for every template: job names and reasons are whatever their owners typed."""

QUEUE_STATES = [JobState.running.value, JobState.queued.value]


def limit_text(value: float | None, unit: str = "") -> str:
    """``None`` (no limit) as "no limit", a number with its unit otherwise."""
    if value is None:
        return "no limit"
    number = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{number} {unit}".strip()


def share_of_limit(used: float, limit: float | None) -> int:
    """How full a quota is, in whole percent for a meter (0 without a limit, 100 when at or over it)."""
    if limit is None:
        return 0
    if limit <= 0:
        return 100 if used > 0 else 0
    return min(100, round(100 * used / limit))


def clock(timestamp: float | None) -> str:
    """A ledger timestamp as the service's local date and time, or an empty string."""
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


TEMPLATES.globals.update(limit_text=limit_text, share_of_limit=share_of_limit, clock=clock)
TEMPLATES.filters["duration"] = describe_duration


class PageHandler(ServiceUserMixin, HubOAuthenticated, web.RequestHandler):
    """A page for a person in a browser: OAuth login through the hub, HTML errors.

    ``self.current_user`` is set in :meth:`prepare` without blocking the event loop (HubOAuth's
    synchronous ``get_current_user`` would wait for the hub on it); ``@web.authenticated`` then
    sends a stranger to the hub's OAuth page and back. Who may enter is the API's rule
    (:class:`ServiceUserMixin`).
    """

    def refuse_entry(self, message: str) -> web.HTTPError:
        return web.HTTPError(403, "%s", message)

    async def prepare(self) -> None:
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            return  # @web.authenticated sends the browser to the hub's login
        self.requester = self.admit(model)
        self.current_user = model

    @property
    def service_prefix(self) -> str:
        return self.hub_auth.base_url

    def render_page(self, template: str, **context: Any) -> None:
        user = self.current_user
        monitor = self.settings.get("monitor")
        page = TEMPLATES.get_template(template).render(
            prefix=self.service_prefix,
            api_url=f"{self.service_prefix}api/v1/",
            hub_home=f"{self.hub_auth.hub_prefix}home",
            user_name=user["name"] if user else None,
            is_admin=bool(user) and self.requester.sees_everyone,
            # Reading xsrf_token on a page view also sets the _xsrf cookie the token is checked
            # against when the page's script calls the API with the login cookie.
            xsrf_token=self.xsrf_token.decode("ascii") if user else "",
            static_url=self.static_url,
            # Why a server was stopped or warned (the GPU monitor's notices), on every page.
            user_notices=monitor.notices_of(user["name"]) if user and monitor is not None else [],
            **context,
        )
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(page)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """An HTML page with the sentence that says what happened, instead of tornado's bare one."""
        message = error_sentence(self, **kwargs)
        title = f"{status_code} {self._reason}"
        self.render_page("error.html", title=title, status=status_code, message=message)


class RootPageHandler(PageHandler):
    """The service's own URL (the hub's menu links here): straight to the user's jobs."""

    async def get(self) -> None:
        self.redirect(f"{self.service_prefix}jobs")


class JobsPageHandler(PageHandler):
    """My jobs: the table, the selected job's details, its live log and its Cancel button."""

    @web.authenticated
    async def get(self) -> None:
        self.render_page("jobs.html", title="My jobs", page="jobs", terminal_states=sorted(TERMINAL_STATES))


class AdminPageHandler(PageHandler):
    """The queue, every GPU with who holds what, and each group's usage against its quota."""

    @web.authenticated
    async def get(self) -> None:
        if not self.requester.sees_everyone:
            raise web.HTTPError(
                403,
                "%s",
                f"The gpuslice admin page is for hub admins and for holders of the scope "
                f"{self.admin_scope}; {self.requester.describe()} is neither. "
                f"Your own jobs are on the My jobs page.",
            )
        queue = await self.queue()
        jobs_by_lease = {job["lease_id"]: job for job in queue if job["lease_id"]}
        gpus = await self.allocator.gpus(show_holders=True)
        for gpu in gpus:
            gpu["holders"] = [holder_view(holder, jobs_by_lease) for holder in gpu["holders"]]
            gpu["milli_held"] = MILLI_PER_GPU - gpu["milli_free"]
        gpu_labels = {gpu["uuid"]: f"{gpu['node']} #{gpu['index']}" for gpu in gpus}
        for job in queue:
            job["gpu_labels"] = [gpu_labels.get(uuid, uuid) for uuid in job["gpu_uuids"]]
        groups = await self.allocator.group_usage()
        self.render_page(
            "admin.html",
            title="gpuslice admin",
            page="admin",
            queue=queue,
            gpus=gpus,
            groups=groups,
            now=time.time(),
        )

    async def queue(self) -> list[dict[str, Any]]:
        """Running jobs (longest running first), then the queue in the scheduler's order."""
        records = await self.jobs.list(None, QUEUE_STATES)
        snapshot = self.jobs.queue
        queue = [job_json(record, snapshot, listing=True, everyone=True) for record in records]
        running = sorted(
            (job for job in queue if job["state"] == JobState.running), key=lambda job: job["started_at"] or 0
        )
        waiting = sorted(
            (job for job in queue if job["state"] != JobState.running),
            key=lambda job: (job["queue_position"] is None, job["queue_position"] or 0, job["created_at"]),
        )
        return running + waiting


class UsagePageHandler(PageHandler):
    """GPU use like a utility bill: the last 14 days' plots and tables, and what the monitor sees now."""

    @web.authenticated
    async def get(self) -> None:
        if not self.requester.sees_everyone:
            raise web.HTTPError(
                403,
                "%s",
                f"The gpuslice usage page is for hub admins and for holders of the scope "
                f"{self.admin_scope}; {self.requester.describe()} is neither.",
            )
        try:
            first, last = self.get_argument("from", None), self.get_argument("to", None)
            report = await report_for(self.settings, first, last)
        except UsageRangeError as error:
            raise web.HTTPError(400, "%s", str(error)) from None
        monitor = self.settings.get("monitor")
        last_poll = monitor.last_poll if monitor is not None else None
        simulated = last_poll is not None and not last_poll.sample.measured
        self.render_page(
            "usage.html",
            title="GPU usage",
            page="usage",
            report=report,
            heat_map=plots.heat_map(report),
            group_bars=plots.group_bars(report),
            busy_lines=plots.busy_lines(report),
            monitor_off=monitor is None,
            monitor_source="allocation" if simulated else "nvml",
            busy_threshold=f"{monitor.busy_threshold_percent:g}" if monitor is not None else "",
            notices=list(monitor.notices) if monitor is not None else [],
            idle_jobs=monitor.idle_batch_jobs() if monitor is not None else [],
            idle_servers=monitor.culler.flagged if monitor is not None and monitor.culler is not None else [],
            unowned=list(last_poll.unowned) if last_poll is not None else [],
            now=time.time(),
        )


class OAuthCallbackHandler(ServiceUserMixin, HubOAuthCallbackHandler):
    """JupyterHub's end of the OAuth login, with the service's own HubOAuth from the settings (not
    a new instance)."""


default_handlers = [
    ("", RootPageHandler),
    ("jobs", JobsPageHandler),
    ("admin", AdminPageHandler),
    ("usage", UsagePageHandler),
]
"""The pages, by their path below the service's prefix."""


def page_routes(prefix: str, hub_auth: HubOAuth | None) -> list[tuple[str, type[web.RequestHandler]]]:
    """The pages under ``prefix`` (each with or without a trailing slash) and the OAuth callback
    where the hub sends the browser back."""
    callback_path = ""
    if isinstance(hub_auth, HubOAuth):
        # The hub tells a managed service its redirect URI ($JUPYTERHUB_OAUTH_CALLBACK_URL), by
        # default <prefix>oauth_callback; the route must be wherever that says.
        callback_path = urlparse(hub_auth.oauth_redirect_uri).path
    callback_path = callback_path or f"{prefix}oauth_callback"
    base = re.escape(prefix.rstrip("/"))
    routes: list[tuple[str, type[web.RequestHandler]]] = [
        (base + (f"/{re.escape(path)}" if path else "") + "/?$", handler)
        for path, handler in default_handlers
    ]
    return [*routes, (re.escape(callback_path) + "$", OAuthCallbackHandler)]
