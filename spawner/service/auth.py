"""Who is calling, and what they may do: JupyterHub token authentication for the REST API.

Every API call carries a JupyterHub API token (``Authorization: token ...``); :class:`HubAuth`
asks the hub whose it is. Three kinds of caller matter:

- the service itself (its own ``$JUPYTERHUB_API_TOKEN``, which the spawner inside the hub uses):
  it may create, read and release leases for any user;
- admins: a token with the service's admin scope (``custom:gpuslice:admin`` by default) or,
  when ``hub_admins_are_admins`` is on, a hub admin's token (scope ``admin:users``);
- everyone else with access to the service (``access:services!service=gpuslice``): their own
  leases and availability only.
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
        """The service itself and admins act for any user and see who holds what."""
        return self.is_service_itself or self.is_admin

    def may_act_for(self, user: str) -> bool:
        return self.sees_everyone or (self.kind == "user" and self.name == user)

    def describe(self) -> str:
        return f"{self.kind} {self.name}"
