"""The test hubs' JupyterHub config: ``hub_config.py`` as shipped, then only what a test asked for.

:class:`harness.hub.HubProcess` starts ``jupyterhub -f`` this file. It loads the repository's
``hub_config.py`` first, so that every test hub has the shipped roles, scopes, custom scopes,
services and spawner settings, and cannot drift from them. Ports, the state directory, the
inventory, profiles, groups and admin users come from the ``GPUSLICE_*`` variables
hub_config.py reads, as an admin's would. What hub_config.py has no variable for comes from one
more, ``GPUSLICE_TEST_HUB`` (JSON, written by HubProcess), and is only ever added on top:

- ``service_args``: more arguments of the gpuslice service (intervals, grace periods, node name),
  after hub_config.py's own so that they win;
- ``users``: the hub's only users, who log in with any password (JupyterHub's dummy
  authenticator); they exist from the start, so the hub's API can make their tokens at once;
- ``roles``: more roles, after the shipped ones (e.g. a user holding the service's admin scope);
- ``admin_token``: a ``test-admin`` service with this API token and the hub's ``admin`` role.

Without ``GPUSLICE_TEST_HUB`` the hub is hub_config.py's exactly.
"""

import json
import os
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
load_subconfig(str(Path(__file__).resolve().parents[2] / "hub_config.py"))  # noqa: F821 - likewise

overlay = json.loads(os.environ.get("GPUSLICE_TEST_HUB") or "{}")

if overlay.get("service_args"):
    (gpuslice,) = [service for service in c.JupyterHub.services if service["name"] == "gpuslice"]
    gpuslice["command"] = [*gpuslice["command"], *overlay["service_args"]]

if overlay.get("users") is not None:
    c.JupyterHub.authenticator_class = "dummy"
    c.Authenticator.allow_all = False
    c.Authenticator.allowed_users = set(overlay["users"])

if overlay.get("roles"):
    c.JupyterHub.load_roles = [*c.JupyterHub.load_roles, *overlay["roles"]]

if overlay.get("admin_token"):
    c.JupyterHub.services = [
        *c.JupyterHub.services,
        {"name": "test-admin", "api_token": overlay["admin_token"]},
    ]
    c.JupyterHub.load_roles = [*c.JupyterHub.load_roles, {"name": "admin", "services": ["test-admin"]}]
