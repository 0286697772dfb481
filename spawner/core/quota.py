"""Quota rules: who may hold how much, and a refusal that says which rule said no and why.

Quotas exist per user and per group, with separate figures for the two workload classes because
they are rationed differently (see DESIGN.md): interactive slices are held for hours by a person
at a keyboard, so they are capped by how many servers and how much GPU a person or group holds at
once; batch jobs queue, so they get a guaranteed share, a limit on what they may borrow beyond it,
a cap on running jobs and a weekly budget of GPU-hours.

Everything here is pure: usage is computed from leases handed in, and the GPU-hours of the week
are handed in by the ledger, which keeps the accounting. The ledger calls these checks inside the
same transaction that inserts the lease, so a check and the grant it allows cannot be separated by
another grant.

A lease is charged to its user and to at most one group. A user may belong to several groups; the
caller picks the group (see :func:`charge_group`) and the lease carries it, so that the charge
stays stable for the lease's life even if group membership or the quota file changes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .units import MILLI_PER_GPU, Lease, SliceRequest, WorkloadClass

WEEK_SECONDS = 7 * 24 * 3600
"""Length of the accounting week for GPU-hour budgets."""

_FIRST_MONDAY = 4 * 24 * 3600
"""1970-01-05 00:00 UTC, the first Monday after the Unix epoch (which was a Thursday)."""


def week_start(now: float) -> int:
    """Start (Monday 00:00 UTC, as a Unix time) of the accounting week that contains ``now``.

    Budgets reset on a calendar week rather than a rolling seven days so that a user can tell when
    their GPU-hours come back; UTC so that the answer does not depend on where the hub runs.
    """
    return _FIRST_MONDAY + WEEK_SECONDS * math.floor((now - _FIRST_MONDAY) / WEEK_SECONDS)


def split_by_week(start: float, end: float) -> list[tuple[int, float]]:
    """``(week_start, seconds)`` for each accounting week that ``[start, end)`` overlaps.

    A lease running over a Monday is charged partly to each week, so a budget that renews on
    Monday does not inherit the whole of a long job that started on Sunday.
    """
    pieces = []
    week = week_start(start)
    while week < end:
        seconds = min(end, week + WEEK_SECONDS) - max(start, week)
        if seconds > 0:
            pieces.append((week, seconds))
        week += WEEK_SECONDS
    return pieces


# ------------------------------------------------------------------------------------- limits


def _check_non_negative(limits: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(limits, name)
        if value is not None and value < 0:
            raise ValueError(f"{type(limits).__name__}.{name} must be 0 or more (or None), got {value}")


@dataclass(frozen=True, slots=True)
class InteractiveLimits:
    """Caps on notebook servers with a GPU slice; ``None`` means unlimited.

    Only servers that hold some GPU count: a CPU-only server is not rationed by a GPU quota.
    """

    max_servers: int | None = None
    max_milli_gpu: int | None = None

    def __post_init__(self) -> None:
        _check_non_negative(self, ("max_servers", "max_milli_gpu"))


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Caps on batch jobs; ``None`` means unlimited.

    A holder may run batch work on ``guaranteed_gpus`` GPUs as of right, and borrow up to
    ``borrowing_limit_gpus`` more while others leave them idle (that borrowed work is what gets
    preempted first). With ``borrowing_limit_gpus=None`` borrowing is unlimited, so the holder has
    no cap on batch GPUs at all.
    """

    guaranteed_gpus: int = 0
    borrowing_limit_gpus: int | None = None
    max_running_jobs: int | None = None
    max_gpu_hours_week: float | None = None

    def __post_init__(self) -> None:
        _check_non_negative(
            self, ("guaranteed_gpus", "borrowing_limit_gpus", "max_running_jobs", "max_gpu_hours_week")
        )

    @property
    def max_gpus(self) -> int | None:
        """Most GPUs the holder's batch jobs may hold at once: guarantee plus borrowing."""
        if self.borrowing_limit_gpus is None:
            return None
        return self.guaranteed_gpus + self.borrowing_limit_gpus


@dataclass(frozen=True, slots=True)
class Limits:
    """The quota of one user or one group."""

    interactive: InteractiveLimits = InteractiveLimits()
    batch: BatchLimits = BatchLimits()


UNLIMITED = Limits()


