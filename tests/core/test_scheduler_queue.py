"""The queue as users see it: jobs that only dev GPUs can hold, and positions of one pass.

A lab without training GPUs (or a job bigger than any training node) still runs batch work on idle
dev GPUs, as borrowed work a developer's slice takes back; and the positions a pass hands out are
0..n-1 over the jobs it left waiting, in the order it considered them, whatever started in between.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spawner.core.scheduler import (
    DEV_POOL,
    TRAIN_POOL,
    BatchJob,
    GroupShare,
    Priority,
    RunningJob,
    decayed_usage,
    fair_order,
    largest_gang,
    reclaim_for_interactive,
    schedule,
)
from spawner.core.units import GPU, GPUShare, Node, Placement, SliceRequest

from .helpers import make_node

DEV = frozenset({DEV_POOL})
TRAIN = frozenset({TRAIN_POOL})


def job(name, gpus=1, group="a", priority=Priority.normal, at=0.0, limit=3600.0):
    return BatchJob(name, f"user-{group}", group, gpus, priority, at, limit)


def mixed_node(name="host", dev=2, train=2):
    """One host split as the embedded default splits it: the first GPUs dev, the last train."""
    gpus = tuple(
        GPU(f"GPU-{name}-{i}", name, i, "A100-80GB", 81920, pools=DEV if i < dev else TRAIN)
        for i in range(dev + train)
    )
    return Node(name=name, cpu_milli=64000, memory_mib=512000, gpus=gpus)


def test_a_job_within_its_guarantee_runs_on_idle_dev_gpus_when_there_is_no_training_gpu():
    nodes = [make_node("d0", gpus=2, pools=DEV)]
    shares = {"a": GroupShare(guaranteed_gpus=4, borrow_limit_gpus=0)}
    decision = schedule(nodes, [], [job("train-me")], shares, {}, now=0)
    [start] = decision.starts
    # Dev GPUs are only lent: the job is borrowed work whatever its guarantee, so a slice takes
    # the GPU back from it.
    assert (start.pool, start.borrowed, start.placement.node) == (DEV_POOL, True, "d0")
    on_dev = RunningJob(start.job, start.placement, 0.0, start.borrowed, start.pool)
    other = RunningJob(job("b"), Placement("d0", (GPUShare("GPU-d0-1", 1000, 0),)), 1.0, True, DEV_POOL)
    victims = reclaim_for_interactive(nodes, [], [on_dev, other], SliceRequest(milli_gpu=125, pool=DEV_POOL))
    assert [victim.job.id for victim in victims] == ["b"]  # the newest yields first


def test_a_job_only_dev_gpus_can_hold_waits_saying_it_will_borrow_them():
    nodes = [mixed_node(dev=4, train=1)]
    slices = [Placement("host", (GPUShare(f"GPU-host-{i}", 125, 0),)) for i in range(4)]
    decision = schedule(nodes, [], [job("big", gpus=2)], {}, {}, now=0, interactive=slices)
    assert not decision.starts
    reason = decision.waiting["big"].reason
    assert "no training node has 2 GPUs, so it runs on idle dev GPUs, borrowed" in reason
    assert "may be stopped" in reason and "can never start" not in reason
    # Once the developers are gone it starts there.
    [start] = schedule(nodes, [], [job("big", gpus=2)], {}, {}, now=1).starts
    assert start.pool == DEV_POOL and start.borrowed
    assert (largest_gang(nodes, (), TRAIN_POOL), largest_gang(nodes, (), DEV_POOL)) == (1, 4)


def test_a_job_no_pool_can_hold_can_never_start():
    decision = schedule([mixed_node(dev=2, train=2)], [], [job("huge", gpus=3)], {}, {}, now=0)
    assert "no node of any pool has 3 GPUs; the job can never start" in decision.waiting["huge"].reason


def test_a_guaranteed_job_takes_back_its_training_gpus_before_it_borrows_dev_gpus():
    nodes = [mixed_node(dev=1, train=1)]
    shares = {"a": GroupShare(guaranteed_gpus=1), "b": GroupShare(guaranteed_gpus=0)}
    borrower = RunningJob(
        job("b1", group="b"), Placement("host", (GPUShare("GPU-host-1", 1000, 0),)), 0.0, True, TRAIN_POOL
    )
    decision = schedule(nodes, [borrower], [job("a1")], shares, {}, now=5)
    assert not decision.starts and [p.job_id for p in decision.preemptions] == ["b1"]


def test_dev_gpus_borrowed_by_a_guaranteed_job_count_against_its_borrowing_limit():
    nodes = [make_node("d0", gpus=4, pools=DEV)]
    shares = {"a": GroupShare(guaranteed_gpus=2, borrow_limit_gpus=0)}
    decision = schedule(nodes, [], [job("a1"), job("a2", at=1), job("a3", at=2)], shares, {}, now=0)
    assert [start.job.id for start in decision.starts] == ["a1", "a2"]
    assert "may borrow no more GPUs now" in decision.waiting["a3"].reason


def test_a_reservation_on_the_training_gpus_never_holds_back_the_dev_gpus_of_the_same_host():
    node = mixed_node(dev=2, train=2)
    busy = RunningJob(
        job("long", group="b", limit=1000.0),
        Placement("host", (GPUShare("GPU-host-2", 1000, 0),)),
        0.0,
        False,
        TRAIN_POOL,
    )
    developer = Placement("host", (GPUShare("GPU-host-0", 125, 0),))
    queue = [job("head", gpus=2, at=0), job("cheap", at=1, priority=Priority.low, limit=5000.0)]
    decision = schedule([node], [busy], queue, {}, {}, now=10, interactive=[developer])
    assert decision.reservation is not None and decision.reservation.job_id == "head"
    [start] = decision.starts
    assert start.job.id == "cheap" and start.pool == DEV_POOL


jobs = st.builds(
    job,
    name=st.uuids().map(str),
    gpus=st.sampled_from([1, 1, 2, 3]),
    group=st.sampled_from(["a", "b", "c"]),
    priority=st.sampled_from(list(Priority)),
    at=st.floats(0, 100),
    limit=st.sampled_from([30.0, 3600.0]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queue=st.lists(jobs, max_size=14, unique_by=lambda j: j.id), busy=st.integers(0, 4))
def test_positions_are_dense_and_follow_the_order_of_the_pass(queue, busy):
    nodes = [mixed_node(dev=2, train=2), make_node("t1", gpus=2, pools=TRAIN)]
    running = [
        RunningJob(job(f"r{slot}"), Placement("t1", (GPUShare(f"GPU-t1-{slot}", 1000, 0),)), 0.0, False)
        for slot in range(min(busy, 2))
    ]
    shares = {"a": GroupShare(1, 1), "b": GroupShare(0, None), "c": GroupShare(2, 0)}
    decision = schedule(nodes, running, queue, shares, {"a": 30.0, "b": 5.0}, now=50.0)
    waiting = [job_id for job_id in decision.order if job_id in decision.waiting]
    assert [decision.waiting[job_id].position for job_id in waiting] == list(range(len(waiting)))
    assert sorted(decision.order) == sorted(j.id for j in queue)


@settings(max_examples=200, deadline=None)
@given(
    queue=st.lists(jobs, min_size=2, max_size=10, unique_by=lambda j: j.id),
    usage=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(0, 1e7, allow_nan=False)),
    elapsed=st.lists(st.floats(0.1, 1e8), min_size=1, max_size=5),
)
def test_with_nothing_running_time_alone_never_puts_a_group_that_used_more_first(queue, usage, elapsed):
    """Every group's usage decays by the same factor, so time alone never reverses the fair-share
    order: of two jobs of one level, the one whose group used less per guaranteed GPU stays ahead.

    Floating point can only make two nearly equal usages equal (a product rounds to the same
    float, or both underflow to 0 after months): they then tie, and a tie goes by submission
    order, as it does for groups that used the same. Multiplying by the same positive factor is
    monotonic in IEEE arithmetic, so a strict order is never turned round.
    """
    shares = {"a": GroupShare(4), "b": GroupShare(1), "c": GroupShare(0)}

    def share_of(job, amounts):
        return amounts.get(job.group, 0.0) / shares.get(job.group, GroupShare()).weight

    first = {j.id: index for index, j in enumerate(fair_order(queue, usage, shares))}
    before = dict(usage)
    for seconds in elapsed:
        usage = {group: decayed_usage(value, 0.0, seconds, 7 * 86400.0) for group, value in usage.items()}
        now = {j.id: index for index, j in enumerate(fair_order(queue, usage, shares))}
        for one in queue:
            for other in queue:
                if one.priority == other.priority and share_of(one, usage) < share_of(other, usage):
                    assert share_of(one, before) < share_of(other, before)
                    assert first[one.id] < first[other.id] and now[one.id] < now[other.id]


def test_equal_usage_stays_equal_so_ties_keep_submission_order():
    queue = [job("b1", group="b", at=1.0), job("a1", group="a", at=2.0)]
    usage = {"a": 1234.5, "b": 1234.5}
    for _ in range(50):
        usage = {group: decayed_usage(value, 0.0, 0.5, 7 * 86400.0) for group, value in usage.items()}
        assert [j.id for j in fair_order(queue, usage, {})] == ["b1", "a1"]
