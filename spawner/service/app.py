"""``GPUSliceService``: the traitlets Application the hub starts as its managed service ``gpuslice``.

At start it makes the ledger's tables, discovers the GPUs (in a thread: NVML can block), tells the
ledger the inventory, and loads the profiles. A profiles directory with mistakes stops the service
with the whole list of them, because a service serving yesterday's quotas would be worse.

Then it assembles the service, each part built with the parts it uses: ledger -> allocator ->
job service -> batch scheduler (which the allocator lends idle dev GPUs to) -> web application.
The web application's routes are the REST API's (``api/``, one module per resource) and the
pages' (``pages.py``); every handler reaches the service's parts through the application's
settings, filled once in :meth:`GPUSliceService.make_web_app`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth
from tornado import web
from traitlets import Bool, Float, Int, TraitError, Type, Unicode, default, validate
from traitlets.config import Application

from spawner.config.profiles import ProfileConfigError, load_profiles
from spawner.core.placement import POLICIES
from spawner.enforce.mps import MPSError
from spawner.inventory import Inventory, InventoryConfigError, describe_pools
from spawner.ledger import Ledger
from spawner.ledger.jobs import JobStore

from . import lifetime
from .allocator import Allocator
from .api import NotFoundHandler, route_pattern
from .api import default_handlers as api_handlers
from .body_limit import ServiceWebApplication
from .checkpoints import CheckpointRetention
from .executor import Executor, LocalExecutor
from .heap import settle_collector
from .hub_users import HubUserDirectory
from .job_request import (
    DEFAULT_MAX_TIME_LIMIT_S,
    JobBodyError,
    describe_duration,
    parse_duration,
)
from .jobs import JobService
from .lifetime import PidFile, ServiceAlreadyRunning
from .log_filter import TORNADO_LOGS, EscapeControls
from .pages import STATIC_DIR, page_routes
from .paths import state_dir
from .reconcile import LeaseReconciler, NodeLossReconciler
from .scheduling import BatchScheduler
from .telemetry import GPUMonitor
from .telemetry.culling import IdleCuller
from .telemetry.mps_daemons import MPSDaemons


def routes(prefix: str, hub_auth: HubOAuth | None) -> list[tuple[str, type[web.RequestHandler]]]:
    """The tornado routes under ``prefix`` (e.g. ``/services/gpuslice/``): the REST API below
    ``api/v1/``, then the web pages and their OAuth callback."""
    api = [(route_pattern(prefix, template), handler) for template, handler in api_handlers]
    return api + page_routes(prefix, hub_auth)


class GPUSliceService(Application):
    """The allocator service: owns the ledger and serves the REST API under the service prefix."""

    name = "gpuslice-service"
    description = "The gpuslice JupyterHub service: the one owner of the GPU ledger."
    classes = [
        Inventory,
        HubUserDirectory,
        HubOAuth,
        LeaseReconciler,
        NodeLossReconciler,
        JobService,
        LocalExecutor,
        BatchScheduler,
        CheckpointRetention,
        GPUMonitor,
        IdleCuller,
        MPSDaemons,
    ]

    cluster = None
    """The cluster's nodes (``spawner.inventory.kube.ClusterNodes``) when the inventory's source is
    "kubernetes": read by :meth:`prepare_allocator`, then followed by NodeLossReconciler."""

    @default("log_level")
    def _default_log_level(self) -> int:
        # Like JupyterHub's own apps: an admin reading the hub's output should see the inventory,
        # the profiles and every lease the service releases on its own.
        return logging.INFO

    config_file = Unicode(
        "",
        help="A Python config file (c.GPUSliceService.*, c.Inventory.*) to load before the command line.",
    ).tag(config=True)

    ledger_url = Unicode(
        help="""
        Database URL of the ledger. Default: SQLite in $GPUSLICE_STATE_DIR (or ./var),
        sqlite:///var/gpuslice.sqlite. Use postgresql+psycopg://... for PostgreSQL.
        """,
    ).tag(config=True)

    @default("ledger_url")
    def _default_ledger_url(self) -> str:
        return f"sqlite:///{state_dir() / 'gpuslice.sqlite'}"

    profiles_dir = Unicode(
        "profiles",
        help="Directory of profile and quota *.yaml files (see profiles/default.yaml).",
    ).tag(config=True)

    placement_policy = Unicode(
        "default",
        help=f"Placement policy that picks GPUs for a grant; one of {', '.join(POLICIES)}.",
    ).tag(config=True)

    reserve_cpu_and_memory = Bool(
        False,
        help="""
        Whether a grant also sets aside the profile's CPU and memory guarantee on the node.

        Off for the embedded default: local servers share the host's CPUs and memory with no
        guarantee, so counting them would refuse GPU slices for CPUs nobody holds. Turn it on where
        the spawner really reserves them (Kubernetes requests), so GPUs are not granted on nodes
        whose CPUs are already promised.
        """,
    ).tag(config=True)

    admin_scope = Unicode(
        "custom:gpuslice:admin",
        help="""
        The custom scope that makes a token a gpuslice admin: it sees and releases every lease and
        sees who holds each GPU. Declare it in c.JupyterHub.custom_scopes and grant it by a role.
        """,
    ).tag(config=True)

    hub_admins_are_admins = Bool(
        True,
        help="Whether hub admins (tokens with admin:users) are gpuslice admins too, without the admin scope.",
    ).tag(config=True)

    service_name = Unicode(
        help="The service's name in the hub; $JUPYTERHUB_SERVICE_NAME, else 'gpuslice'.",
    ).tag(config=True)

    @default("service_name")
    def _default_service_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "gpuslice")

    service_url = Unicode(
        help="Where the service listens; $JUPYTERHUB_SERVICE_URL, set by the hub for a managed service.",
    ).tag(config=True)

    @default("service_url")
    def _default_service_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    service_prefix = Unicode(
        help="URL prefix the proxy routes to the service: $JUPYTERHUB_SERVICE_PREFIX or /services/<name>/.",
    ).tag(config=True)

    @default("service_prefix")
    def _default_service_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{self.service_name}/")

    pid_file = Unicode(
        "",
        help="""
        File to write the service's process id to while it runs (for tests and supervisors). It is
        also what keeps a second service off the same ledger: a service refuses to start while the
        one named there is alive (it holds the file locked), and takes over a file whose service is
        dead. See spawner/service/lifetime.py.
        """,
    ).tag(config=True)

    stop_with_hub = Bool(
        help="""
        Stop when the process that started the service dies. On by default for a service the hub
        started (it sets $JUPYTERHUB_SERVICE_NAME): a hub killed with SIGKILL then leaves no service
        behind holding the port its successor's service needs. Turn it off only where something
        else stops the service (an external service under systemd, say).
        """,
    ).tag(config=True)

    @default("stop_with_hub")
    def _default_stop_with_hub(self) -> bool:
        return lifetime.started_by_a_hub()

    hub_check_seconds = Float(
        5.0,
        help="""
        How often (seconds) the service looks whether the hub that started it is still its parent,
        for when the kernel's death signal could not tell it (stop_with_hub).
        """,
    ).tag(config=True)

    cookie_secret_file = Unicode(
        help="""
        File holding the secret that signs the web pages' login and XSRF cookies (hex, made once,
        mode 0600). Kept in a file, as the hub keeps its own, so that a restarted service still
        accepts the cookies of people who are logged in. Default: $GPUSLICE_STATE_DIR (or ./var)
        /gpuslice_cookie_secret.
        """,
    ).tag(config=True)

    @default("cookie_secret_file")
    def _default_cookie_secret_file(self) -> str:
        return str(state_dir() / "gpuslice_cookie_secret")

    max_body_bytes = Int(
        None,
        allow_none=True,
        help="""
        The largest request body (bytes) the service reads; a bigger one is answered 413 with a JSON
        message from its headers alone, before any of it is read (and so never held in memory).

        Default: room for the largest %%submit cell a job may carry (JobService.max_cell_payload_bytes,
        which travels in base64, 4/3 of its size) and the largest script (JobService.max_payload_bytes),
        plus 16 MiB for the rest of the body: 101 MiB with the default 64 MiB cell limit. Set it
        explicitly only to go lower or higher than the jobs' own limits need.
        """,
    ).tag(config=True)

    max_time_limit = Unicode(
        describe_duration(DEFAULT_MAX_TIME_LIMIT_S),
        help="""
        The longest time limit a batch job may ask for ('30d', '12h' or seconds); a longer one is
        refused at submission with a 400 that names this limit. Jobs that must run longer save
        checkpoints and continue in a new job, so that no GPU is held past what an admin allows.
        """,
    ).tag(config=True)

    def body_limit(self, jobs: JobService) -> int:
        """``max_body_bytes``, or the default it describes for these jobs' limits."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        largest = max(jobs.max_cell_payload_bytes, jobs.max_payload_bytes)
        return -(-largest * 4 // 3) + 16 * 2**20

    @validate("max_time_limit")
    def _valid_max_time_limit(self, proposal: dict[str, Any]) -> str:
        # Checked when the configuration is read: 'inf' or '0' stops the service before it serves.
        try:
            parse_duration(proposal["value"])
        except JobBodyError as error:
            sentence = str(error).removeprefix("time_limit: ")
            raise TraitError(f"GPUSliceService.max_time_limit: {sentence}") from None
        return proposal["value"]

    def max_time_limit_s(self) -> float:
        """``max_time_limit`` in seconds."""
        return parse_duration(self.max_time_limit)

    monitor_gpus = Bool(
        True,
        help="""
        Whether the service samples the GPUs of this host (GPUMonitor.*): per-card use, slices held
        to their size, busy hours and GPU-hours in the ledger and the metrics, the usage page.
        Keep it on in Kubernetes too, with GPUMonitor.source = 'dcgm' and GPUMonitor.dcgm_urls
        (the DCGM exporters' pages; see deploy/dcgm.md); turn it off only where no GPU figures
        are wanted.
        """,
    ).tag(config=True)

    gc_young_threshold = Int(
        50_000,
        help="""
        Allocations between two collections of young objects by Python's cycle collector (the
        first value of gc.set_threshold; CPython's default is 700, sized for short scripts). The
        service allocates many short-lived objects per request while it holds a large
        long-lived heap (the queue, the pass's snapshot, the listings' kept objects); at 700 a
        busy service spent about a twelfth of its time rescanning that heap and found nothing to
        free. Objects built at start-up are frozen out of the collector's sight as well
        (spawner/service/heap.py). 0 keeps Python's thresholds.
        """,
    ).tag(config=True)

    executor_class = Type(
        LocalExecutor,
        klass=Executor,
        help="""
        What runs batch jobs: an Executor subclass, or its import name.

        - spawner.service.executor.LocalExecutor (the default): processes on this host, on the GPUs
          the allocator chose; runs are kept under $GPUSLICE_STATE_DIR/jobs unless
          LocalExecutor.jobs_dir says otherwise.
        - spawner.service.executor.kube.KubeJobExecutor: one Kubernetes Job per run on the training
          node pool (KubeJobExecutor.*; deploy/z2jh/values.yaml). Its logs are kept under
          $GPUSLICE_STATE_DIR/kube-job-logs and it reads the pools' node selectors from this
          service's profiles_dir, unless KubeJobExecutor.logs_dir / profiles_dir say otherwise.
        """,
    ).tag(config=True)

    aliases = {
        "config": "GPUSliceService.config_file",
        "ledger-url": "GPUSliceService.ledger_url",
        "profiles-dir": "GPUSliceService.profiles_dir",
        "pid-file": "GPUSliceService.pid_file",
    }

    def initialize(self, argv=None) -> None:
        self.parse_command_line(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            # The command line wins over the file, as in JupyterHub.
            self.update_config(self.cli_config)
        # On the loggers, not their handlers: traitlets replaces the handlers when logging is
        # reconfigured, and every part of the service logs through the application's logger.
        escaping = EscapeControls()
        for logger in (self.log, *(logging.getLogger(f"tornado.{name}") for name in TORNADO_LOGS)):
            logger.addFilter(escaping)
        self.inventory = Inventory(parent=self)
        # HubOAuth, not HubAuth: API tokens work as before, and the web pages log people in
        # through the hub's OAuth, leaving a cookie that the pages' own API calls use too.
        self.hub_auth = HubOAuth(parent=self)
        # Cookies and the OAuth callback live under the service's prefix unless configured otherwise.
        configured = {**self.config.get("HubAuth", {}), **self.config.get("HubOAuth", {})}
        if "base_url" not in configured:
            self.hub_auth.base_url = self.service_prefix
        self.users = HubUserDirectory(parent=self)
        if not self.users.api_url:
            self.users.api_url = self.hub_auth.api_url
        if not self.users.api_token:
            self.users.api_token = self.hub_auth.api_token

    async def prepare_allocator(self) -> Allocator:
        """Tables, inventory and profiles, each blocking step in a worker thread."""
        ledger = Ledger(self.ledger_url)
        await asyncio.to_thread(ledger.create_schema)
        if self.inventory.source == "kubernetes":
            # Read once here and followed by a watch once the service runs (NodeLossReconciler).
            self.cluster = await self.inventory.cluster_nodes()
            nodes = list(self.cluster.nodes.values())
        else:
            nodes = await self.inventory.discover_async()
        synced = await asyncio.to_thread(ledger.sync_inventory, nodes)
        gpus = sum(len(node.gpus) for node in nodes)
        self.log.info("inventory: %d GPUs on %d nodes (%d new)", gpus, len(nodes), len(synced.added))
        self.log.info("GPU pools: %s", describe_pools(nodes))
        profiles = await asyncio.to_thread(load_profiles, self.profiles_dir)
        self.log.info("profiles: %d from %s", len(profiles), self.profiles_dir)
        return Allocator(ledger, profiles, self.users, self.placement_policy, self.reserve_cpu_and_memory)

    def make_job_service(self, allocator: Allocator) -> JobService:
        """The jobs in the ledger, run by ``executor_class``; where the executor keeps what
        outlives a run (local runs, Job logs) defaults to $GPUSLICE_STATE_DIR, and its profiles
        (the Job executor's pools) to this service's, unless its own configuration says otherwise."""
        executor = self.executor_class(parent=self)
        configured = self.config.get(type(executor).__name__, {})
        service_defaults = {
            "jobs_dir": str(state_dir() / "jobs"),
            "logs_dir": str(state_dir() / "kube-job-logs"),
            "profiles_dir": self.profiles_dir,
        }
        for name, value in service_defaults.items():
            if executor.has_trait(name) and name not in configured:
                setattr(executor, name, value)
        return JobService(JobStore(allocator.ledger), allocator, executor, parent=self)

    def cookie_secret(self) -> bytes:
        """The secret that signs cookies, read from ``cookie_secret_file`` or made there once."""
        path = Path(self.cookie_secret_file)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created with mode 0600 from the start: the secret is never readable by others.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as secret_file:
                secret_file.write(secrets.token_hex(32) + "\n")
        return bytes.fromhex(path.read_text().strip())

    def make_web_app(
        self,
        allocator: Allocator,
        jobs: JobService,
        monitor: GPUMonitor | None = None,
        mps: MPSDaemons | None = None,
    ) -> web.Application:
        """The tornado application; its settings are how every handler reaches the service's parts
        (``self.allocator``, ``self.jobs``, ``self.hub_auth``, ... on the handlers' base)."""
        return ServiceWebApplication(
            routes(self.service_prefix, self.hub_auth),
            allocator=allocator,
            jobs=jobs,
            monitor=monitor,
            mps=mps,
            hub_auth=self.hub_auth,
            service_name=self.service_name,
            service_prefix=self.service_prefix,
            admin_scope=self.admin_scope,
            hub_admins_are_admins=self.hub_admins_are_admins,
            max_time_limit_s=self.max_time_limit_s(),
            max_body_bytes=self.body_limit(jobs),
            cookie_secret=self.cookie_secret(),
            # The pages' script and style sheet, served by tornado's StaticFileHandler.
            static_path=str(STATIC_DIR),
            static_url_prefix=f"{self.service_prefix}static/",
            # Every other path: a JSON 404, like every error of the service.
            default_handler_class=NotFoundHandler,
        )

    async def serve(self) -> None:
        if not self.stop_with_hub:
            lifetime.forget_the_hub()
        elif lifetime.hub_is_gone():
            self.log.critical("the hub that started this service is already gone; not starting")
            self.exit(1)
        # Before the ledger is touched: while another service runs on it, this one must not start.
        self._write_pid_file()
        allocator = await self.prepare_allocator()
        # Before any server can connect: the MPS limits a daemon sets hold from its first client.
        mps = MPSDaemons(parent=self)
        if mps.pools:
            nodes = await allocator.nodes()
            await mps.start_async(nodes, [profile.slice_request for profile in allocator.profiles])
        url = urlparse(self.service_url)
        jobs = self.make_job_service(allocator)
        scheduler = BatchScheduler(jobs, allocator, jobs.executor, parent=self)
        # Idle dev GPUs are lent to batch jobs; a slice that needs them has the scheduler stop them.
        allocator.lend_dev_gpus_to(scheduler)
        monitor = GPUMonitor(allocator.ledger, jobs.metrics, parent=self) if self.monitor_gpus else None
        if monitor is not None:
            users = self.users
            monitor.culler = IdleCuller(allocator.profiles, users.api_url, users.api_token, parent=self)
            monitor.mps = mps
        web_app = self.make_web_app(allocator, jobs, monitor, mps)
        # Tornado's own body limit too, behind BodyLimit's JSON 413 (which answers first).
        server = web_app.listen(
            url.port or 80, url.hostname or "127.0.0.1", max_body_size=web_app.settings["max_body_bytes"]
        )
        reconciling = LeaseReconciler(parent=self).start(allocator, self.users)
        cluster = self.cluster
        following = None
        if cluster is not None:  # the inventory is a cluster's nodes: follow them
            following = NodeLossReconciler(parent=self).start(cluster, allocator, jobs)
        scheduling = scheduler.start()
        # Checkpoints of jobs that ended long ago go; the jobs' results stay.
        pruning = CheckpointRetention(parent=self).start(jobs)
        if monitor is not None:
            monitor.start()
        self.log.info("gpuslice service at %s%s", self.service_url.rstrip("/"), self.service_prefix)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        watching = self.stop_with_hub and loop.create_task(
            lifetime.watch_the_hub(stopped.set, self.hub_check_seconds)
        )
        mps_watching = loop.create_task(mps.watch()) if mps.controls else None
        settle_collector(self.gc_young_threshold)
        try:
            await stopped.wait()
        finally:
            if watching:
                watching.cancel()
            if reconciling is not None:
                reconciling.stop()
            if following is not None:
                following.cancel()
                await cluster.api_client.close()
            scheduler.stop()
            pruning.stop()
            scheduling.cancel()
            if monitor is not None:
                # Writes the accounting not yet in the ledger: a restart loses none of it.
                await monitor.stop()
            if mps_watching is not None:
                mps_watching.cancel()
            await mps.stop_async()
            server.stop()
            if hasattr(jobs.executor, "close"):
                await jobs.executor.close()  # the Job executor's API client
            allocator.ledger.close()
            self._remove_pid_file()

    def _write_pid_file(self) -> None:
        """Hold the pid file, or raise ServiceAlreadyRunning naming the live service that does."""
        if self.pid_file:
            self._pid_file = PidFile(self.pid_file)
            self._pid_file.claim()
            if self._pid_file.taken_over:
                gone = self._pid_file.taken_over
                self.log.info("pid file %s of pid %d (no longer running) taken over", self.pid_file, gone)

    def _remove_pid_file(self) -> None:
        if getattr(self, "_pid_file", None) is not None:
            self._pid_file.release()

    def start(self) -> None:
        try:
            asyncio.run(self.serve())
        except (ProfileConfigError, InventoryConfigError, ServiceAlreadyRunning, MPSError) as error:
            self.log.critical("gpuslice service cannot start:\n%s", error)
            self.exit(1)
        finally:
            self._remove_pid_file()


def main(argv=None) -> None:
    service = GPUSliceService.instance()
    service.initialize(argv)
    service.start()
    sys.exit(0)