@dataclass(frozen=True)
class QuotaPolicy:
    """Every quota in force: named users and groups, and defaults for everyone else.

    A user or group without an entry falls under ``default_user`` or ``default_group``; when that
    default is ``None`` too, they are unlimited. The default policy (no arguments) limits nobody.
    """

    groups: Mapping[str, Limits] = field(default_factory=dict)
    users: Mapping[str, Limits] = field(default_factory=dict)
    default_user: Limits | None = None
    default_group: Limits | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))
        object.__setattr__(self, "users", MappingProxyType(dict(self.users)))

    def for_user(self, user: str) -> Limits:
        return _first_set(self.users.get(user), self.default_user)

    def for_group(self, group: str) -> Limits:
        return _first_set(self.groups.get(group), self.default_group)


def _first_set(entry: Limits | None, default: Limits | None) -> Limits:
    if entry is not None:
        return entry
    return default if default is not None else UNLIMITED


def charge_group(user_groups: Iterable[str], policy: QuotaPolicy) -> str | None:
    """The group a new lease of a user in ``user_groups`` is charged to.

    The first group by sorted name that has its own entry in the policy wins, so that a user in
    ``vision`` (with a quota) and ``everyone`` (without) spends the vision quota. If none of the
    groups has an entry, the first by sorted name is charged (it falls under ``default_group``).
    Sorting makes the choice the same on every call whatever order JupyterHub lists groups in.
    A user in no group is charged to no group: ``None``.
    """
    names = sorted(set(user_groups))
    for name in names:
        if name in policy.groups:
            return name
    return names[0] if names else None


# -------------------------------------------------------------------------------------- usage


@dataclass(frozen=True, slots=True)
class HolderUsage:
    """What one user or one group holds now, and the batch GPU-hours it has spent this week."""

    servers: int = 0
    interactive_milli: int = 0
    batch_jobs: int = 0
    batch_milli: int = 0
    batch_gpu_hours_week: float = 0.0

    @property
    def batch_gpus(self) -> float:
        return self.batch_milli / MILLI_PER_GPU

    def plus(self, workload: WorkloadClass, slice_request: SliceRequest) -> HolderUsage:
        milli = slice_request.total_milli
        if WorkloadClass(workload) is WorkloadClass.batch:
            return replace(self, batch_jobs=self.batch_jobs + 1, batch_milli=self.batch_milli + milli)
        if not milli:
            return self
        return replace(self, servers=self.servers + 1, interactive_milli=self.interactive_milli + milli)


_NO_USAGE = HolderUsage()


@dataclass(frozen=True)
class Usage:
    """Usage of every user and group that holds anything; the others hold nothing."""

    users: Mapping[str, HolderUsage] = field(default_factory=dict)
    groups: Mapping[str, HolderUsage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", MappingProxyType(dict(self.users)))
        object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))

    def of_user(self, user: str) -> HolderUsage:
        return self.users.get(user, _NO_USAGE)

    def of_group(self, group: str) -> HolderUsage:
        return self.groups.get(group, _NO_USAGE)

    def plus(
        self, user: str, group: str | None, workload: WorkloadClass, slice_request: SliceRequest
    ) -> Usage:
        """Usage once one more lease of ``slice_request`` is granted to ``user`` and ``group``."""
        users = dict(self.users)
        users[user] = self.of_user(user).plus(workload, slice_request)
        groups = dict(self.groups)
        if group is not None:
            groups[group] = self.of_group(group).plus(workload, slice_request)
        return Usage(users=users, groups=groups)

    @classmethod
    def from_leases(
        cls,
        leases: Iterable[Lease],
        *,
        user_batch_gpu_hours: Mapping[str, float] | None = None,
        group_batch_gpu_hours: Mapping[str, float] | None = None,
    ) -> Usage:
        """Usage of the live ``leases`` plus the batch GPU-hours spent this week.

        The GPU-hours come from the ledger's accounting, since released leases are gone from the
        live list but still count against the week's budget.
        """
        users: dict[str, HolderUsage] = {}
        groups: dict[str, HolderUsage] = {}
        for lease in leases:
            users[lease.user] = users.get(lease.user, _NO_USAGE).plus(lease.workload, lease.request)
            if lease.group is not None:
                groups[lease.group] = groups.get(lease.group, _NO_USAGE).plus(lease.workload, lease.request)
        for user, hours in (user_batch_gpu_hours or {}).items():
            users[user] = replace(users.get(user, _NO_USAGE), batch_gpu_hours_week=hours)
        for group, hours in (group_batch_gpu_hours or {}).items():
            groups[group] = replace(groups.get(group, _NO_USAGE), batch_gpu_hours_week=hours)
        return cls(users=users, groups=groups)


# ------------------------------------------------------------------------------------ refusals


