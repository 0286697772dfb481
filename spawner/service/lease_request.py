"""The body of ``POST leases``: its JSON Schema, and turning it into a slice request and a holder.

The schema refuses unknown fields (``additionalProperties: false``) so that a typo such as
``mili_gpu`` is reported instead of silently asking for a CPU-only server; every message says
which field to change.

The *holder* of a lease is what gives it back (its format is spelled once, in
:mod:`spawner.core.vocabulary`):

- ``"<user>/<server>"``, a notebook server of the lease's own user (``"<user>/"`` for the default
  server): the spawner takes the lease when the server starts and releases it when it stops, and
  the service's reconciler releases it once the hub no longer has that server;
- a batch job's id: the scheduler grants those leases inside the service (never through the API)
  and gives them back when the job ends, is preempted or is cancelled;
- anything else only with an expiry (``expires_at``, Unix seconds), after which the reconciler
  releases the lease. The ledger keeps the expiry in the holder itself, as
  ``"<holder> until <ISO-8601 UTC>"`` (e.g. ``"maintenance until 2030-01-01T00:00:00Z"``), so that
  it survives restarts; a server's lease may carry an expiry too.

A holder that is neither a server of the lease's user nor given an expiry is refused: nothing would
ever give such a lease back. Who may ask how (raw requests and holders other than one's own
servers are for admins and the service) is decided by the API's lease handlers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from spawner.config.profiles import ProfileSet
from spawner.core.units import SliceRequest, SliceRequestError
from spawner.core.vocabulary import POOLS, expiring_holder, has_expiry, holder_expiry, server_of_holder
from spawner.ledger.store import MAX_LEASE_ID_LENGTH

SLICE_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "milli_gpu": {"type": "integer", "minimum": 1, "maximum": 1000},
        "gpus": {"type": "integer", "minimum": 0},
        "gpu_memory_mib": {"type": "integer", "minimum": 1},
        "cpu_milli": {"type": "integer", "minimum": 0},
        "memory_mib": {"type": "integer", "minimum": 0},
        "gpu_models": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "pool": {"type": "string", "enum": list(POOLS)},
    },
}

LATEST_EXPIRY = 253402300799
"""The last second of the year 9999 (UTC), the latest ``expires_at`` an ISO date can write."""

LEASE_BODY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["lease_id", "user", "holder"],
    "properties": {
        "lease_id": {"type": "string", "minLength": 1, "maxLength": MAX_LEASE_ID_LENGTH},
        "user": {"type": "string", "minLength": 1},
        "holder": {"type": "string", "minLength": 1},
        "group": {"type": "string", "minLength": 1},
        "profile": {"type": "string", "minLength": 1},
        "request": SLICE_REQUEST_SCHEMA,
        "expires_at": {"type": "number", "exclusiveMinimum": 0, "maximum": LATEST_EXPIRY},
    },
    "oneOf": [{"required": ["profile"]}, {"required": ["request"]}],
}

_VALIDATOR = Draft202012Validator(LEASE_BODY_SCHEMA)


class LeaseBodyError(ValueError):
    """A lease body that cannot be granted as written; the message says what to change."""


@dataclass(frozen=True)
class LeaseBody:
    lease_id: str
    user: str
    holder: str
    """The holder as the ledger keeps it, with the expiry if one was asked for."""
    group: str | None
    profile_slug: str | None
    slice_request: SliceRequest
    expires_at: float | None = None

    @property
    def server(self) -> str | None:
        """The name of the server of ``user`` that holds the lease, or None for another holder."""
        return server_of_holder(self.holder, self.user)

    def unreleasable(self) -> str | None:
        """Why nothing would ever give this lease back, or None: a holder that is not a server of
        its user, without an expiry."""
        if self.server is not None or self.expires_at is not None:
            return None
        return (
            f"holder: {self.holder!r} is not a server of user {self.user} ('{self.user}/' for the "
            f"default server, '{self.user}/<name>' for a named one), so nothing would ever give the "
            "lease back; hold it for one of the user's servers, or give 'expires_at' (Unix seconds) "
            "for the service to release it then"
        )


def parse_lease_body(body: Any, profiles: ProfileSet, now: float | None = None) -> LeaseBody:
    """Check ``body`` against the schema and resolve the profile or explicit request."""
    problems = sorted(_VALIDATOR.iter_errors(body), key=lambda error: list(error.absolute_path))
    if problems:
        raise LeaseBodyError("; ".join(_describe(problem) for problem in problems))
    holder, expires_at = body["holder"], body.get("expires_at")
    if has_expiry(holder):
        raise LeaseBodyError(
            f"holder: {holder!r} ends like an expiry; give the holder alone, and the expiry in "
            "'expires_at' (Unix seconds)"
        )
    if expires_at is not None:
        now = time.time() if now is None else now
        if not math.isfinite(expires_at) or expires_at <= now:
            raise LeaseBodyError(
                f"expires_at: {expires_at} is not a time in the future (Unix seconds, now {now:.0f}); "
                "give when the service should release the lease"
            )
        holder = expiring_holder(holder, expires_at)
    slug = body.get("profile")
    if slug is not None:
        profile = profiles.by_slug.get(slug)
        if profile is None:
            known = ", ".join(profiles.by_slug)
            raise LeaseBodyError(f"profile: no profile {slug!r}; choose one of {known}")
        slice_request = profile.slice_request
    else:
        fields = dict(body["request"])
        fields["gpu_models"] = frozenset(fields.get("gpu_models", ()))
        try:
            slice_request = SliceRequest(**fields)
        except SliceRequestError as error:
            raise LeaseBodyError(f"request: {error}") from error
    return LeaseBody(
        lease_id=body["lease_id"],
        user=body["user"],
        holder=holder,
        group=body.get("group"),
        profile_slug=slug,
        slice_request=slice_request,
        expires_at=holder_expiry(holder),
    )


def _describe(error: Any) -> str:
    where = "/".join(str(part) for part in error.absolute_path) or "body"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{where}: {error.message}; the allowed fields are {allowed}"
    if error.validator == "oneOf":
        return f"{where}: give exactly one of 'profile' (a profile slug) or 'request' (a slice request)"
    return f"{where}: {error.message}"
