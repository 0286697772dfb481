"""The scheduler while preemptions are under way: jobs checkpointing through their grace period
still hold their GPUs, and neither a later pass nor a repeated interactive request stops one more
job for a need they already cover. Also the waiting reasons of gangs and backfill."""

from spawner.core.scheduler import (
    DEV_POOL,
    GroupShare,
    Priority,
    reclaim_for_interactive,
    schedule,
)
from spawner.core.units import SliceRequest

from .helpers import make_node
from .test_scheduler import TRAIN, job, running_on, train_nodes


def borrowers_on_one_node():
    nodes = train_nodes(1, gpus=2)
    borrowed = [
        running_on(job("b1", group="b"), "t0", [0], started_at=1, borrowed=True),
        running_on(job("b2", group="b"), "t0", [1], started_at=2, borrowed=True),
    ]
    return nodes, borrowed, {"a": GroupShare(guaranteed_gpus=1)}


def test_a_guaranteed_job_preempts_one_borrower_the_first_time():
    nodes, borrowed, shares = borrowers_on_one_node()
    decision = schedule(nodes, borrowed, [job("a1", group="a")], shares, {}, now=10)
    assert [p.job_id for p in decision.preemptions] == ["b2"]  # the newest


def test_while_a_borrower_checkpoints_the_next_pass_preempts_no_one_else():
    nodes, borrowed, shares = borrowers_on_one_node()
    decision = schedule(nodes, borrowed, [job("a1", group="a")], shares, {}, now=11, stopping={"b2"})
    assert decision.preemptions == [] and decision.starts == []
    assert decision.waiting["a1"].reason.startswith("waiting for 1 borrowed job(s) to stop")


def test_a_stopping_borrower_covers_one_need_only():
    nodes, borrowed, shares = borrowers_on_one_node()
    shares = {"a": GroupShare(guaranteed_gpus=2)}
    queue = [job("a1", group="a", at=0), job("a2", group="a", at=1)]
    decision = schedule(nodes, borrowed, queue, shares, {}, now=11, stopping={"b2"})
    assert [p.job_id for p in decision.preemptions] == ["b1"]


def test_an_interactive_request_asked_again_counts_on_the_job_already_stopping():
    nodes = [make_node("t0", gpus=1, pools=TRAIN), make_node("d0", gpus=2, pools=frozenset({DEV_POOL}))]
    older = running_on(job("old", priority=Priority.low), "d0", [0], started_at=1, pool=DEV_POOL)
    newer = running_on(job("new", priority=Priority.low), "d0", [1], started_at=5, pool=DEV_POOL)
    request = SliceRequest(milli_gpu=125, pool=DEV_POOL)
    assert [v.job.id for v in reclaim_for_interactive(nodes, [], [older, newer], request)] == ["new"]
    again = reclaim_for_interactive(nodes, [], [older, newer], request, stopping={"old"})
    assert [v.job.id for v in again] == ["old"]  # already going: nobody else is stopped


def test_a_gang_waits_saying_its_free_gpus_are_on_different_nodes():
    nodes = train_nodes(2, gpus=2)
    held = [running_on(job("r0"), "t0", [0]), running_on(job("r1"), "t1", [0])]
    decision = schedule(nodes, held, [job("gang", gpus=2)], {}, {}, now=0)
    assert decision.starts == []
    assert "2 GPUs are free, but on different nodes" in decision.waiting["gang"].reason


def test_a_job_backfill_refuses_says_which_job_it_would_delay():
    nodes = train_nodes(1, gpus=2)
    held = [running_on(job("r", limit=600.0), "t0", [0], started_at=0)]
    queue = [job("head", gpus=2, at=0), job("long", at=1, limit=3600.0), job("short", at=2, limit=60.0)]
    decision = schedule(nodes, held, queue, {}, {}, now=0)
    assert [start.job.id for start in decision.starts] == ["short"]
    reason = decision.waiting["long"].reason
    assert reason.startswith("it would fit now, but its time limit (1h) would delay job head")
    assert "node t0 reserved in 10m" in reason
