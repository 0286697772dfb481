"""A week scenario: the lab ``gpuslice sim week`` replays, read from YAML and checked like the profiles.

A scenario names the cluster (kinds of nodes, and how many GPUs of each are in the dev and the
train pool), the groups with their developers and quotas, the developers' day (when they come and
go, the slice they ask for, how much of the time it really computes) and the training work: a
standing backlog every group keeps queued, or the tasks of an openb trace
(:mod:`spawner.sim.trace_week`). Every problem is reported at once, each as ``file:line: field:
what was expected, what was found``, through the same YAML reader and JSON Schema wording as the
profiles (:mod:`spawner.config.yaml_problems`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from spawner.config.yaml_problems import (
    ConfigFileError,
    Problem,
    duplicate_key_problems,
    problem_at,
    read_yaml,
    schema_problems,
)
from spawner.core.quota import BatchLimits, InteractiveLimits, Limits, QuotaPolicy
from spawner.core.units import GPU, MILLI_PER_GPU, Node, SliceRequestError
from spawner.core.units import SliceRequest as _SliceRequest
from spawner.core.vocabulary import DEV_POOL, TRAIN_POOL, Priority

DAY_S = 86400
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ScenarioError(ConfigFileError):
    """A scenario file that cannot be replayed; ``errors`` lists every problem, one per line."""

    subject = "the scenario"


@dataclass(frozen=True)
class Timing:
    """The service's timings the replay applies (the defaults are the service's and the hub's)."""

    pass_interval_s: float = 2.0
    preemption_grace_s: float = 30.0
    interactive_hold_s: float = 60.0
    usage_half_life_s: float = 7 * DAY_S
    spawner_retry_s: float = 2.0
    """How often a start asks again while batch jobs give back its GPUs (the hub's poll)."""
    reclaim_timeout_s: float = 90.0
    """How long a start waits for them before it is refused (the hub's ``reclaim_timeout``)."""


@dataclass(frozen=True)
class NodeKind:
    name: str
    count: int
    gpu_model: str
    gpu_memory_mib: int
    cpu_milli: int
    memory_mib: int
    dev_gpus: int
    train_gpus: int


@dataclass(frozen=True)
class GroupSpec:
    name: str
    developers: int = 0
    guaranteed_gpus: int = 0
    borrowing_limit_gpus: int | None = None
    max_running_jobs: int | None = None
    cpu_milli: int = 0
    max_servers_per_user: int | None = 1


@dataclass(frozen=True)
class DeveloperDay:
    """When developers work, and what they hold while they do."""

    workdays: tuple[int, ...]
    """Days of the week (0 = Monday) they come in."""
    arrive_between: tuple[float, float]
    """Seconds after midnight: the earliest and latest arrival."""
    leave_between: tuple[float, float]
    slice_milli: int
    busy_fraction: float = 0.3


@dataclass(frozen=True)
class TrainingWork:
    """A standing backlog: every group keeps ``backlog_per_group`` runs queued all week."""

    backlog_per_group: int
    gpus: int
    run_s: float
    time_limit_s: float
    priority: Priority
    cpu_milli: int
    checkpoint_every_s: float | None
    """Seconds between checkpoints; None for runs that restart from scratch after a preemption."""
    checkpoint_on_stop: bool


