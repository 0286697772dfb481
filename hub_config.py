"""The embedded default: everything on one machine, started by ``make run``.

Every setting an admin would change is an environment variable here (``GPUSLICE_*``) or a
JupyterHub option that can be overridden in a config file loaded after this one.

- Hub on ``GPUSLICE_BIND_URL`` (default http://127.0.0.1:8000), its state in ``GPUSLICE_STATE_DIR``
  (default ``./var``): the hub's SQLite database and cookie secret.
- Proxy: the pure-Python configurable-http-proxy from PyPI, so ``pip install`` is the whole setup.
- Login: one shared password for the quick start (never an open login). Set
  ``GPUSLICE_PASSWORD`` (8+ characters), or one is generated into ``var/quickstart-password``
  and printed at start-up. Real deployments set ``c.JupyterHub.authenticator_class`` to their
  own (OAuth, LDAP, PAM) in a config file of their own.
- ``GPUSLICE_SPAWNER=gpuslice-local``: the shared GPU server (the hub as root, servers and jobs as
  the users' own system accounts, who log in with their system passwords through PAM); see the
  README's "A shared GPU server" and ``deploy/``.
"""

import os
import secrets
import shutil
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

HERE = Path(__file__).resolve().parent
STATE_DIR = Path(os.environ.get("GPUSLICE_STATE_DIR", HERE / "var")).resolve()
STATE_DIR.mkdir(parents=True, exist_ok=True)

