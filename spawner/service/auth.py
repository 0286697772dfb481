"""Who is calling, and what they may do: JupyterHub token authentication for the REST API.

Every API call carries a JupyterHub API token (``Authorization: token ...``); :class:`HubAuth`
asks the hub whose it is. Three kinds of caller matter:

- the service itself (its own ``$JUPYTERHUB_API_TOKEN``, which the spawner inside the hub uses):
  it may create, read and release leases for any user, by profile or by a raw slice request;
- admins: a token with the service's admin scope (``custom:gpuslice:admin`` by default) or,
  when ``hub_admins_are_admins`` is on, a hub admin's token (scope ``admin:users``): as the
  service itself;
- everyone else with access to the service (``access:services!service=gpuslice``): their own
  leases and availability only. A user asks for a lease by profile, for one of their own servers,
  and never releases one: a server's lease goes when the server stops (a notebook's own token must
  not free the GPU its server keeps using), a job's when the job ends or is cancelled. Another
  user's lease is, to them, a lease that does not exist (404).

Batch jobs' leases belong to the service alone, whoever asks: the scheduler grants them and gives
them back. The API handlers (``api/``) apply these rules; ``sees_everyone`` is the line between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HUB_ADMIN_SCOPE = "admin:users"
"""The scope that makes a token a hub admin's, for ``hub_admins_are_admins``."""


@dataclass(frozen=True)
class Requester:
    """The caller of one API request, as the hub identified its token."""

    name: str
    kind: str
    scopes: frozenset[str]
    is_service_itself: bool
    is_admin: bool

    @classmethod
    def from_model(
        cls, model: dict[str, Any], *, service_name: str, admin_scope: str, hub_admins_are_admins: bool
    ) -> Requester:
        kind = model.get("kind", "user")
        scopes = frozenset(model.get("scopes") or ())
        itself = kind == "service" and model["name"] == service_name
        admin = admin_scope in scopes or (hub_admins_are_admins and HUB_ADMIN_SCOPE in scopes)
        return cls(model["name"], kind, scopes, itself, admin)

    @property
    def sees_everyone(self) -> bool:
        """The service itself and admins act for any user and see who holds what; they also ask
        for raw slice requests and release servers' leases, which users may not."""
        return self.is_service_itself or self.is_admin

    def may_act_for(self, user: str) -> bool:
        return self.sees_everyone or (self.kind == "user" and self.name == user)

    def describe(self) -> str:
        return f"{self.kind} {self.name}"
