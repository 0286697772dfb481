"""The words of the domain, spelled once: job states, priorities, pools, payload kinds and holders.

Every side imports them from here (the ledger, the scheduler, the service, the spawner, the
magic, the CLI), so that a state or a pool is written one way in the whole product and a typo is
a ``NameError`` instead of a job that never matches. The enums are ``str`` (or ``int``) enums:
they compare equal to, and serialise as, the plain values the REST API and the database carry.
"""

from __future__ import annotations

import enum
import math
import re
from datetime import datetime, timezone

# ------------------------------------------------------------------------------ job states


class JobState(str, enum.Enum):
    """Where a batch job is in its life (the ledger's ``jobs.state``, the API's ``state``)."""

    queued = "queued"
    running = "running"
    preempted = "preempted"
    """Stopping for a preemption (checkpointing), then queued again."""
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


STATES: tuple[str, ...] = tuple(
    state.value
    for state in (
        JobState.queued,
        JobState.running,
        JobState.succeeded,
        JobState.failed,
        JobState.cancelled,
        JobState.preempted,
    )
)
"""Every state as the API writes it, in the order a person reads them."""

TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
"""States a job never leaves: its payload is dropped and its GPUs are given back."""

UNFINISHED_STATES = frozenset({JobState.queued, JobState.running, JobState.preempted})
"""The states whose jobs still keep their payload, and count against their owner's storage limit."""


# ------------------------------------------------------------------------------ priorities


class Priority(enum.IntEnum):
    """A job's priority within its group; higher goes first, and ``low`` never preempts."""

    low = 0
    normal = 1
    high = 2


PRIORITIES: tuple[str, ...] = tuple(Priority.__members__)
"""The priorities as the API writes them, lowest first (``low``, ``normal``, ``high``)."""


# ----------------------------------------------------------------------------------- pools

DEV_POOL = "dev"
"""GPUs sliced for notebook servers; idle ones are lent to batch jobs, as borrowed work."""
TRAIN_POOL = "train"
"""Whole GPUs for batch jobs."""
POOLS: tuple[str, ...] = (DEV_POOL, TRAIN_POOL)


# --------------------------------------------------------------------------- payload kinds

SCRIPT_PAYLOAD = "script"
"""A job that is a Python script."""
CELL_PAYLOAD = "cell"
"""A job that is a notebook cell packed by ``%%submit`` (see :mod:`spawner.core.cell_bundle`)."""
PAYLOAD_KINDS: tuple[str, ...] = (SCRIPT_PAYLOAD, CELL_PAYLOAD)


# --------------------------------------------------------------------------------- holders
#
# The holder of a lease is what gives it back. A notebook server holds its slice as
# ``"<user>/<server>"`` ("" for the default server): the spawner writes it, and the service's
# reconciler releases the lease once the hub no longer has that server. Any other holder carries
# its expiry, ``"<holder> until <ISO-8601 UTC>"``, and the lease is released when it passes. A
# batch job's lease is held by the job's id.

_EXPIRING = re.compile(r"(?P<label>.+) until (?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", re.DOTALL)
_ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def server_holder(user: str, server: str) -> str:
    """The holder of a notebook server's lease: ``user/server`` ("" names the default server)."""
    return f"{user}/{server}"


def server_of_holder(holder: str, user: str) -> str | None:
    """The server name if ``holder`` is a notebook server of ``user`` ("" for the default), else None."""
    owner, slash, server = holder_label(holder).partition("/")
    return server if slash and owner == user else None


def expiring_holder(label: str, expires_at: float) -> str:
    """The holder the ledger keeps for ``label`` held until ``expires_at`` (rounded up to a second,
    so that a lease never ends before the time it was asked for)."""
    at = datetime.fromtimestamp(math.ceil(expires_at), timezone.utc).strftime(_ISO_FORMAT)
    return f"{label} until {at}"


def holder_expiry(holder: str) -> float | None:
    """When a lease held by ``holder`` expires (Unix seconds), or None if it does not."""
    match = _EXPIRING.fullmatch(holder)
    if match is None:
        return None
    return datetime.strptime(match["at"], _ISO_FORMAT).replace(tzinfo=timezone.utc).timestamp()


def holder_label(holder: str) -> str:
    """``holder`` without its expiry: what was asked as ``holder``."""
    match = _EXPIRING.fullmatch(holder)
    return holder if match is None else match["label"]


def has_expiry(holder: str) -> bool:
    """Whether ``holder`` ends like an expiry (``... until <ISO UTC>``)."""
    return _EXPIRING.fullmatch(holder) is not None