class Rule(str, enum.Enum):
    """The quota rules a request can break; their values appear in API responses and logs."""

    interactive_servers = "interactive_servers"
    interactive_milli_gpu = "interactive_milli_gpu"
    batch_running_jobs = "batch_running_jobs"
    batch_gpus = "batch_gpus"
    batch_gpu_hours_week = "batch_gpu_hours_week"


class HolderKind(str, enum.Enum):
    user = "user"
    group = "group"


_UNITS = {
    Rule.interactive_servers: "servers",
    Rule.interactive_milli_gpu: "milli-GPU",
    Rule.batch_running_jobs: "jobs",
    Rule.batch_gpus: "GPUs",
    Rule.batch_gpu_hours_week: "GPU-hours",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A quota rule that refused a request, with the figures that made it refuse.

    It is a value rather than a message so that the REST API can return it as data, the options
    form can show it next to the profile, and tests can compare it; ``message`` renders it for
    people.
    """

    rule: Rule
    holder_kind: HolderKind
    holder: str
    usage: float
    requested: float
    limit: float
    unit: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", Rule(self.rule))
        object.__setattr__(self, "holder_kind", HolderKind(self.holder_kind))

    @property
    def message(self) -> str:
        """A sentence saying what is used, what was asked, and what the person can do next."""
        who = f"{self.holder_kind.value} {self.holder}"
        used = f"{_number(self.usage)}/{_number(self.limit)}"
        mine = self.holder_kind is HolderKind.user
        free_up = "stop one of your servers" if mine else f"wait until a member of {self.holder} stops one"
        ask_admin = _ask_admin(self.holder_kind)
        if self.rule is Rule.interactive_servers:
            return f"{who} already runs {used} notebook servers with a GPU slice; {free_up} or {ask_admin}"
        if self.rule is Rule.interactive_milli_gpu:
            return (
                f"{who} already uses {used} milli-GPU of interactive slices; this request needs "
                f"{_number(self.requested)} more; choose a smaller slice, {free_up}, or {ask_admin}"
            )
        if self.rule is Rule.batch_running_jobs:
            return (
                f"{who} already runs {used} batch jobs; this job can start when one of them ends, "
                f"or {ask_admin}"
            )
        if self.rule is Rule.batch_gpus:
            return (
                f"{who} already uses {used} GPUs for batch jobs (guaranteed plus borrowing limit); "
                f"this job needs {_number(self.requested)} more and can start when running jobs free "
                f"them, or {ask_admin}"
            )
        needs = f"; this job may need {_number(self.requested)} more" if self.usage < self.limit else ""
        return (
            f"{who} has used {used} GPU-hours of batch jobs this week{needs}; the budget renews on "
            f"Monday 00:00 UTC, or {ask_admin}"
        )

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule.value,
            "holder_kind": self.holder_kind.value,
            "holder": self.holder,
            "usage": self.usage,
            "requested": self.requested,
            "limit": self.limit,
            "unit": self.unit,
            "message": self.message,
        }


def _ask_admin(kind: HolderKind) -> str:
    return "ask an admin to raise " + ("your quota" if kind is HolderKind.user else "the group's quota")


def _number(value: float) -> str:
    """Integers without a decimal point, fractions to two places: how people write figures."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0")


def _refusal(
    rule: Rule, kind: HolderKind, holder: str, usage: float, requested: float, limit: float
) -> Refusal:
    return Refusal(rule, kind, holder, usage, requested, limit, _UNITS[rule])


def _holders(
    policy: QuotaPolicy, usage: Usage, user: str, group: str | None
) -> list[tuple[HolderKind, str, Limits, HolderUsage]]:
    """The user, then the group: a user's own limit is the more specific reason to give."""
    holders = [(HolderKind.user, user, policy.for_user(user), usage.of_user(user))]
    if group is not None:
        holders.append((HolderKind.group, group, policy.for_group(group), usage.of_group(group)))
    return holders


# -------------------------------------------------------------------------------------- checks


def check_interactive(
    policy: QuotaPolicy, usage: Usage, user: str, group: str | None, slice_request: SliceRequest
) -> Refusal | None:
    """The first rule that forbids a new server with ``slice_request``, or ``None`` if none does.

    CPU-only requests are never refused: interactive quotas ration GPU only.
    """
    milli = slice_request.total_milli
    if not milli:
        return None
    for kind, holder, limits, held in _holders(policy, usage, user, group):
        interactive = limits.interactive
        if _exceeds(held.servers, 1, interactive.max_servers):
            return _refusal(Rule.interactive_servers, kind, holder, held.servers, 1, interactive.max_servers)
        if _exceeds(held.interactive_milli, milli, interactive.max_milli_gpu):
            limit = interactive.max_milli_gpu
            return _refusal(Rule.interactive_milli_gpu, kind, holder, held.interactive_milli, milli, limit)
    return None


