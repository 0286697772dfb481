"""Who a user is in the hub (groups, admin flag), asked of the hub's REST API and kept briefly.

Profile visibility and the group a lease is charged to depend on the user's groups, which live in
the hub, not here. Asking on every request would put the hub on the path of every availability
poll, so answers are kept for ``cache_seconds``; a group change shows after at most that long.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable


class UnknownUserError(LookupError):
    """The hub has no user of that name."""


@dataclass(frozen=True)
class HubUser:
    name: str
    groups: frozenset[str]
    admin: bool


class HubUserDirectory(LoggingConfigurable):
    """Looks users up in the hub with the service's own token."""

    api_url = Unicode(
        help="The hub's REST API URL; JupyterHub sets it for its services as $JUPYTERHUB_API_URL.",
    ).tag(config=True)

    api_token = Unicode(
        help="Token to read users with; the service's own $JUPYTERHUB_API_TOKEN by default.",
    ).tag(config=True)

    cache_seconds = Float(
        30.0,
        help="How long a user's groups and admin flag are kept before the hub is asked again.",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._cache: dict[str, tuple[float, HubUser]] = {}

    async def _model(self, name: str) -> dict:
        url = f"{self.api_url.rstrip('/')}/users/{quote(name, safe='')}"
        request = HTTPRequest(url, headers={"Authorization": f"token {self.api_token}"}, request_timeout=10)
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as error:
            if error.code == 404:
                raise UnknownUserError(f"the hub has no user {name!r}") from error
            raise
        return json.loads(response.body)

    async def server_names(self, name: str) -> frozenset[str] | None:
        """Names of the user's servers the hub knows now (running or starting; "" is the default
        server), never cached; None when the hub has no such user any more.

        Raises :class:`PermissionError` when the hub hides servers from this token (no
        ``read:servers`` scope): guessing "no servers" then would release every lease.
        """
        try:
            model = await self._model(name)
        except UnknownUserError:
            return None
        if "servers" not in model:
            raise PermissionError(
                "the hub did not list servers for the gpuslice service; give its role the "
                "'read:servers' scope so leases of stopped servers can be released"
            )
        return frozenset(model["servers"] or ())

    async def get(self, name: str) -> HubUser:
        """The user ``name``; raises :class:`UnknownUserError` when the hub has none."""
        cached = self._cache.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        model = await self._model(name)
        groups = frozenset(model.get("groups") or ())
        user = HubUser(name=model["name"], groups=groups, admin=bool(model.get("admin")))
        self._cache[name] = (time.monotonic(), user)
        return user
