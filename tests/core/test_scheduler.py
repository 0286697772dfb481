from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spawner.core.cluster import ClusterState
from spawner.core.scheduler import (
    DEV_POOL,
    TRAIN_POOL,
    BatchJob,
    GroupShare,
    Priority,
    RunningJob,
    _reserve,
    decayed_usage,
    gpu_seconds_between,
    reclaim_for_interactive,
    schedule,
)
from spawner.core.units import GPUShare, Placement, SliceRequest

from .helpers import make_node

TRAIN = frozenset({TRAIN_POOL})


def train_nodes(count=2, gpus=4):
    return [make_node(f"t{i}", gpus=gpus, pools=TRAIN) for i in range(count)]


def job(name, gpus=1, group="a", priority=Priority.normal, at=0.0, limit=3600.0):
    return BatchJob(name, f"user-{group}", group, gpus, priority, at, limit)


def running_on(batch_job, node, slots, started_at=0.0, borrowed=False, pool=TRAIN_POOL):
    shares = tuple(GPUShare(f"GPU-{node}-{slot}", 1000, 0) for slot in slots)
    return RunningJob(batch_job, Placement(node, shares), started_at, borrowed, pool)


def test_strict_priority_between_levels():
    nodes = train_nodes(1, gpus=1)
    decision = schedule(
        nodes,
        [],
        [
            job("low", at=0, priority=Priority.low),
            job("high", at=5, priority=Priority.high),
            job("high2", at=6, priority=Priority.high),
        ],
        {},
        {},
        now=10,
    )
    assert [start.job.id for start in decision.starts] == ["high"]
    # Positions count the jobs still waiting: the one that started is no longer ahead of anyone.
    assert [decision.waiting[name].position for name in ("high2", "low")] == [0, 1]
    assert "1 job of higher priority ahead" in decision.waiting["low"].reason
    assert "ahead" not in decision.waiting["high2"].reason


def test_fair_share_prefers_the_group_that_used_less_per_guaranteed_gpu():
    nodes = train_nodes(1, gpus=1)
    shares = {"a": GroupShare(guaranteed_gpus=4), "b": GroupShare(guaranteed_gpus=1)}
    usage = {"a": 100.0, "b": 50.0}  # a: 25 per guaranteed GPU, b: 50
    decision = schedule(
        nodes, [], [job("b1", group="b", at=0), job("a1", group="a", at=1)], shares, usage, now=2
    )
    assert [start.job.id for start in decision.starts] == ["a1"]


def test_gangs_are_never_split():
    nodes = train_nodes(2, gpus=2)
    running = [running_on(job("x"), "t0", [0]), running_on(job("y"), "t1", [1])]
    decision = schedule(nodes, running, [job("gang", gpus=2)], {}, {}, now=0)
    assert not decision.starts
    assert decision.waiting["gang"].reason.startswith("waiting for 2 GPUs on one node")


def test_a_job_no_node_can_hold_says_so():
    decision = schedule(train_nodes(2, gpus=2), [], [job("huge", gpus=8)], {}, {}, now=0)
    assert "can never start" in decision.waiting["huge"].reason


def test_guarantee_is_reclaimed_by_preempting_borrowed_work():
    nodes = train_nodes(1, gpus=2)
    shares = {"a": GroupShare(guaranteed_gpus=2), "b": GroupShare(guaranteed_gpus=0)}
    borrowed = [
        running_on(job("b1", group="b"), "t0", [0], started_at=1, borrowed=True),
        running_on(job("b2", group="b"), "t0", [1], started_at=2, borrowed=True),
    ]
    decision = schedule(nodes, borrowed, [job("a1", gpus=2, group="a")], shares, {}, now=10)
    assert {p.job_id for p in decision.preemptions} == {"b1", "b2"}
    assert "needs its guaranteed GPUs back" in decision.preemptions[0].reason
    assert decision.waiting["a1"].reason.startswith("waiting for 2 borrowed job(s) to stop")


