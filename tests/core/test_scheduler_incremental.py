"""The incremental scheduler decides every pass exactly as a fresh ``schedule()`` does.

Random sequences of submissions, finishes, cancellations, capacity changes (nodes coming and
going, developers' slices taken and given back), usage changes (ties between groups included) and
passes whose decisions are applied the way the service applies them; after every pass the two
decisions must be equal, reasons and positions included. Then what the incremental form exists
for: a pass over a long queue where little changed looks at a few jobs, not all of them.
"""

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spawner.core import scheduler
from spawner.core.cluster import ClusterState
from spawner.core.incremental import IncrementalScheduler
from spawner.core.placement import get_policy
from spawner.core.scheduler import (
    DEV_POOL,
    TRAIN_POOL,
    BatchJob,
    GroupShare,
    Priority,
    RunningJob,
    WaitingJobs,
    schedule,
)
from spawner.core.units import GPU, Node, SliceRequest

GROUPS = ("a", "b", "c", None)
MODELS = ("A100-80GB", "H100")


def node(index: int, gpus: int, dev: int, model: str) -> Node:
    name = f"n{index}"
    return Node(
        name,
        cpu_milli=64000,
        memory_mib=512000,
        gpus=tuple(
            GPU(
                f"GPU-{name}-{slot}",
                name,
                slot,
                model,
                81920,
                pools=frozenset({DEV_POOL if slot < dev else TRAIN_POOL}),
            )
            for slot in range(gpus)
        ),
    )


nodes_strategy = st.builds(
    node,
    st.integers(0, 1000),
    gpus=st.integers(1, 4),
    dev=st.integers(0, 2),
    model=st.sampled_from(MODELS),
)

job_strategy = st.fixed_dictionaries(
    {
        "group": st.sampled_from(GROUPS),
        "gpus": st.sampled_from([1, 1, 1, 2, 2, 3, 4, 5]),
        "priority": st.sampled_from(list(Priority)),
        "limit": st.sampled_from([60.0, 600.0, 3600.0, float("inf")]),
        "models": st.sampled_from([frozenset(), frozenset(), frozenset({"H100"})]),
        "cpu": st.sampled_from([0, 0, 8000]),
    }
)

submit_strategy = st.tuples(st.just("submit"), st.lists(job_strategy, min_size=1, max_size=25))
step_strategy = st.one_of(
    submit_strategy,
    submit_strategy,
    st.tuples(st.just("pass"), st.sampled_from([0.0, 1.0, 60.0, 900.0])),
    st.tuples(st.just("finish"), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("reprioritize"), st.integers(0, 50), st.sampled_from(list(Priority))),
    st.tuples(st.just("read afresh")),
    st.tuples(st.just("add node"), nodes_strategy),
    st.tuples(st.just("remove node"), st.integers(0, 10)),
    st.tuples(st.just("take slice"), st.sampled_from([125, 500, 1000])),
    st.tuples(st.just("give slice"), st.integers(0, 10)),
    st.tuples(st.just("usage"), st.sampled_from(GROUPS), st.sampled_from([0.0, 3600.0, 7200.0, 1e6])),
    st.tuples(st.just("pass"), st.sampled_from([0.0, 1.0, 60.0, 900.0])),
)

shares_strategy = st.fixed_dictionaries(
    {
        group: st.builds(
            GroupShare,
            guaranteed_gpus=st.integers(0, 4),
            borrow_limit_gpus=st.one_of(st.none(), st.integers(0, 4)),
        )
        for group in ("a", "b", "c")
    }
)


