"""A hub for the service tests: the gpuslice service managed by the hub, users in groups.

Everything that differs between runs comes from the environment the fixture sets
(``GPUSLICE_TEST_*``), so the file stays a plain JupyterHub config. It is not ``hub_config.py``:
it adds test users, a test admin service with a known token, and simulated GPUs.
"""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

env = os.environ
STATE = Path(env["GPUSLICE_TEST_STATE"])

c.JupyterHub.bind_url = env["GPUSLICE_TEST_HUB_URL"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(env["GPUSLICE_TEST_HUB_PORT"])
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(STATE / "jupyterhub.pid")
c.ConfigurableHTTPProxy.pid_file = str(STATE / "proxy.pid")
c.ConfigurableHTTPProxy.api_url = env["GPUSLICE_TEST_PROXY_API_URL"]
c.ConfigurableHTTPProxy.command = [str(Path(sys.executable).with_name("configurable-http-proxy"))]

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {"alice", "bob", "carol", "dana", "erin"}
c.Authenticator.admin_users = {"dana"}
c.JupyterHub.load_groups = {
    "researchers": {"users": ["alice"]},
    "students": {"users": ["bob"]},
}

c.JupyterHub.custom_scopes = {
    "custom:gpuslice:admin": {"description": "See and release every GPU lease in the gpuslice service."},
}
c.JupyterHub.load_roles = [
    # Every user may call the service; what they may do there, the service decides.
    {"name": "user", "scopes": ["self", "access:services!service=gpuslice"]},
    # The service reads users' groups and admin flags to pick profiles and quota groups.
    {
        "name": "gpuslice-service",
        "scopes": ["list:users", "read:users", "read:users:groups", "read:servers"],
        "services": ["gpuslice"],
    },
    {"name": "gpuslice-admin", "scopes": ["custom:gpuslice:admin"], "users": ["erin"]},
    {"name": "admin", "services": ["test-admin"]},
]

c.JupyterHub.services = [
    {
        "name": "gpuslice",
        "url": env["GPUSLICE_TEST_SERVICE_URL"],
        "api_token": env["GPUSLICE_TEST_SERVICE_TOKEN"],
        "command": [
            sys.executable,
            "-m",
            "spawner.service",
            f"--ledger-url=sqlite:///{STATE / 'gpuslice.sqlite'}",
            f"--profiles-dir={env['GPUSLICE_TEST_PROFILES']}",
            f"--pid-file={STATE / 'gpuslice.pid'}",
            "--Inventory.source=simulated",
            "--Inventory.simulated_gpu_count=2",
            "--Inventory.node_name=sim-node",
            # Both GPUs dev unless a test names its training GPUs (Inventory.train_gpu_indices).
            "--Inventory.train_share=0",
            # The API tests hold leases for servers that never run: only the reconciliation
            # tests let the reconciler release them (they set a short grace).
            *env.get("GPUSLICE_TEST_SERVICE_ARGS", "--LeaseReconciler.grace_seconds=3600").split(),
        ],
        "cwd": str(Path(__file__).resolve().parents[2]),
        # Batch job runs and scripts go under the test's state directory, not the checkout.
        "environment": {
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "GPUSLICE_STATE_DIR": str(STATE),
        },
        # As in hub_config.py: the pages log in through the hub's OAuth with no confirmation, and
        # the login carries the admin scope (erin) or admin:users (dana) where the user holds it.
        "display": True,
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": ["custom:gpuslice:admin", "admin:users"],
    },
    {"name": "test-admin", "api_token": env["GPUSLICE_TEST_ADMIN_TOKEN"]},
]
