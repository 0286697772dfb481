"""The notebook server's side of the JupyterLab extension (``labextension/``): the slice this server
holds, and the user's jobs, through the server's own token.

The browser never holds a token of the hub's: the JupyterLab panel calls these handlers under the
server's URL (``<base_url>gpuslice/``), authenticated as every request to the server is, and they
call the service's API with ``JUPYTERHUB_API_TOKEN``, the token ``%%submit`` uses in the kernel. So
the panel can do what a cell of this server can, and less: read the user's jobs, their logs and
results summaries and the GPU monitor's notices about their slices (the lab shows each new one
once as a notification), and cancel one. It cannot submit (that is ``%%submit``'s) nor reach any other
path of the service.

Enabled by ``jupyter_server_config.d/jupyterhub-gpuslice.json`` (installed with the package into
``<prefix>/etc/jupyter``) as the server extension ``spawner.magic``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import urlencode

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

PREFIX = "gpuslice"
"""Where the handlers live under the server's base URL."""
JOB_ID = r"job-[0-9a-z]+"
SERVICE_PATHS: dict[str, list[re.Pattern[str]]] = {
    "GET": [
        re.compile(r"jobs"),
        re.compile(rf"jobs/{JOB_ID}"),
        re.compile(rf"jobs/{JOB_ID}/logs"),
        re.compile(rf"jobs/{JOB_ID}/result"),
        re.compile(r"notices"),
    ],
    "POST": [re.compile(rf"jobs/{JOB_ID}/cancel")],
}
"""The service's paths the panel may reach, by method: reading jobs, their logs and results, the
GPU monitor's notices (over slice, stopped), and cancelling one. Anything else answers 404 here,
whatever the token could do."""
QUERY_ARGUMENTS = frozenset({"state", "all", "offset", "follow"})
"""The query arguments passed on (the listing's filters, the log's offset and follow)."""
REQUEST_TIMEOUT_S = 60.0
"""Longer than the service's wait on a followed log (``JobService.log_follow_seconds``, 20 s)."""


def service_api() -> tuple[str, str]:
    """The service's API URL and the server's token, from the environment our spawners set."""
    url = os.environ.get("GPUSLICE_SERVICE_URL", "")
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not url or not token:
        raise web.HTTPError(
            503,
            "this server was not started by the gpuslice spawner (GPUSLICE_SERVICE_URL or "
            "JUPYTERHUB_API_TOKEN is not set), so it cannot reach the jobs service",
        )
    return url.rstrip("/") + "/api/v1/", token


def server_owner() -> str:
    """The user this server belongs to. The notices are always asked for them by name: an admin's
    server token may read everyone's, and their lab should still show only their own."""
    user = os.environ.get("JUPYTERHUB_USER", "")
    if not user:
        raise web.HTTPError(503, "JUPYTERHUB_USER is not set: this server was not started by a JupyterHub")
    return user


def server_slice(environment: dict[str, str]) -> dict[str, Any]:
    """The slice this server holds, as the spawner described it in the server's environment
    (:func:`spawner.enforce.env.slice_environment`): nothing for a CPU-only server."""
    milli = int(environment.get("GPUSLICE_MILLI_GPU") or 0)
    uuids = [uuid for uuid in environment.get("GPUSLICE_GPU_UUIDS", "").split(",") if uuid]
    return {
        "profile": environment.get("GPUSLICE_PROFILE", ""),
        "milli_gpu": milli,
        "gpus": int(environment.get("GPUSLICE_GPUS") or len(uuids)),
        "memory_mib": int(environment.get("GPUSLICE_GPU_MEMORY_MIB") or 0),
        "gpu_uuids": uuids,
        "node": environment.get("GPUSLICE_NODE", ""),
        "simulated": environment.get("GPUSLICE_SIMULATED") == "1",
        "model": "",
        "memory_used_mib": None,
    }


async def call_service(method: str, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
    """The service's status and body for one call with the server's token (errors included: the
    service's own sentence goes back to the panel as it is)."""
    api, token = service_api()
    url = api + path + (f"?{urlencode(query)}" if query else "")
    request = HTTPRequest(
        url,
        method=method,
        headers={"Authorization": f"token {token}", "Accept": "application/json"},
        body=b"" if method == "POST" else None,
        request_timeout=REQUEST_TIMEOUT_S,
    )
    try:
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
    except (OSError, HTTPClientError) as error:
        raise web.HTTPError(
            502, f"the gpuslice service at {api} cannot be reached ({type(error).__name__}); try again later"
        ) from None
    if response.code == 599:
        raise web.HTTPError(502, f"the gpuslice service at {api} did not answer ({response.error})")
    return response.code, response.body or b""


class SliceHandler(APIHandler):
    """``GET <base_url>gpuslice/slice``: the slice of this server, with its GPU model from the service."""

    @web.authenticated
    async def get(self) -> None:
        held = server_slice(dict(os.environ))
        if held["gpu_uuids"] and os.environ.get("GPUSLICE_SERVICE_URL"):
            status, body = await call_service("GET", "gpus")
            if status == 200:
                known = {gpu["uuid"]: gpu for gpu in json.loads(body).get("gpus", [])}
                first = known.get(held["gpu_uuids"][0], {})
                held["model"] = first.get("model", "")
                held["gpu_memory_mib"] = first.get("memory_mib")
        self.finish(json.dumps(held))


class ServiceProxyHandler(APIHandler):
    """``<base_url>gpuslice/api/<path>``: the service's jobs API, for the paths of
    :data:`SERVICE_PATHS` only, with the server's token."""

    async def forward(self, method: str, path: str) -> None:
        if not any(pattern.fullmatch(path) for pattern in SERVICE_PATHS.get(method, [])):
            raise web.HTTPError(404, f"{method} {path} is not something the jobs panel can do")
        query = {
            name: self.get_query_argument(name)
            for name in QUERY_ARGUMENTS
            if self.get_query_argument(name, None) is not None
        }
        if path == "notices":
            query["user"] = server_owner()
        status, body = await call_service(method, path, query)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    @web.authenticated
    async def get(self, path: str) -> None:
        await self.forward("GET", path)

    @web.authenticated
    async def post(self, path: str) -> None:
        await self.forward("POST", path)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Mount the handlers under the server's base URL."""
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, PREFIX, "slice"), SliceHandler),
            (url_path_join(base, PREFIX, "api", "(.*)"), ServiceProxyHandler),
        ],
    )
    serverapp.log.info("gpuslice: the jobs panel's handlers are at %s", url_path_join(base, PREFIX))
