"""The body of ``POST jobs``: its JSON Schema, time limits such as ``"12h"``, and size checks.

The schema refuses unknown fields (``additionalProperties: false``) so that a typo such as
``gpu`` is reported instead of silently running a job without a GPU; every message says which
field to change and how.

A job is either a ``script`` (Python source, run as ``python script.py``) or a ``cell``: the
payload ``%%submit`` packs (a base64 cloudpickle bundle) and the Python version that packed it.
The service checks the cell's size and encoding but never unpickles it; the runner does, as the
job's owner (:mod:`spawner.service.runner`), from the format in :mod:`spawner.core.cell_bundle`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

from spawner.core.units import describe_size
from spawner.core.vocabulary import CELL_PAYLOAD, PRIORITIES, SCRIPT_PAYLOAD, Priority

PYTHON_VERSION_PATTERN = r"^[0-9]+\.[0-9]+(\.[0-9]+)?([a-z0-9.+-]*)$"
ENVIRONMENT_NAME_PATTERN = r"^[^=\u0000]+$"
"""A variable's name: not empty, no ``=`` and no NUL, which ``execve`` cannot pass (the job would
vanish at start with an empty log instead of being refused here)."""
NO_NUL_PATTERN = r"^[^\u0000]*$"
"""Text handed to the operating system (a variable's value, the working directory): no NUL."""
MAX_PROVENANCE_DEPTH = 32
"""How deeply ``provenance`` may nest; what %%submit records (working directory, image, package
hash, git commit) is two levels deep."""
DEFAULT_MAX_TIME_LIMIT_S = 30 * 86400
"""The longest time limit a job may ask for unless the service is configured otherwise."""

JOB_BODY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "oneOf": [{"required": ["script"]}, {"required": ["cell"]}],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "script": {"type": "string", "minLength": 1},
        "cell": {
            "type": "object",
            "additionalProperties": False,
            "required": ["payload", "python"],
            "properties": {
                "payload": {"type": "string", "minLength": 1, "contentEncoding": "base64"},
                "python": {"type": "string", "pattern": PYTHON_VERSION_PATTERN},
            },
        },
        "workdir": {"type": "string", "minLength": 1, "pattern": NO_NUL_PATTERN},
        "gpus": {"type": "integer", "minimum": 0},
        "gpu_models": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "priority": {"type": "string", "enum": list(PRIORITIES)},
        "time_limit": {
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "number", "exclusiveMinimum": 0}]
        },
        "environment": {
            "type": "object",
            "propertyNames": {"pattern": ENVIRONMENT_NAME_PATTERN},
            "additionalProperties": {"type": "string", "pattern": NO_NUL_PATTERN},
        },
        "provenance": {"type": "object"},
    },
}

_VALIDATOR = Draft202012Validator(JOB_BODY_SCHEMA)

_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")


class JobBodyError(ValueError):
    """A job body that cannot be queued as written; the message says what to change."""


@dataclass(frozen=True)
class CellPayload:
    """A ``%%submit`` cell as the service keeps it: still pickled, with the Python that packed it."""

    payload: bytes
    python: str

    def to_stored(self) -> str:
        """The text the job store keeps for a cell job (its ``payload`` column)."""
        return json.dumps({"payload": base64.b64encode(self.payload).decode("ascii"), "python": self.python})

    @classmethod
    def from_stored(cls, text: str) -> CellPayload:
        document = json.loads(text)
        return cls(payload=base64.b64decode(document["payload"]), python=document["python"])


@dataclass(frozen=True)
class JobBody:
    name: str
    script: str
    """The Python source of a script job; empty for a cell job."""
    workdir: str | None
    gpus: int
    gpu_models: frozenset[str]
    priority: str
    time_limit_s: float
    environment: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    cell: CellPayload | None = None

    @property
    def kind(self) -> str:
        """``"cell"`` for a ``%%submit`` payload, ``"script"`` otherwise (the job store's payload kind)."""
        return SCRIPT_PAYLOAD if self.cell is None else CELL_PAYLOAD

    def stored_payload(self) -> str:
        """What the job store keeps: the script's text, or the cell's payload document."""
        return self.script if self.cell is None else self.cell.to_stored()


def parse_duration(value: str | float | int) -> float:
    """``"12h"``, ``"30m"``, ``"1h30m"``, ``"90s"``, ``"2d"`` or a number of seconds, in seconds.

    Only a finite, positive number of seconds is a duration: ``"inf"``, ``"nan"`` or ``"1e400"``
    would reach the supervisor as a deadline no clock can hold.
    """
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer past any float
            seconds = math.inf
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or _DURATION.sub("", text).strip():
                raise JobBodyError(
                    f"time_limit: {shown(value)} is not a duration; write it like '12h', '30m', '1h30m' "
                    "or a number of seconds"
                ) from None
            seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if not math.isfinite(seconds):
        raise JobBodyError(
            f"time_limit: {shown(value)} is not a finite duration; give one like '12h' or a number of seconds"
        )
    if seconds <= 0:
        raise JobBodyError(f"time_limit: {shown(value)} is not a positive duration; give e.g. '30m'")
    return seconds


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters: what was sent may be huge."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _cut(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_duration(seconds: float) -> str:
    """Seconds as a time limit is written: ``30d``, ``12h``, ``1h30m``, ``90.5s`` -> ``1m30.5s``."""
    whole = int(seconds)
    parts = []
    for unit, scale in _DURATION_UNITS.items():
        count, whole = divmod(whole, scale)
        if unit == "s":
            count += seconds - int(seconds)
        if count:
            parts.append(f"{count:g}{unit}")
    return "".join(parts) or f"{seconds:g}s"


