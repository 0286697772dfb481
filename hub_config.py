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


c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = quickstart_password()
c.Authenticator.allow_all = True
c.Authenticator.admin_users = set(filter(None, os.environ.get("GPUSLICE_ADMIN_USERS", "").split(",")))
if c.Authenticator.admin_users:
    c.SharedPasswordAuthenticator.admin_password = os.environ.get("GPUSLICE_ADMIN_PASSWORD")

# Single-user servers run as the hub's own user in the quick start.
c.JupyterHub.spawner_class = "simple"
c.Spawner.default_url = "/lab"
# `make run` starts the hub from the virtual environment without activating it: run the
# single-user server that sits beside this interpreter, not whatever PATH may hold.
singleuser = Path(sys.executable).with_name("jupyterhub-singleuser")
if singleuser.exists():
    c.Spawner.cmd = [str(singleuser)]
if os.geteuid() == 0:
    # jupyter-server refuses to run as root unless told to; the quick start really does run it
    # as root when the hub is root, so say so explicitly (and only then).
    c.Spawner.args = ["--allow-root"]

print(
    f"gpuslice quick start: open {c.JupyterHub.bind_url} and log in with any user name and the "
    f"password in {STATE_DIR / 'quickstart-password'} (or $GPUSLICE_PASSWORD)",
    file=sys.stderr,
)