class Lab:
    """The state a service keeps between passes, changed the way the service changes it."""

    def __init__(self, nodes, shares, policy_name):
        self.nodes = {n.name: n for n in nodes}
        self.shares = shares
        self.policy_name = policy_name
        self.queue: list[BatchJob] = []
        self.running: list[RunningJob] = []
        self.stopping: set[str] = set()
        self.interactive = []
        self.usage: dict[str | None, float] = {}
        self.now = 1000.0
        self.submitted = 0

    def args(self):
        return (
            list(self.nodes.values()),
            list(self.running),
            list(self.queue),
            self.shares,
            dict(self.usage),
            self.now,
            list(self.interactive),
            self.policy_name,
            frozenset(self.stopping),
        )

    def busy_nodes(self) -> set[str]:
        return {held.placement.node for held in self.running} | {p.node for p in self.interactive}

    def submit(self, spec) -> None:
        self.submitted += 1
        self.queue.append(
            BatchJob(
                f"j{self.submitted}",
                f"user-{spec['group']}",
                spec["group"],
                spec["gpus"],
                spec["priority"],
                # Several jobs per instant, so that submission order ties break by id.
                self.now + self.submitted % 3,
                spec["limit"],
                spec["models"],
                spec["cpu"],
            )
        )

    def step(self, step) -> None:
        kind = step[0]
        if kind == "submit":
            for spec in step[1]:
                self.submit(spec)
        elif kind == "finish" and self.running:
            gone = self.running.pop(step[1] % len(self.running))
            self.stopping.discard(gone.job.id)
        elif kind == "cancel" and self.queue:
            self.queue.pop(step[1] % len(self.queue))
        elif kind == "reprioritize" and self.queue:
            index = step[1] % len(self.queue)
            self.queue[index] = replace(self.queue[index], priority=step[2])
        elif kind == "read afresh":
            # As the service reads its queue: equal jobs, new objects.
            self.queue = [replace(job) for job in self.queue]
            self.running = [
                replace(held, job=replace(held.job), placement=replace(held.placement))
                for held in self.running
            ]
        elif kind == "add node" and step[1].name not in self.nodes:
            self.nodes[step[1].name] = step[1]
        elif kind == "remove node":
            idle = sorted(set(self.nodes) - self.busy_nodes())
            if idle and len(self.nodes) > 1:
                del self.nodes[idle[step[1] % len(idle)]]
        elif kind == "take slice":
            cluster = ClusterState(list(self.nodes.values()))
            for placement in self.interactive + [held.placement for held in self.running]:
                cluster.allocate(placement)
            placement = get_policy("best-fit").place(cluster, SliceRequest(milli_gpu=step[1], pool=DEV_POOL))
            if placement is not None:
                self.interactive.append(placement)
        elif kind == "give slice" and self.interactive:
            self.interactive.pop(step[1] % len(self.interactive))
        elif kind == "usage":
            self.usage[step[1]] = step[2]
        elif kind == "pass":
            self.now += step[1]

    def apply(self, decision) -> None:
        """Starts run; a job preempted in the last pass is gone by this one and queued again."""
        stopped = [held for held in self.running if held.job.id in self.stopping]
        self.running = [held for held in self.running if held.job.id not in self.stopping]
        self.queue += [held.job for held in stopped]
        self.stopping = {preempt.job_id for preempt in decision.preemptions}
        started = {start.job.id for start in decision.starts}
        self.queue = [job for job in self.queue if job.id not in started]
        self.running += [
            RunningJob(start.job, start.placement, self.now, start.borrowed, start.pool)
            for start in decision.starts
        ]


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    nodes=st.lists(nodes_strategy, min_size=1, max_size=4, unique_by=lambda n: n.name),
    shares=shares_strategy,
    policy_name=st.sampled_from(["default", "best-fit", "spread", "fgd"]),
    steps=st.lists(step_strategy, min_size=10, max_size=80),
)
def test_every_pass_decides_as_a_fresh_schedule(nodes, shares, policy_name, steps):
    replay(Lab(nodes, shares, policy_name), steps)


# A long queue of few kinds of job on nodes of a few GPUs: the pass skips runs of alike jobs, and
# the jobs that fit but would delay the reserved gang (backfill) are many.
few_kinds = st.fixed_dictionaries(
    {
        "group": st.sampled_from(["a", "b"]),
        "gpus": st.sampled_from([1, 1, 2, 4]),
        "priority": st.sampled_from([Priority.normal, Priority.high]),
        "limit": st.sampled_from([600.0, 7200.0, float("inf")]),
        "models": st.just(frozenset()),
        "cpu": st.just(0),
    }
)
few_kinds_steps = st.one_of(
    st.tuples(st.just("submit"), st.lists(few_kinds, min_size=5, max_size=40)),
    st.tuples(st.just("pass"), st.sampled_from([1.0, 60.0, 900.0])),
    st.tuples(st.just("finish"), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("read afresh")),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    gpus=st.lists(st.integers(2, 4), min_size=1, max_size=3),
    shares=shares_strategy,
    policy_name=st.sampled_from(["default", "best-fit", "spread"]),
    steps=st.lists(few_kinds_steps, min_size=10, max_size=60),
)
def test_every_pass_decides_as_a_fresh_schedule_on_a_long_queue_of_few_kinds(
    gpus, shares, policy_name, steps
):
    nodes = [node(index, count, dev=0, model="H100") for index, count in enumerate(gpus)]
    replay(Lab(nodes, shares, policy_name), steps)


def replay(lab: Lab, steps) -> None:
    incremental = IncrementalScheduler()
    for step in steps + [("pass", 1.0)]:
        lab.step(step)
        if step[0] != "pass":
            continue
        expected = schedule(*lab.args())
        decided = incremental.schedule(*lab.args())
        assert decided == expected
        assert list(decided.waiting) == list(expected.waiting)  # in the order of their positions
        lab.apply(decided)


def test_groups_with_equal_usage_interleave_in_submission_order():
    nodes = [node(0, gpus=1, dev=0, model="H100")]
    # Guarantees that cover every job, so that all are walked in the level's first walk (the
    # jobs within their guarantee) and the order is fair share's alone.
    shares = {"a": GroupShare(4), "b": GroupShare(4)}
    queue = [
        BatchJob(f"{group}{at}", "u", group, 1, Priority.normal, float(at), 60.0)
        for at, group in enumerate("abbaab")
    ]
    incremental = IncrementalScheduler()
    orders = []
    for usage in ({}, {"a": 5.0}, {"a": 5.0, "b": 5.0}, {"a": 1.0}):
        decided = incremental.schedule(nodes, [], queue, shares, usage, now=0.0)
        assert decided == schedule(nodes, [], queue, shares, usage, now=0.0)
        orders.append(decided.order)
    tied = ["a0", "b1", "b2", "a3", "a4", "b5"]
    assert orders == [tied, ["b1", "b2", "b5", "a0", "a3", "a4"], tied, ["b1", "b2", "b5", "a0", "a3", "a4"]]


