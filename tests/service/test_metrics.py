from prometheus_client.parser import text_string_to_metric_families

from spawner.core.units import GPU, GPUShare, Lease, Node, Placement, SliceRequest, WorkloadClass
from spawner.service.metrics import ServiceMetrics


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple], float]:
    from prometheus_client import generate_latest

    found = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_queue_outcomes_and_preemptions_are_counted_by_group_and_priority():
    metrics = ServiceMetrics()
    metrics.observe_queue([("vision", "high"), ("vision", "high"), (None, "normal")])
    metrics.observe_queue([("vision", "high")])  # a later pass replaces, not adds
    metrics.observe_start("vision", "high", 90.0)
    metrics.observe_preemption("nlp")
    metrics.observe_outcome("vision", "succeeded")
    found = samples(metrics)
    assert found[("gpuslice_queue_length", (("group", "vision"), ("priority", "high")))] == 1
    assert ("gpuslice_queue_length", (("group", "(none)"), ("priority", "normal"))) not in found
    assert found[("gpuslice_queue_wait_seconds_count", (("group", "vision"), ("priority", "high")))] == 1
    assert (
        found[
            (
                "gpuslice_queue_wait_seconds_bucket",
                (("group", "vision"), ("le", "300.0"), ("priority", "high")),
            )
        ]
        == 1
    )
    assert found[("gpuslice_preemptions_total", (("group", "nlp"),))] == 1
    assert found[("gpuslice_jobs_finished_total", (("group", "vision"), ("state", "succeeded")))] == 1


def test_holdings_count_slices_as_fractions_per_pool_and_workload():
    gpus = (
        GPU("g0", "n", 0, "A100", 81920, pools=frozenset({"dev"})),
        GPU("g1", "n", 1, "A100", 81920, pools=frozenset({"train"})),
    )
    node = Node("n", 64000, 512000, gpus)

    def lease(uuid, milli, workload):
        return Lease(
            uuid + workload.value,
            "h",
            "u",
            None,
            workload,
            SliceRequest(milli_gpu=milli),
            Placement("n", (GPUShare(uuid, milli, 0),)),
            0.0,
        )

    metrics = ServiceMetrics()
    metrics.observe_holdings(
        [node], [lease("g0", 125, WorkloadClass.interactive), lease("g1", 1000, WorkloadClass.batch)]
    )
    found = samples(metrics)
    assert found[("gpuslice_gpus_allocated", (("pool", "dev"), ("workload", "interactive")))] == 0.125
    assert found[("gpuslice_gpus_allocated", (("pool", "train"), ("workload", "batch")))] == 1.0
    assert found[("gpuslice_gpus", (("pool", "dev"),))] == 1