def test_every_guaranteed_job_is_considered_before_any_borrower_whatever_its_priority():
    # One GPU, held within group a's guarantee of 2. a2 (normal) is within the guarantee, x1
    # (high) would borrow: a2 comes first, and neither counts the other as of higher priority.
    nodes = train_nodes(1, gpus=1)
    shares = {"a": GroupShare(guaranteed_gpus=2), "x": GroupShare(guaranteed_gpus=0)}
    held = [running_on(job("a1", group="a"), "t0", [0])]
    queue = [job("x1", group="x", priority=Priority.high, at=1), job("a2", group="a", at=2)]
    decision = schedule(nodes, held, queue, shares, {}, now=10)
    assert decision.starts == [] and decision.preemptions == []
    assert decision.order == ["a2", "x1"]
    assert [decision.waiting[name].position for name in ("a2", "x1")] == [0, 1]
    assert "ahead" not in decision.waiting["a2"].reason
    assert "ahead" not in decision.waiting["x1"].reason
    # With a second high-priority borrower, it counts x1 (same priority), not a2 (lower).
    decision = schedule(
        nodes, held, [*queue, job("x2", group="x", priority=Priority.high, at=3)], shares, {}, now=10
    )
    assert decision.order == ["a2", "x1", "x2"]
    assert decision.waiting["x2"].reason.endswith("; 1 job of the same priority ahead")


def test_a_guaranteed_job_preempts_a_borrower_of_higher_priority():
    nodes = train_nodes(1, gpus=1)
    shares = {"a": GroupShare(guaranteed_gpus=1), "x": GroupShare(guaranteed_gpus=0)}
    borrowed = [running_on(job("x1", group="x", priority=Priority.high), "t0", [0], borrowed=True)]
    decision = schedule(nodes, borrowed, [job("a1", group="a")], shares, {}, now=10)
    assert [p.job_id for p in decision.preemptions] == ["x1"]


def test_guaranteed_work_is_never_preempted_and_own_group_is_spared():
    nodes = train_nodes(1, gpus=1)
    shares = {"a": GroupShare(guaranteed_gpus=1), "b": GroupShare(guaranteed_gpus=1)}
    held = [running_on(job("b1", group="b"), "t0", [0], borrowed=False)]
    decision = schedule(nodes, held, [job("a1", group="a")], shares, {}, now=0)
    assert decision.preemptions == []


def test_borrowing_stops_at_the_limit():
    nodes = train_nodes(1, gpus=4)
    shares = {"a": GroupShare(guaranteed_gpus=1, borrow_limit_gpus=1)}
    held = [running_on(job("a1"), "t0", [0]), running_on(job("a2"), "t0", [1], borrowed=True)]
    decision = schedule(nodes, held, [job("a3")], shares, {}, now=0)
    assert not decision.starts
    assert "guarantee of 1 plus 1 it may borrow" in decision.waiting["a3"].reason
    # Within the limit a job beyond the guarantee starts as borrowed (preemptible) work.
    decision = schedule(nodes, held[:1], [job("a3")], shares, {}, now=0)
    assert decision.starts[0].borrowed


def test_backfill_runs_short_jobs_that_end_before_the_reservation():
    nodes = train_nodes(1, gpus=4)
    held = [running_on(job("old", limit=100), "t0", [0, 1], started_at=0)]
    queue = [
        job("head", gpus=4, at=0),
        job("short", gpus=2, at=1, limit=50),
        job("long", gpus=2, at=2, limit=500),
    ]
    decision = schedule(nodes, held, queue, {}, {}, now=10)
    assert decision.reservation.job_id == "head" and decision.reservation.start_by == 100
    assert [start.job.id for start in decision.starts] == ["short"]
    assert "long" in decision.waiting


def test_preemptible_jobs_use_idle_dev_gpus_and_give_them_back():
    nodes = [make_node("t0", gpus=1, pools=TRAIN), make_node("d0", gpus=2, pools=frozenset({DEV_POOL}))]
    held = [running_on(job("train-busy"), "t0", [0])]
    decision = schedule(nodes, held, [job("cheap", priority=Priority.low)], {}, {}, now=0)
    [start] = decision.starts
    assert start.pool == DEV_POOL and start.placement.node == "d0"
    on_dev = RunningJob(start.job, start.placement, 0, borrowed=True, pool=DEV_POOL)
    other = running_on(job("cheap2", priority=Priority.low), "d0", [1], started_at=5, pool=DEV_POOL)
    running = held + [on_dev, other]
    victims = reclaim_for_interactive(nodes, [], running, SliceRequest(milli_gpu=125, pool=DEV_POOL))
    assert [victim.job.id for victim in victims] == ["cheap2"]  # one GPU is enough: the newest yields
    assert reclaim_for_interactive(nodes, [], running[:1], SliceRequest(milli_gpu=125, pool=DEV_POOL)) == []