c.JupyterHub.bind_url = os.environ.get("GPUSLICE_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("GPUSLICE_HUB_PORT", "8081"))
c.JupyterHub.db_url = os.environ.get("GPUSLICE_HUB_DB_URL", f"sqlite:///{STATE_DIR / 'jupyterhub.sqlite'}")
c.JupyterHub.cookie_secret_file = str(STATE_DIR / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(STATE_DIR / "jupyterhub.pid")
c.ConfigurableHTTPProxy.pid_file = str(STATE_DIR / "proxy.pid")
c.ConfigurableHTTPProxy.api_url = os.environ.get("GPUSLICE_PROXY_API_URL", "http://127.0.0.1:8001")

# The pure-Python proxy installs beside this interpreter; prefer it over any Node.js one on PATH.
proxy = Path(sys.executable).with_name("configurable-http-proxy")
c.ConfigurableHTTPProxy.command = [str(proxy) if proxy.exists() else shutil.which("configurable-http-proxy")]


def quickstart_password() -> str:
    """The shared quick-start password: from the environment, or generated once and kept."""
    configured = os.environ.get("GPUSLICE_PASSWORD")
    if configured:
        return configured
    password_file = STATE_DIR / "quickstart-password"
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(12) + "\n")
        password_file.chmod(0o600)
    return password_file.read_text().strip()


SPAWNER = os.environ.get("GPUSLICE_SPAWNER", "gpuslice-local-simple")
SHARED_SERVER = SPAWNER == "gpuslice-local"
"""Servers and jobs run as the users' own system accounts (README, "A shared GPU server")."""

c.Authenticator.allow_all = True
c.Authenticator.admin_users = set(filter(None, os.environ.get("GPUSLICE_ADMIN_USERS", "").split(",")))
if SHARED_SERVER:
    # The name one logs in with picks the system account the server and jobs run as, so it is
    # proven with that account's own password (PAM); a shared password would hand out any account.
    c.JupyterHub.authenticator_class = "pam"
else:
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = quickstart_password()
    if c.Authenticator.admin_users:
        c.SharedPasswordAuthenticator.admin_password = os.environ.get("GPUSLICE_ADMIN_PASSWORD")

# Profiles and quotas: the dropdown's choices and the limits the service enforces (profiles/*.yaml).
PROFILES_DIR = Path(os.environ.get("GPUSLICE_PROFILES_DIR", HERE / "profiles")).resolve()
LEDGER_URL = os.environ.get("GPUSLICE_LEDGER_URL", f"sqlite:///{STATE_DIR / 'gpuslice.sqlite'}")
SERVICE_URL = f"http://127.0.0.1:{os.environ.get('GPUSLICE_SERVICE_PORT', '10101')}"


def service_token() -> str:
    """The gpuslice service's own API token, generated once and kept; the spawner uses it too."""
    token_file = STATE_DIR / "gpuslice-api-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_hex(32) + "\n")
        token_file.chmod(0o600)
    return token_file.read_text().strip()


JOB_FILES_DIR = STATE_DIR / "job-scripts"
if SHARED_SERVER:
    # Jobs run as their owners reach their own files under the state directory; nothing else in
    # it is theirs to read (the ledger holds every job's cell and data).
    from spawner.hub.local import prepare_shared_state_dir

    for blocked in prepare_shared_state_dir(STATE_DIR, JOB_FILES_DIR, [c.JupyterHub.db_url, LEDGER_URL]):
        print(
            f"gpuslice: jobs cannot reach their files in {STATE_DIR}: other accounts cannot pass "
            f"through {blocked}; chmod o+x it, or set GPUSLICE_STATE_DIR elsewhere",
            file=sys.stderr,
        )


def service_executor_args() -> list[str]:
    """Batch jobs run as the same account as their owner's notebook server: their own with
    "gpuslice-local" (servers as system users), the hub's with the quick start's spawner."""
    if not SHARED_SERVER:
        return []
    return ["--LocalExecutor.run_as_owner=True", f"--JobService.scripts_dir={JOB_FILES_DIR}"]


def service_inventory_args() -> list[str]:
    """Where the service's GPUs come from: NVML, else simulated demo GPUs labelled simulated."""
    args = [f"--Inventory.source={os.environ.get('GPUSLICE_INVENTORY', 'auto')}"]
    if os.environ.get("GPUSLICE_SIMULATED_GPUS"):
        args.append(f"--Inventory.simulated_gpu_count={int(os.environ['GPUSLICE_SIMULATED_GPUS'])}")
    train_gpus = os.environ.get("GPUSLICE_TRAIN_GPUS", "").strip()
    if train_gpus.lower() == "none":
        # every GPU sliced for notebooks; batch jobs borrow them while they are idle
        args.append("--Inventory.train_share=0")
    elif train_gpus:
        # GPU indices of this host reserved for the training queue, e.g. "4,5,6,7"; unset, the
        # last half of the host's GPUs train (Inventory.train_share)
        indices = [int(index) for index in train_gpus.split(",") if index.strip()]
        args.append(f"--Inventory.train_gpu_indices={indices}")
    if os.environ.get("GPUSLICE_GPUS_FILE"):
        args.append(f"--Inventory.static_path={os.environ['GPUSLICE_GPUS_FILE']}")
    return args


def service_config_args() -> list[str]:
    """Everything else of the service (grace periods, the scheduler's interval, the placement
    policy) from a Python config file of c.JobService.*, c.BatchScheduler.*, ..., if given."""
    config_file = os.environ.get("GPUSLICE_SERVICE_CONFIG", "")
    return [f"--config={Path(config_file).resolve()}"] if config_file else []


# The companion service: the one owner of every GPU lease, started and stopped with the hub.
c.JupyterHub.services = [
    {
        "name": "gpuslice",
        "url": SERVICE_URL,
        "api_token": service_token(),
        "command": [
            sys.executable,
            "-m",
            "spawner.service",
            f"--ledger-url={LEDGER_URL}",
            f"--profiles-dir={PROFILES_DIR}",
            f"--pid-file={STATE_DIR / 'gpuslice.pid'}",
            *service_inventory_args(),
            *service_executor_args(),
            *service_config_args(),
        ],
        "cwd": str(HERE),
        # GPUSLICE_MPS_POOLS: the pools whose cards the service shares through one MPS daemon a
        # card (c.MPSDaemons.pools); the hub reads the same variable (GPUSliceSpawnerMixin.mps_pools).
        "environment": {
            "GPUSLICE_STATE_DIR": str(STATE_DIR),
            "GPUSLICE_MPS_POOLS": os.environ.get("GPUSLICE_MPS_POOLS", ""),
        },
        # Its web pages (my jobs; the admins' queue, GPUs and quotas) are in the hub's "Services"
        # menu and log people in through the hub's OAuth with no confirmation page: the hub's admin
        # runs the service. The login carries the service's admin scope, or admin:users for hub
        # admins, only where the person holds it, so that the admin page knows its admins.
        "display": True,
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": ["custom:gpuslice:admin", "admin:users"],
    }
]
c.JupyterHub.custom_scopes = {
    "custom:gpuslice:admin": {"description": "See and release every GPU lease in the gpuslice service."},
}
c.JupyterHub.load_roles = [
    # Every user may call the service (the %%submit magic, the CLI); what they may do, it decides.
    {"name": "user", "scopes": ["self", "access:services!service=gpuslice"]},
    # The service reads users' groups and admin flags to pick profiles and the quota group, and
    # their servers, to give back the slices of servers that are gone; it may stop a server, as
    # jupyterhub-idle-culler may, for the GPU-idle culling an admin turns on (IdleCuller.*), and
    # report a GPU-busy server's activity so that jupyterhub-idle-culler keeps it
    # (IdleCuller.report_gpu_activity).
    {
        "name": "gpuslice-service",
        "scopes": [
            "list:users",
            "read:users",
            "read:users:groups",
            "read:servers",
            "delete:servers",
            "users:activity",
        ],
        "services": ["gpuslice"],
    },
]


def groups_from_env(text: str) -> dict[str, dict[str, list[str]]]:
    """``"researchers=alice,bob;vision=carol"`` -> JupyterHub's ``load_groups``."""
    groups = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        name, _, members = entry.partition("=")
        groups[name.strip()] = {"users": [user.strip() for user in members.split(",") if user.strip()]}
    return groups


# Groups pick the profiles a user sees and the group quota they are charged to. Real deployments
# take groups from their authenticator (Authenticator.manage_groups) or the hub's admin page.
if os.environ.get("GPUSLICE_GROUPS"):
    c.JupyterHub.load_groups = groups_from_env(os.environ["GPUSLICE_GROUPS"])

# Servers are local processes, each holding a GPU slice leased from the service. The quick start
# runs them as the hub's own user; a shared server running the hub as root uses "gpuslice-local"
# to run each as the user's own account, and its jobs too.
c.JupyterHub.spawner_class = SPAWNER
c.Spawner.default_url = "/lab"
# The server's own token ($JUPYTERHUB_API_TOKEN, which %%submit and `gpuslice jobs` use inside
# it) may call the service too; JupyterHub's default server scopes do not reach services.
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=gpuslice",
]
c.GPUSliceSpawnerMixin.service_url = f"{SERVICE_URL}/services/gpuslice/"
c.GPUSliceSpawnerMixin.service_public_url = f"{c.JupyterHub.bind_url.rstrip('/')}/services/gpuslice/"
c.GPUSliceSpawnerMixin.service_api_token = service_token()
c.GPUSliceSpawnerMixin.profiles_dir = str(PROFILES_DIR)
c.GPUSliceSpawnerMixin.enforcement = os.environ.get("GPUSLICE_ENFORCEMENT", "env")
# Where the service's per-card MPS daemons live (its c.MPSDaemons.root default: <state dir>/mps).
c.GPUSliceSpawnerMixin.mps_root = str(STATE_DIR / "mps")

