"""The body of ``POST leases``: its JSON Schema, and turning it into a slice request.

The schema refuses unknown fields (``additionalProperties: false``) so that a typo such as
``mili_gpu`` is reported instead of silently asking for a CPU-only server; every message says
which field to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from spawner.core.units import SliceRequest, SliceRequestError
from spawner.hub.profiles import ProfileSet
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
        "pool": {"type": "string", "enum": ["dev", "train"]},
    },
}

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
    group: str | None
    profile_slug: str | None
    slice_request: SliceRequest


def parse_lease_body(body: Any, profiles: ProfileSet) -> LeaseBody:
    """Check ``body`` against the schema and resolve the profile or explicit request."""
    problems = sorted(_VALIDATOR.iter_errors(body), key=lambda error: list(error.absolute_path))
    if problems:
        raise LeaseBodyError("; ".join(_describe(problem) for problem in problems))
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
        holder=body["holder"],
        group=body.get("group"),
        profile_slug=slug,
        slice_request=slice_request,
    )


def _describe(error: Any) -> str:
    where = "/".join(str(part) for part in error.absolute_path) or "body"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{where}: {error.message}; the allowed fields are {allowed}"
    if error.validator == "oneOf":
        return f"{where}: give exactly one of 'profile' (a profile slug) or 'request' (a slice request)"
    return f"{where}: {error.message}"