def test_a_job_queued_twice_is_refused():
    twice = [BatchJob("same", "u", "a", 1, Priority.normal, 0.0, 60.0)] * 2
    with pytest.raises(ValueError, match="job same is queued twice"):
        IncrementalScheduler().schedule([node(0, 1, 0, "H100")], [], twice, {}, {}, now=0.0)


def test_the_waiting_jobs_are_counted_before_their_reasons_are_written():
    nodes = [node(0, gpus=2, dev=0, model="H100")]
    queue = [BatchJob(f"j{i}", "u", "a", 2, Priority.normal, float(i), 60.0) for i in range(300)]
    decided = IncrementalScheduler().schedule(nodes, [], queue, {"a": GroupShare(2)}, {}, now=0.0)
    assert isinstance(decided.waiting, WaitingJobs)
    assert len(decided.waiting) == 299 and decided.waiting._by_id is None
    assert decided.waiting["j299"].position == 298
    assert (
        decided.waiting["j299"].reason
        == "waiting for 2 GPUs on one node; 298 jobs of the same priority ahead"
    )


def test_a_pass_where_little_changed_looks_at_few_jobs(monkeypatch):
    """Two thousand queued jobs of a few kinds on a full cluster: after a job ends, the next pass
    considers about one job per kind and priority, and skips the rest as ranges."""
    nodes = [node(i, gpus=4, dev=0, model="H100") for i in range(8)]
    shares = {group: GroupShare(guaranteed_gpus=4, borrow_limit_gpus=8) for group in "ab"}
    running = [
        RunningJob(
            BatchJob(f"r{i}", "u", "ab"[i % 2], 4, Priority.normal, 0.0, 3600.0),
            schedule(nodes[i : i + 1], [], [BatchJob("x", "u", None, 4, Priority.normal, 0, 1)], {}, {}, 0)
            .starts[0]
            .placement,
            0.0,
            borrowed=True,
        )
        for i in range(8)
    ]
    queue = [
        BatchJob(f"q{i}", "u", "ab"[i % 2], 1 + i % 3, list(Priority)[i % 3], float(i), 7200.0)
        for i in range(2000)
    ]
    incremental = IncrementalScheduler()
    usage = {"a": 10.0, "b": 20.0}
    considered = Counter()
    original = scheduler._Pass.consider

    def counting(self, job):
        considered[incremental] += 1
        return original(self, job)

    monkeypatch.setattr(scheduler._Pass, "consider", counting)
    first = incremental.schedule(nodes, running, queue, shares, usage, now=0.0)
    assert first == schedule(nodes, running, queue, shares, usage, now=0.0)
    considered.clear()
    # A job ends: its four GPUs are free again, and four 1-GPU jobs start.
    fewer = running[1:]
    decided = incremental.schedule(nodes, fewer, queue, shares, usage, now=2.0)
    looked_at = considered[incremental]
    assert decided == schedule(nodes, fewer, queue, shares, usage, now=2.0)
    assert len(decided.starts) >= 1
    assert looked_at < 100  # not 2000
    assert considered[incremental] > 2000  # the reference looks at every job


def test_jobs_held_back_by_the_reservation_are_skipped_but_one_short_enough_starts():
    """A gang waits for a node whose other GPU is free: the long jobs after it would delay it and
    wait (skipped, once the policy placed one of them), while a short one, asked the same
    question, ends in time and starts."""
    nodes = [node(0, gpus=2, dev=0, model="H100")]
    # A guarantee that covers the gang and the jobs after it: all are walked in fair order in the
    # level's first walk (a borrowing gang would come after the guaranteed jobs).
    shares = {"a": GroupShare(guaranteed_gpus=3)}
    busy_job = BatchJob("busy", "u", "a", 1, Priority.normal, 0.0, 7200.0)
    busy = RunningJob(
        busy_job, schedule(nodes, [], [busy_job], shares, {}, 0.0).starts[0].placement, 0.0, False
    )
    queue = [BatchJob("gang", "u", "a", 2, Priority.normal, 1.0, 600.0)]
    queue += [BatchJob(f"long{i}", "u", "a", 1, Priority.normal, 2.0 + i, float("inf")) for i in range(5)]
    queue += [BatchJob("short", "u", "a", 1, Priority.normal, 10.0, 600.0)]
    queue += [BatchJob(f"later{i}", "u", "a", 1, Priority.normal, 11.0 + i, float("inf")) for i in range(5)]
    decided = IncrementalScheduler().schedule(nodes, [busy], queue, shares, {}, 60.0, policy_name="best-fit")
    assert decided == schedule(nodes, [busy], queue, shares, {}, 60.0, policy_name="best-fit")
    assert [start.job.id for start in decided.starts] == ["short"]
    assert decided.waiting["long4"].reason.startswith("it would fit now, but its time limit (unlimited)")