# How long a starting server may take to answer (seconds). JupyterHub's 30 s is short for
# JupyterLab on a small, busy machine; a server killed for slowness gives its slice back anyway.
c.Spawner.http_timeout = int(os.environ.get("GPUSLICE_HTTP_TIMEOUT", "90"))
c.Spawner.start_timeout = max(c.Spawner.http_timeout + 30, 120)

# Whether stopping the hub stops the servers (JupyterHub's default). With GPUSLICE_KEEP_SERVERS=1
# servers and their slices outlive a hub restart, and the restarted hub picks them up again.
# Either way no slice is lost: the service gives back, within minutes, the leases of servers the
# hub no longer has (the hub stops its services before its servers, so those cannot release).
c.JupyterHub.cleanup_servers = os.environ.get("GPUSLICE_KEEP_SERVERS", "0") != "1"

if SHARED_SERVER:
    print(
        f"gpuslice shared server: open {c.JupyterHub.bind_url} and log in with your system account's "
        "name and password",
        file=sys.stderr,
    )
else:
    print(
        f"gpuslice quick start: open {c.JupyterHub.bind_url} and log in with any user name and the "
        f"password in {STATE_DIR / 'quickstart-password'} (or $GPUSLICE_PASSWORD)",
        file=sys.stderr,
    )