def parse_job_body(
    body: Any,
    *,
    max_payload_bytes: int,
    default_time_limit_s: float,
    max_cell_payload_bytes: int | None = None,
    max_time_limit_s: float = DEFAULT_MAX_TIME_LIMIT_S,
) -> JobBody:
    """Check ``body`` against the schema and the payload limits; the result is ready to queue.

    ``max_cell_payload_bytes`` bounds a cell's decoded payload (default: ``max_payload_bytes``);
    ``max_time_limit_s`` bounds the time limit a job may ask for.
    """
    problems = sorted(_VALIDATOR.iter_errors(body), key=lambda error: list(error.absolute_path))
    if problems:
        # Each sentence cut short: jsonschema quotes the value, and what was sent may be huge.
        raise JobBodyError("; ".join(_cut(_describe(problem)) for problem in problems[:10]))
    script = body.get("script", "")
    size = len(script.encode())
    if size > max_payload_bytes:
        raise JobBodyError(
            f"script is {describe_size(size)}; the limit is {describe_size(max_payload_bytes)} — "
            "put data in files and read them from the script"
        )
    cell = None
    if "cell" in body:
        cell = parse_cell(
            body["cell"], max_payload_bytes if max_cell_payload_bytes is None else max_cell_payload_bytes
        )
    time_limit = body.get("time_limit")
    time_limit_s = default_time_limit_s if time_limit is None else parse_duration(time_limit)
    if time_limit is not None and time_limit_s > max_time_limit_s:
        longest = describe_duration(max_time_limit_s)
        raise JobBodyError(
            f"time_limit: {shown(time_limit)} is longer than the longest time limit here, {longest} "
            f"({max_time_limit_s:.0f} s); give {longest} or less, and have a longer run save checkpoints "
            "to continue from in a new job"
        )
    depth = nesting_depth(body.get("provenance", {}))
    if depth > MAX_PROVENANCE_DEPTH:
        raise JobBodyError(
            f"provenance: nested {depth} levels deep; the limit is {MAX_PROVENANCE_DEPTH} — "
            "record where the job comes from in a few flat fields"
        )
    return JobBody(
        name=body["name"],
        script=script,
        cell=cell,
        workdir=body.get("workdir"),
        gpus=body.get("gpus", 0),
        gpu_models=frozenset(body.get("gpu_models", ())),
        priority=body.get("priority", Priority.normal.name),
        time_limit_s=time_limit_s,
        environment=dict(body.get("environment", {})),
        provenance=dict(body.get("provenance", {})),
    )


def nesting_depth(value: Any) -> int:
    """How many levels of objects and arrays ``value`` has (0 for a string or a number), counted
    without recursion, so that a deep value is measured rather than overflowing the stack."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_cell(cell: dict[str, Any], max_bytes: int) -> CellPayload:
    """The cell's payload decoded (never unpickled) and within ``max_bytes``."""
    try:
        payload = base64.b64decode(cell["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise JobBodyError(
            "cell/payload: not base64; send the bundle %%submit packs (base64 of a cloudpickle)"
        ) from None
    if len(payload) > max_bytes:
        raise JobBodyError(
            f"cell/payload is {describe_size(len(payload))}; the limit is {describe_size(max_bytes)} — "
            "save large data to a file and load it inside the cell, or create it inside the cell"
        )
    return CellPayload(payload=payload, python=cell["python"])


def _describe(error: Any) -> str:
    where = "/".join(str(part) for part in error.absolute_path) or "body"
    if where == "body" and error.validator == "oneOf":
        return (
            "body: give exactly one of script (Python source to run) or cell "
            "(a payload packed by %%submit), not both or neither"
        )
    if where == "cell/python":
        return f"cell/python: {shown(error.instance)} is not a Python version; give it like '3.11.7'"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{where}: {error.message}; the allowed fields are {allowed}"
    if where == "gpus" and error.validator == "minimum":
        return f"gpus: {error.instance} GPUs cannot be asked for; give 0 (CPU only) or more whole GPUs"
    if where == "priority":
        return f"priority: {shown(error.instance)} is not a priority; give one of {', '.join(PRIORITIES)}"
    if where == "time_limit":
        return "time_limit: write it like '12h', '30m' or a positive number of seconds"
    if where == "environment" and error.validator == "pattern":
        return (
            f"environment: {shown(error.instance)} is not a variable name; a name is not empty and holds "
            "no '=' and no NUL character"
        )
    if where.startswith("environment/") and error.validator == "pattern":
        return f"{where}: the value holds a NUL character, which no environment variable can carry"
    if where == "workdir" and error.validator == "pattern":
        return "workdir: the path holds a NUL character, which no path can; give the directory to run in"
    return f"{where}: {error.message}"