@dataclass(frozen=True)
class TraceSpec:
    pods: str
    weeks: tuple[int, ...]
    copies: int
    checkpoint_every_s: float | None
    checkpoint_on_stop: bool
    busy_fraction: float


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    days: int
    warmup_days: int
    timing: Timing
    placement: str
    node_kinds: tuple[NodeKind, ...]
    groups: tuple[GroupSpec, ...]
    developers: DeveloperDay | None
    training: TrainingWork | None
    trace: TraceSpec | None
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.days * DAY_S

    def nodes(self) -> list[Node]:
        """The cluster: each node's first ``dev_gpus`` GPUs in the dev pool, the rest in train."""
        nodes = []
        for kind in self.node_kinds:
            for number in range(kind.count):
                name = f"{kind.name}-{number}"
                gpus = tuple(
                    GPU(
                        uuid=f"{name}/gpu{index}",
                        node=name,
                        index=index,
                        model=kind.gpu_model,
                        memory_mib=kind.gpu_memory_mib,
                        pools=frozenset({DEV_POOL if index < kind.dev_gpus else TRAIN_POOL}),
                        simulated=True,
                    )
                    for index in range(kind.dev_gpus + kind.train_gpus)
                )
                nodes.append(Node(name, kind.cpu_milli, kind.memory_mib, gpus))
        return nodes

    def quotas(self) -> QuotaPolicy:
        """The groups' quotas as the service would read them from the profiles' ``quotas``."""
        groups = {
            group.name: Limits(
                interactive=InteractiveLimits(),
                batch=BatchLimits(
                    guaranteed_gpus=group.guaranteed_gpus,
                    borrowing_limit_gpus=group.borrowing_limit_gpus,
                    max_running_jobs=group.max_running_jobs,
                ),
            )
            for group in self.groups
        }
        servers = {group.max_servers_per_user for group in self.groups} - {None}
        default_user = Limits(interactive=InteractiveLimits(max_servers=min(servers))) if servers else None
        return QuotaPolicy(groups=groups, default_user=default_user)


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(resources.files("spawner.sim").joinpath("scenario.schema.json").read_text())


def _clock(text: str) -> float:
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


def _expand_groups(document: Mapping[str, Any]) -> tuple[GroupSpec, ...]:
    groups = []
    for entry in document["groups"]:
        count = entry.get("count")
        names = [entry["name"]] if count is None else [f"{entry['name']}-{n + 1}" for n in range(count)]
        for name in names:
            groups.append(
                GroupSpec(
                    name=name,
                    developers=entry.get("developers", 0),
                    guaranteed_gpus=entry.get("guaranteed_gpus", 0),
                    borrowing_limit_gpus=entry.get("borrowing_limit_gpus"),
                    max_running_jobs=entry.get("max_running_jobs"),
                    cpu_milli=entry.get("cpu_cores", 0) * 1000,
                    max_servers_per_user=entry.get("max_servers_per_user", 1),
                )
            )
    return tuple(groups)


def _checks(filename: str, document: Mapping[str, Any]) -> list[Problem]:
    """What the schema cannot say."""
    problems = []

    def at(path: Sequence[Any], text: str) -> None:
        problems.append(problem_at(filename, document, path, text))

    if "training" in document and "trace" in document:
        at(("trace",), "give either training (a standing backlog) or trace (an openb trace), not both")
    if "training" not in document and "trace" not in document:
        at((), "missing field 'training' or 'trace'; expected the training work to replay")
    if "developers" in document and "trace" in document:
        at(
            ("developers",),
            "a trace scenario takes its developers' slices from the trace; leave developers out",
        )
    for index, kind in enumerate(document["cluster"]["nodes"]):
        if kind["dev_gpus"] + kind["train_gpus"] == 0:
            at(
                ("cluster", "nodes", index, "dev_gpus"),
                "expected at least one GPU per node (dev_gpus + train_gpus)",
            )
    names = [group.name for group in _expand_groups(document)]
    for index, entry in enumerate(document["groups"]):
        if names.count(entry["name"]) > 1 or (
            entry.get("count")
            and any(names.count(f"{entry['name']}-{n + 1}") > 1 for n in range(entry["count"]))
        ):
            at(("groups", index, "name"), f"group {entry['name']!r} is given twice; expected unique names")
    developers = document.get("developers")
    if developers is not None:
        numerator, denominator = (int(part) for part in developers["slice"].split("/"))
        try:
            _SliceRequest.fraction(numerator, denominator)
        except SliceRequestError as error:
            at(
                ("developers", "slice"),
                f"expected a fraction of one GPU such as 1/8, got {developers['slice']!r} ({error})",
            )
        for key in ("arrive_between", "leave_between"):
            first, last = (_clock(text) for text in developers[key])
            if first > last:
                at(
                    ("developers", key),
                    f"expected the earlier time first, got {developers[key][0]} after {developers[key][1]}",
                )
        if _clock(developers["leave_between"][0]) <= _clock(developers["arrive_between"][1]):
            at(("developers", "leave_between"), "expected developers to leave after the latest arrival")
        if not any(group.developers for group in _expand_groups(document)):
            at(("groups",), "developers are described but no group has any; give groups a 'developers' count")
    training = document.get("training")
    if training is not None:
        limit = training.get("time_limit_hours", training["run_hours"])
        if limit < training["run_hours"]:
            at(
                ("training", "time_limit_hours"),
                f"expected at least run_hours ({training['run_hours']}), got {limit}",
            )
    return problems


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """The scenario in ``path``; raises :class:`ScenarioError` listing every problem found."""
    filename = os.fspath(path)
    document, problems = read_yaml(path, filename)
    if problems:
        raise ScenarioError(filename, [str(problem) for problem in problems])
    problems = list(duplicate_key_problems(filename, document))
    problems += schema_problems(filename, document, load_schema())
    if not problems:
        problems += _checks(filename, document)
    if problems:
        raise ScenarioError(filename, [str(problem) for problem in problems])
    return _build(filename, document)


