"""The ``quotas:`` mapping of the profiles directory, turned into a :class:`QuotaPolicy`.

The file speaks the admin's words (``servers``, ``borrow_gpus``, ``gpu_hours_per_week``); the
policy speaks the allocator's (``max_servers``, ``borrowing_limit_gpus``, ``max_gpu_hours_week``).
Keeping the translation here leaves :mod:`spawner.core.quota` free of file formats. The mapping must
already have passed ``profiles.schema.json``, which checks every figure's type and range.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spawner.core.quota import BatchLimits, InteractiveLimits, Limits, QuotaPolicy


def quota_policy(quotas: Mapping[str, Any]) -> QuotaPolicy:
    """The policy a schema-valid ``quotas:`` mapping describes.

    A figure left out is unlimited, and a named user's or group's entry replaces the default entry
    as a whole (it is not merged with it), as :meth:`QuotaPolicy.for_user` reads it.
    """
    return QuotaPolicy(
        groups={str(name): limits(entry) for name, entry in quotas.get("groups", {}).items()},
        users={str(name): limits(entry) for name, entry in quotas.get("users", {}).items()},
        default_user=limits(quotas["default_user"]) if "default_user" in quotas else None,
        default_group=limits(quotas["default_group"]) if "default_group" in quotas else None,
    )


def limits(entry: Mapping[str, Any]) -> Limits:
    """One user's or group's ``{interactive: {...}, batch: {...}}`` as :class:`Limits`."""
    interactive = entry.get("interactive", {})
    batch = entry.get("batch", {})
    return Limits(
        interactive=InteractiveLimits(
            max_servers=_whole(interactive.get("servers")),
            max_milli_gpu=_whole(interactive.get("milli_gpu")),
        ),
        batch=BatchLimits(
            guaranteed_gpus=_whole(batch.get("guaranteed_gpus")) or 0,
            borrowing_limit_gpus=_whole(batch.get("borrow_gpus")),
            max_running_jobs=_whole(batch.get("running_jobs")),
            max_gpu_hours_week=(
                float(batch["gpu_hours_per_week"]) if "gpu_hours_per_week" in batch else None
            ),
        ),
    )


def entry_count(policy: QuotaPolicy) -> int:
    """How many quota entries the policy holds: named groups and users, plus each default given."""
    defaults = [policy.default_user, policy.default_group]
    return len(policy.groups) + len(policy.users) + sum(default is not None for default in defaults)


def _whole(value: int | float | None) -> int | None:
    # YAML reads "4.0" as a float that the schema accepts as an integer; the policy wants an int.
    return None if value is None else int(value)