def test_usage_decays_with_a_half_life():
    assert decayed_usage(100.0, 0, 3600, 3600) == 50.0
    assert decayed_usage(0.0, 2, 10, 3600) == 20.0


jobs = st.builds(
    job,
    name=st.uuids().map(str),
    gpus=st.sampled_from([1, 1, 2, 4]),
    group=st.sampled_from(["a", "b", "c"]),
    priority=st.sampled_from(list(Priority)),
    at=st.floats(0, 100),
    limit=st.sampled_from([30.0, 120.0, 3600.0]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    queue=st.lists(jobs, max_size=12, unique_by=lambda j: j.id),
    busy=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_decisions_respect_capacity_gangs_and_the_reservation(queue, busy):
    nodes = train_nodes(2, gpus=4)
    running = [
        running_on(job(f"r{slot}", limit=60.0 * (slot + 1)), f"t{slot // 4}", [slot % 4], started_at=0.0)
        for slot in range(8)
        if busy[slot]
    ]
    shares = {"a": GroupShare(2, 2), "b": GroupShare(1, None), "c": GroupShare(0, 4)}
    decision = schedule(nodes, running, queue, shares, {"a": 10.0}, now=20.0)
    cluster = ClusterState(nodes)
    for held in running:
        cluster.allocate(held.placement)
    for start in decision.starts:
        assert len(start.placement.shares) == start.job.gpus  # a gang, on one node
        cluster.allocate(start.placement)  # raises if anything is over capacity
    started = {start.job.id for start in decision.starts}
    assert started.isdisjoint(decision.waiting) and started | set(decision.waiting) == {j.id for j in queue}
    if decision.reservation is not None:
        head = next(j for j in queue if j.id == decision.reservation.job_id)
        preempted = {p.job_id for p in decision.preemptions}
        now_running = [held for held in running if held.job.id not in preempted] + [
            RunningJob(start.job, start.placement, 20.0, start.borrowed, start.pool)
            for start in decision.starts
        ]
        cluster = ClusterState(nodes)
        for held in now_running:
            cluster.allocate(held.placement)
        again = _reserve(cluster, head, now_running, now=20.0)
        assert again is not None and again.start_by <= decision.reservation.start_by


def test_usage_between_passes_counts_every_run_over_its_part_of_the_interval():
    runs = [
        ("vision", 2, 50.0, None),  # running since before the last pass: 100-110 counts
        ("vision", 1, 103.0, 105.0),  # started and ended between the passes: all of it
        ("nlp", 4, 90.0, 104.0),  # ended between the passes: its last stretch, 100-104
        ("nlp", 8, 20.0, 80.0),  # ended before the last pass: nothing
        ("audio", 1, None, None),  # adopted after a restart, start unknown: from the last pass
    ]
    assert gpu_seconds_between(runs, since=100.0, now=110.0) == {"vision": 22.0, "nlp": 16.0, "audio": 10.0}
    assert gpu_seconds_between(runs, since=110.0, now=110.0) == {}


def test_a_job_without_time_limit_that_would_delay_the_reserved_one_waits_saying_so():
    nodes = train_nodes(1, gpus=2)
    busy = [running_on(job("running", limit=600.0), "t0", [0])]
    queue = [job("gang", gpus=2, at=1.0), job("endless", at=2.0, limit=float("inf"))]
    decision = schedule(nodes, busy, queue, {"a": GroupShare(guaranteed_gpus=4)}, {}, now=10.0)
    assert decision.starts == [] and decision.reservation.job_id == "gang"
    assert decision.waiting["endless"].reason.startswith("it would fit now, but its time limit (unlimited)")