def _build(filename: str, document: Mapping[str, Any]) -> Scenario:
    timing_doc = document.get("timing", {})
    defaults = Timing()
    timing = Timing(
        pass_interval_s=timing_doc.get("pass_interval_s", defaults.pass_interval_s),
        preemption_grace_s=timing_doc.get("preemption_grace_s", defaults.preemption_grace_s),
        interactive_hold_s=timing_doc.get("interactive_hold_s", defaults.interactive_hold_s),
        usage_half_life_s=timing_doc.get("usage_half_life_h", defaults.usage_half_life_s / 3600) * 3600,
        spawner_retry_s=timing_doc.get("spawner_retry_s", defaults.spawner_retry_s),
        reclaim_timeout_s=timing_doc.get("reclaim_timeout_s", defaults.reclaim_timeout_s),
    )
    kinds = tuple(
        NodeKind(
            name=kind["name"],
            count=kind["count"],
            gpu_model=kind["gpu_model"],
            gpu_memory_mib=kind["gpu_memory_gib"] * 1024,
            cpu_milli=kind.get("cpu_cores", 64) * 1000,
            memory_mib=kind.get("memory_gib", 512) * 1024,
            dev_gpus=kind["dev_gpus"],
            train_gpus=kind["train_gpus"],
        )
        for kind in document["cluster"]["nodes"]
    )
    developers = None
    if "developers" in document:
        day = document["developers"]
        numerator, denominator = (int(part) for part in day["slice"].split("/"))
        developers = DeveloperDay(
            workdays=tuple(WEEKDAYS.index(name) for name in day.get("workdays", WEEKDAYS[:5])),
            arrive_between=tuple(_clock(text) for text in day["arrive_between"]),
            leave_between=tuple(_clock(text) for text in day["leave_between"]),
            slice_milli=MILLI_PER_GPU * numerator // denominator,
            busy_fraction=day.get("busy_fraction", 0.3),
        )
    training = None
    if "training" in document:
        work = document["training"]
        every = work.get("checkpoint_every_min", 30)
        training = TrainingWork(
            backlog_per_group=work.get("backlog_per_group", 4),
            gpus=work.get("gpus", 1),
            run_s=work["run_hours"] * 3600,
            time_limit_s=work.get("time_limit_hours", work["run_hours"]) * 3600,
            priority=Priority[work.get("priority", "normal")],
            cpu_milli=work.get("cpu_cores", 0) * 1000,
            checkpoint_every_s=None if every is None else every * 60,
            checkpoint_on_stop=work.get("checkpoint_on_stop", True),
        )
    trace = None
    if "trace" in document:
        spec = document["trace"]
        every = spec.get("checkpoint_every_min", 30)
        trace = TraceSpec(
            pods=spec["pods"],
            weeks=tuple(spec.get("weeks", ())),
            copies=spec.get("copies", 1),
            checkpoint_every_s=None if every is None else every * 60,
            checkpoint_on_stop=spec.get("checkpoint_on_stop", True),
            busy_fraction=spec.get("busy_fraction", 0.3),
        )
    return Scenario(
        name=document["name"],
        description=document.get("description", ""),
        days=document.get("days", 7),
        warmup_days=document.get("warmup_days", 1),
        timing=timing,
        placement=document.get("placement", "default"),
        node_kinds=kinds,
        groups=_expand_groups(document),
        developers=developers,
        training=training,
        trace=trace,
        source=filename,
    )