def check_batch_start(
    policy: QuotaPolicy,
    usage: Usage,
    user: str,
    group: str | None,
    slice_request: SliceRequest,
    *,
    expected_gpu_hours: float = 0.0,
) -> Refusal | None:
    """The first rule that forbids a batch job with ``slice_request`` starting now, or ``None``.

    ``expected_gpu_hours`` is what the job may still spend (GPUs times its time limit) when the
    caller knows it; with the default 0 only a budget that is already spent refuses, since a job
    of unknown length cannot be judged against the rest of the week.
    """
    gpus = slice_request.total_milli / MILLI_PER_GPU
    for kind, holder, limits, held in _holders(policy, usage, user, group):
        batch = limits.batch
        if _exceeds(held.batch_jobs, 1, batch.max_running_jobs):
            return _refusal(Rule.batch_running_jobs, kind, holder, held.batch_jobs, 1, batch.max_running_jobs)
        max_gpus = batch.max_gpus
        # Compared in milli-GPU so that fractional batch slices stay exact integers.
        if _exceeds(held.batch_milli, slice_request.total_milli, _milli(max_gpus)):
            return _refusal(Rule.batch_gpus, kind, holder, held.batch_gpus, gpus, max_gpus)
        hours, budget = held.batch_gpu_hours_week, batch.max_gpu_hours_week
        if budget is not None and (hours >= budget or _exceeds(hours, expected_gpu_hours, budget)):
            return _refusal(Rule.batch_gpu_hours_week, kind, holder, hours, expected_gpu_hours, budget)
    return None


def batch_never_starts(
    policy: QuotaPolicy, user: str, group: str | None, gpus: int, time_limit_s: float
) -> str | None:
    """Why a batch job could never start under the user's or the group's batch limits, however
    idle the GPUs and whatever else they run; ``None`` if it can start some day.

    A job that asks for more GPUs than its holder may ever hold, or more GPU-hours (GPUs times its
    time limit) than a whole week's budget, would wait in the queue forever; it is refused at
    submission instead, with the limit and what to ask for. The checks run against no usage at
    all, so they never refuse what a quieter moment would allow (that is :func:`check_batch_start`'s
    job, when the scheduler starts it).
    """
    if gpus <= 0:
        return None
    hours = gpus * time_limit_s / 3600 if math.isfinite(time_limit_s) else math.inf
    for kind, holder, limits, _ in _holders(policy, Usage(), user, group):
        batch = limits.batch
        who = f"{kind.value} {holder}"
        ask_admin = _ask_admin(kind)
        if batch.max_running_jobs == 0:
            return f"{who} may run no batch jobs (running_jobs: 0); {ask_admin}"
        most = batch.max_gpus
        if most is not None and gpus > most:
            return (
                f"gpus: {who} may hold at most {most} GPUs for batch jobs (guaranteed "
                f"{batch.guaranteed_gpus} plus borrowing {batch.borrowing_limit_gpus}); this job asks for "
                f"{gpus} and could never start; ask for {most} or fewer, or {ask_admin}"
            )
        budget = batch.max_gpu_hours_week
        if budget is not None and hours > budget:
            longest = budget / gpus
            return (
                f"time_limit: {who} has {_number(budget)} GPU-hours of batch jobs a week, and this job "
                f"may take {_number(hours)} ({gpus} GPU{'s' if gpus != 1 else ''} for its time limit), so "
                f"it could never start; give a time limit of at most {_number(longest)}h, or fewer GPUs, "
                f"or {ask_admin}"
            )
    return None


def check(
    policy: QuotaPolicy,
    usage: Usage,
    user: str,
    group: str | None,
    workload: WorkloadClass,
    slice_request: SliceRequest,
) -> Refusal | None:
    """The check that applies to ``workload``: what the ledger calls before every grant."""
    if WorkloadClass(workload) is WorkloadClass.batch:
        return check_batch_start(policy, usage, user, group, slice_request)
    return check_interactive(policy, usage, user, group, slice_request)


def _exceeds(used: float, asked: float, limit: float | None) -> bool:
    return limit is not None and used + asked > limit


def _milli(gpus: int | None) -> int | None:
    return None if gpus is None else gpus * MILLI_PER_GPU
