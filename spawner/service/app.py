"""``GPUSliceService``: the traitlets Application the hub starts as its managed service ``gpuslice``.

At start it makes the ledger's tables, discovers the GPUs (in a thread: NVML can block), tells the
ledger the inventory, and loads the profiles. A profiles directory with mistakes stops the service
with the whole list of them, because a service serving yesterday's quotas would be worse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth
from tornado import web
from traitlets import Bool, Unicode, default
from traitlets.config import Application

from spawner.core.placement import POLICIES
from spawner.hub.profiles import ProfileConfigError, load_profiles
from spawner.inventory import Inventory, InventoryConfigError, describe_pools
from spawner.ledger import Ledger
from spawner.ledger.jobs import JobStore

from .allocator import Allocator
from .executor import LocalExecutor
from .handlers import handlers
from .hub_users import HubUserDirectory
from .jobs import JobService
from .pages import STATIC_DIR
from .paths import state_dir
from .reconcile import LeaseReconciler
from .scheduling import BatchScheduler


class GPUSliceService(Application):
    """The allocator service: owns the ledger and serves the REST API under the service prefix."""

    name = "gpuslice-service"
    description = "The gpuslice JupyterHub service: the one owner of the GPU ledger."
    classes = [
        Inventory,
        HubUserDirectory,
        HubOAuth,
        LeaseReconciler,
        JobService,
        LocalExecutor,
        BatchScheduler,
    ]

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
        help="File to write the service's process id to while it runs (for tests and supervisors).",
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
        nodes = await self.inventory.discover_async()
        synced = await asyncio.to_thread(ledger.sync_inventory, nodes)
        gpus = sum(len(node.gpus) for node in nodes)
        self.log.info("inventory: %d GPUs on %d nodes (%d new)", gpus, len(nodes), len(synced.added))
        self.log.info("GPU pools: %s", describe_pools(nodes))
        profiles = await asyncio.to_thread(load_profiles, self.profiles_dir)
        self.log.info("profiles: %d from %s", len(profiles), self.profiles_dir)
        return Allocator(ledger, profiles, self.users, self.placement_policy, self.reserve_cpu_and_memory)

    def make_job_service(self, allocator: Allocator) -> JobService:
        """The jobs in the ledger, run by local processes; the executor keeps its runs in
        $GPUSLICE_STATE_DIR/jobs unless LocalExecutor.jobs_dir says otherwise."""
        executor = LocalExecutor(parent=self)
        if "jobs_dir" not in self.config.get("LocalExecutor", {}):
            executor.jobs_dir = str(state_dir() / "jobs")
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

    def make_web_app(self, allocator: Allocator, jobs: JobService | None = None) -> web.Application:
        settings = {
            "allocator": allocator,
            "hub_auth": self.hub_auth,
            "service_name": self.service_name,
            "admin_scope": self.admin_scope,
            "hub_admins_are_admins": self.hub_admins_are_admins,
        }
        return web.Application(
            handlers(self.service_prefix, settings),
            jobs=jobs,
            cookie_secret=self.cookie_secret(),
            # The pages' script and style sheet, served by tornado's StaticFileHandler.
            static_path=str(STATIC_DIR),
            static_url_prefix=f"{self.service_prefix}static/",
        )

    async def serve(self) -> None:
        allocator = await self.prepare_allocator()
        url = urlparse(self.service_url)
        jobs = self.make_job_service(allocator)
        scheduler = BatchScheduler(parent=self)
        web_app = self.make_web_app(allocator, jobs)
        # POST leases asks the scheduler to take dev GPUs back from batch jobs for a slice.
        web_app.settings["scheduler"] = scheduler
        server = web_app.listen(url.port or 80, url.hostname or "127.0.0.1")
        reconciling = LeaseReconciler(parent=self).start(allocator, self.users)
        scheduling = scheduler.start(jobs)
        self.log.info("gpuslice service at %s%s", self.service_url.rstrip("/"), self.service_prefix)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        self._write_pid_file()
        try:
            await stopped.wait()
        finally:
            if reconciling is not None:
                reconciling.stop()
            scheduler.stop()
            scheduling.cancel()
            server.stop()
            allocator.ledger.close()
            self._remove_pid_file()

    def _write_pid_file(self) -> None:
        if self.pid_file:
            Path(self.pid_file).write_text(f"{os.getpid()}\n")

    def _remove_pid_file(self) -> None:
        if self.pid_file:
            Path(self.pid_file).unlink(missing_ok=True)

    def start(self) -> None:
        try:
            asyncio.run(self.serve())
        except (ProfileConfigError, InventoryConfigError) as error:
            self.log.critical("gpuslice service cannot start:\n%s", error)
            self.exit(1)


def main(argv=None) -> None:
    service = GPUSliceService.instance()
    service.initialize(argv)
    service.start()
    sys.exit(0)
