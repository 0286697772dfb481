"""Gangs and backfill through the REST API, on a static inventory of two training nodes.

n1 has two A100s and n2 two H100s, all in the train pool, and no group has a guarantee, so no job
preempts another: what starts where is placement and the reservation of the head job alone.
"""

from __future__ import annotations

import pytest
from harness.jobs import FINAL, SLEEPS, cancel, get_job, submit, wait_for, waiting_reason
from harness.service_hubs import start_sched_hub

pytestmark = pytest.mark.slow

GPUS = """\
nodes:
  - name: n1
    cpu: 8
    memory_mib: 32768
    pools: train
    gpus:
      - count: 2
        model: A100-80GB
        memory_mib: 81920
  - name: n2
    cpu: 8
    memory_mib: 32768
    pools: train
    gpus:
      - count: 2
        model: H100-80GB
        memory_mib: 81559
"""

QUOTAS = """\
quotas:
  default_user:
    interactive:
      servers: 2
      milli_gpu: 1000
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_sched_hub(tmp_path_factory.mktemp("gang-hub"), QUOTAS, [], gpus_yaml=GPUS)
    yield hub
    hub.stop()


def on_node(job: dict) -> set[str]:
    """The nodes of a job's GPUs, read from their stable static uuids (GPU-static-<node>-<i>)."""
    return {uuid.removeprefix("GPU-static-").rsplit("-", 1)[0] for uuid in job["gpu_uuids"]}


def test_a_gang_never_splits_across_nodes(hub):
    alice = hub.as_user("alice")
    on_n1 = submit(alice, hub, SLEEPS, name="on-n1", gpu_models=["A100-80GB"])
    on_n2 = submit(alice, hub, SLEEPS, name="on-n2", gpu_models=["H100-80GB"])
    for job in (on_n1, on_n2):
        assert on_node(wait_for(alice, hub, job["id"], ("running",))) == {job["name"][3:]}

    gang = submit(alice, hub, "print('gang')\n", name="gang", gpus=2)
    waiting = waiting_reason(alice, hub, gang["id"], "2 GPUs are free, but on different nodes")
    assert waiting["waiting_reason"].startswith("waiting for 2 GPUs on one node")
    assert waiting["gpu_uuids"] == []

    cancel(alice, hub, on_n2["id"])
    done = wait_for(alice, hub, gang["id"], FINAL, timeout=60)
    assert done["state"] == "succeeded", done
    assert len(done["gpu_uuids"]) == 2 and on_node(done) == {"n2"} and done["node"] == "n2"
    cancel(alice, hub, on_n1["id"])


def test_backfill_runs_a_short_job_in_the_gap_but_never_delays_the_head_job(hub):
    # One user for all, so that the queue is in submission order (fair share plays no part).
    alice = hub.as_user("alice")
    a100 = {"gpu_models": ["A100-80GB"]}
    # One A100 busy for at most 10 minutes; the head job needs both A100s, so n1 is reserved
    # for it from the moment the running one reaches its time limit.
    running = submit(alice, hub, SLEEPS, name="running", time_limit="10m", **a100)
    wait_for(alice, hub, running["id"], ("running",))
    head = submit(alice, hub, "print('head')\n", name="head", gpus=2, time_limit="10m", **a100)
    waiting_reason(alice, hub, head["id"], "waiting for 2 A100-80GB GPUs on one node")

    long = submit(alice, hub, SLEEPS, name="long", time_limit="1h", **a100)
    short = submit(alice, hub, "print('short')\n", name="short", time_limit="1m", **a100)
    # The short one ends before the reservation starts: it runs on the free A100 at once, even
    # though the long one came before it.
    backfilled = wait_for(alice, hub, short["id"], FINAL, timeout=60)
    assert backfilled["state"] == "succeeded" and backfilled["node"] == "n1"
    delayed = waiting_reason(alice, hub, long["id"], f"would delay job {head['id']}")
    assert "its time limit (1h)" in delayed["waiting_reason"]
    assert "node n1 reserved" in delayed["waiting_reason"]
    assert get_job(alice, hub, head["id"])["job"]["state"] == "queued"

    cancel(alice, hub, running["id"])
    head_done = wait_for(alice, hub, head["id"], FINAL, timeout=60)
    assert head_done["state"] == "succeeded" and on_node(head_done) == {"n1"}
    long_started = wait_for(alice, hub, long["id"], ("running",), timeout=60)
    assert head_done["started_at"] <= long_started["started_at"]
    cancel(alice, hub, long["id"])
