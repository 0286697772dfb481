import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spawner.core import placement as placement_module
from spawner.core.cluster import ClusterState
from spawner.core.placement import POLICIES, UnknownPolicyError, get_policy
from spawner.core.units import GPUShare, Placement, SliceRequest

from .helpers import make_cluster_nodes, make_node


def occupy(cluster, node, *millis):
    shares = tuple(GPUShare(f"GPU-{node}-{i}", m, 0) for i, m in enumerate(millis) if m)
    cluster.allocate(Placement(node, shares))


def test_unknown_policy_names_the_choices():
    with pytest.raises(UnknownPolicyError, match="default, fgd, best-fit, packing, spread"):
        get_policy("first-fit")


def test_best_fit_takes_the_tightest_gpu_on_the_fullest_node():
    cluster = ClusterState(make_cluster_nodes(2, gpus=2))
    occupy(cluster, "node1", 700, 300)
    placement = get_policy("best-fit").place(cluster, SliceRequest(milli_gpu=250))
    assert placement.node == "node1" and placement.gpu_uuids == ("GPU-node1-0",)


def test_best_fit_scores_as_the_artifact_does():
    # 100 * (1 - (CPU left / 128 cores + GPU left / 8 GPUs) / 2), truncated: the node with 60
    # cores left scores int(100 * (1 - 0.234 - 0.0625)) = 70, the one with 64 scores 68.
    nodes = [make_node("roomy", gpus=2, cpu_milli=64000), make_node("tight", gpus=2, cpu_milli=60000)]
    cluster = ClusterState(nodes)
    occupy(cluster, "roomy", 1000)
    occupy(cluster, "tight", 1000)
    policy = get_policy("best-fit")
    scores = policy.node_scores(
        cluster, SliceRequest(gpus=1), np.arange(2), cluster.candidate_mask(SliceRequest(gpus=1))
    )
    assert scores.tolist() == [0, 100]  # rescaled so the best node scores 100
    assert policy.place(cluster, SliceRequest(gpus=1)).node == "tight"


def test_packing_prefers_a_used_gpu_then_a_used_node():
    cluster = ClusterState(make_cluster_nodes(3, gpus=2))
    occupy(cluster, "node2", 1000)
    occupy(cluster, "node1", 0, 400)
    packing = get_policy("packing")
    # A fraction on the GPU in use (score 94) beats an idle GPU of a used node (49) and an idle node (31).
    assert packing.place(cluster, SliceRequest(milli_gpu=500)).gpu_uuids == ("GPU-node1-1",)
    cluster = ClusterState(make_cluster_nodes(2, gpus=2))
    occupy(cluster, "node1", 1000)
    assert packing.place(cluster, SliceRequest(gpus=1)).node == "node1"


def test_spread_takes_the_emptiest_node():
    cluster = ClusterState(make_cluster_nodes(3, gpus=2))
    occupy(cluster, "node0", 500)
    occupy(cluster, "node1", 100)
    assert get_policy("spread").place(cluster, SliceRequest(milli_gpu=100)).node == "node2"


def test_fgd_keeps_a_gpu_whole_rather_than_splitting_it():
    # The workload is all half-GPU slices: a 0.5 slice should go onto the half-used GPU, which
    # leaves no fragment, instead of halving an idle GPU.
    cluster = ClusterState(make_cluster_nodes(1, gpus=2))
    occupy(cluster, "node0", 500)
    fgd = get_policy("fgd", [(SliceRequest(milli_gpu=500), 1.0)])
    assert fgd.place(cluster, SliceRequest(milli_gpu=500)).gpu_uuids == ("GPU-node0-0",)


def test_fgd_avoids_stranding_a_gpu_that_the_workload_cannot_use():
    # 0.6 slices are the workload; a 0.3 slice placed on an idle GPU would leave 0.7 (still fits a
    # 0.6), but on the GPU with 0.6 free it would leave 0.3 that no 0.6 slice can use.
    cluster = ClusterState(make_cluster_nodes(1, gpus=2))
    occupy(cluster, "node0", 400)
    fgd = get_policy("fgd", [(SliceRequest(milli_gpu=600), 1.0)])
    assert fgd.place(cluster, SliceRequest(milli_gpu=300)).gpu_uuids == ("GPU-node0-1",)


def first_in_seeded_order(policy, cluster, names):
    rank = policy.node_order(cluster)
    return min(names, key=lambda name: rank[cluster.node_index[name]])


def test_fgd_scores_a_move_as_the_artifact_does():
    # int(100 * sigmoid(-change / 1000)): no change scores 50; freeing 136 milli of fragment 53;
    # stranding 300 milli 42; anything that strands 5 GPUs or more scores 0, as does no move at all.
    fgd = get_policy("fgd")
    change = np.array([0.0, -136.0, 300.0, 5000.0, np.inf])
    assert (-fgd.move_cost(change)).tolist() == [50, 53, 42, 0, 0]


def test_fgd_target_workload_is_the_tasks_that_make_95_percent_with_cpu_only_ones():
    a = SliceRequest(milli_gpu=500, cpu_milli=4000, memory_mib=1024)
    same_a_more_memory = SliceRequest(milli_gpu=500, cpu_milli=4000, memory_mib=8192)
    b = SliceRequest(gpus=1, cpu_milli=8000)
    cpu_only = SliceRequest(cpu_milli=16000)
    rare = SliceRequest(gpus=8, cpu_milli=64000)
    mix = [(a, 30), (same_a_more_memory, 20), (b, 30), (cpu_only, 15), (rare, 5)]
    types = get_policy("fgd", mix)._types(mix)
    # a (50, memory merged), b (30), CPU-only (15) make 95 of 100 tasks; the gang is left out.
    assert sorted(types.weight.tolist()) == pytest.approx(sorted([50 / 95, 30 / 95]))
    assert types.free_weight == pytest.approx(15 / 95)
    assert types.memory.tolist() == [0, 0] and sorted(types.shape_count.tolist()) == [1, 1]


def test_fgd_judges_whether_a_type_fits_by_cpu_and_gpus_not_memory():
    nodes = [make_node("node0", gpus=2, host_memory_mib=4096)]
    cluster = ClusterState(nodes)
    mix = [(SliceRequest(gpus=1, memory_mib=65536), 1.0)]
    fgd_types = get_policy("fgd", mix)._types(mix)
    exact_types = placement_module._TaskTypes.from_mix(mix, coverage=1.0, host_memory=True)
    fgd_view = placement_module._FragmentationCache(cluster, fgd_types)
    exact_view = placement_module._FragmentationCache(cluster, exact_types)
    fgd_view.refresh_aggregates()
    exact_view.refresh_aggregates()
    assert fgd_view.fragmentation[0] == 0  # FGD: the type fits, no GPU is a fragment
    assert exact_view.fragmentation[0] == 2000  # by memory it fits nowhere: both GPUs are fragment


def test_fgd_settles_ties_by_a_seeded_node_order():
    names = [f"node{i}" for i in range(6)]
    workload = [(SliceRequest(gpus=1), 1.0)]
    chosen = set()
    for seed in range(8):
        cluster = ClusterState(make_cluster_nodes(6, gpus=4))
        fgd = get_policy("fgd", workload, seed=seed)
        # Every idle GPU scores the same; the first node of the seed's order wins, every time.
        node = fgd.place(cluster, SliceRequest(gpus=1)).node
        assert node == first_in_seeded_order(fgd, cluster, names)
        assert get_policy("fgd", workload, seed=seed).place(cluster, SliceRequest(gpus=1)).node == node
        chosen.add(node)
    assert len(chosen) > 1


def test_default_never_takes_a_move_fgd_scores_worse():
    # The workload is 0.6 slices: a 0.3 slice on the GPU with 0.6 free would strand 0.3 (FGD score
    # 42); on an idle GPU it strands nothing (50). The used node is fuller, but FGD's score comes first.
    cluster = ClusterState(make_cluster_nodes(2, gpus=1))
    occupy(cluster, "node0", 400)
    default = get_policy("default", [(SliceRequest(milli_gpu=600), 1.0)])
    assert default.place(cluster, SliceRequest(milli_gpu=300)).node == "node1"


def test_default_gives_fgd_ties_to_the_node_with_the_smallest_share_of_gpus_free():
    # Whole-GPU work on whole GPUs: every idle GPU taken changes FGD's fragmentation alike, so all
    # three nodes tie. "half" (4 of 8 free) has the most GPUs in use, "small" (1 of 2 free) the
    # fewest GPUs free; "big" (3 of 8 free) has the smallest share free and wins.
    nodes = [make_node("half", gpus=8), make_node("small", gpus=2), make_node("big", gpus=8)]
    cluster = ClusterState(nodes)
    occupy(cluster, "half", 1000, 1000, 1000, 1000)
    occupy(cluster, "small", 1000)
    occupy(cluster, "big", 1000, 1000, 1000, 1000, 1000)
    workload = [(SliceRequest(gpus=1), 1.0)]
    for seed in range(4):
        assert get_policy("default", workload, seed=seed).place(cluster, SliceRequest(gpus=1)).node == "big"


def test_default_tie_rule_does_not_count_cpu_again():
    # FGD's measure already counts CPU (a type whose CPU does not fit makes every free GPU a
    # fragment); here the type's CPU fits both nodes after the move, so the moves tie. "busy" has
    # less CPU free but more of its GPUs free: the tie goes by GPU share alone, to "quiet".
    nodes = [make_node("quiet", gpus=4, cpu_milli=64000), make_node("busy", gpus=4, cpu_milli=64000)]
    cluster = ClusterState(nodes)
    occupy(cluster, "quiet", 1000)
    cluster.allocate(Placement("busy", (), cpu_milli=40000))
    workload = [(SliceRequest(gpus=1, cpu_milli=4000), 1.0)]
    fgd = get_policy("fgd", workload)
    cost, _ = fgd._cache(cluster, SliceRequest(gpus=1, cpu_milli=4000)).best_moves(
        SliceRequest(gpus=1, cpu_milli=4000)
    )
    assert cost[0] == cost[1]  # FGD scores both moves the same
    assert (
        get_policy("default", workload).place(cluster, SliceRequest(gpus=1, cpu_milli=4000)).node == "quiet"
    )


def test_default_breaks_remaining_ties_toward_the_least_free_node_then_the_seeded_order():
    cluster = ClusterState(make_cluster_nodes(3, gpus=4))
    occupy(cluster, "node2", 1000, 1000)
    workload = [(SliceRequest(gpus=1), 1.0)]
    # Any idle GPU adds the same fragmentation; the node with the least of its GPUs free keeps
    # node0 and node1 whole for 4-GPU gangs.
    assert get_policy("default", workload).place(cluster, SliceRequest(gpus=1)).node == "node2"
    idle = ClusterState(make_cluster_nodes(3, gpus=4))
    default = get_policy("default", workload, seed=5)
    expected = first_in_seeded_order(default, idle, ["node0", "node1", "node2"])
    assert default.place(idle, SliceRequest(gpus=1)).node == expected


def test_cpu_and_memory_are_honoured():
    nodes = [make_node("small", gpus=2, cpu_milli=2000), make_node("big", gpus=2, cpu_milli=64000)]
    for name in POLICIES:
        cluster = ClusterState(nodes)
        placement = get_policy(name).place(cluster, SliceRequest(milli_gpu=100, cpu_milli=8000))
        assert placement.node == "big", name
        assert get_policy(name).place(cluster, SliceRequest(gpus=1, memory_mib=10**7)) is None, name


def test_fgd_learns_the_workload_when_none_is_given():
    cluster = ClusterState(make_cluster_nodes(2, gpus=2))
    policy = get_policy("default")
    for _ in range(3):
        placement = policy.place(cluster, SliceRequest(milli_gpu=500))
        cluster.allocate(placement)
    assert cluster.allocated_milli == 1500


# --------------------------------------------------------------------- properties

requests = st.one_of(
    st.builds(
        SliceRequest,
        milli_gpu=st.sampled_from([100, 125, 250, 330, 500, 750, 900]),
        cpu_milli=st.sampled_from([0, 1000, 8000]),
        memory_mib=st.sampled_from([0, 4096]),
        gpu_models=st.sampled_from([frozenset(), frozenset({"T4"}), frozenset({"A100-80GB", "T4"})]),
    ),
    st.builds(SliceRequest, gpus=st.sampled_from([1, 2, 4]), cpu_milli=st.sampled_from([0, 4000])),
    st.builds(SliceRequest, cpu_milli=st.sampled_from([1000, 16000])),
    st.builds(
        SliceRequest, milli_gpu=st.sampled_from([200, 400]), gpu_memory_mib=st.sampled_from([1024, 20000])
    ),
)


def mixed_nodes():
    return [
        make_node("a", gpus=4, cpu_milli=32000),
        make_node("b", gpus=2, model="T4", memory_mib=15360, cpu_milli=16000),
        make_node("c", gpus=8, cpu_milli=96000),
        make_node(
            "d", gpus=1, model="T4", memory_mib=15360, cpu_milli=8000, pools=frozenset({"dev", "train"})
        ),
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy_name=st.sampled_from(list(POLICIES)),
    steps=st.lists(st.tuples(requests, st.booleans(), st.integers(0, 50)), min_size=1, max_size=40),
)
def test_policies_never_overcommit_place_when_possible_and_release_exactly(policy_name, steps):
    cluster = ClusterState(mixed_nodes())
    pristine = (cluster.milli_free.copy(), cluster.gpu_memory_free.copy(), cluster.cpu_free.copy())
    policy = get_policy(policy_name)
    held = []
    for request, release, pick in steps:
        if release and held:
            cluster.release(held.pop(pick % len(held)))
            continue
        possible = cluster.candidate_mask(request)
        possible = possible.any(axis=1) if request.gpu_count else possible[:, 0]
        placement = policy.place(cluster, request)
        assert (placement is not None) == bool(possible.any())
        if placement is None:
            continue
        assert len(placement.shares) == request.gpu_count
        assert len(set(placement.gpu_uuids)) == len(placement.shares)
        cluster.allocate(placement)  # raises CapacityError if the policy overcommitted anything
        held.append(placement)
        assert (cluster.milli_free >= 0).all() and (cluster.gpu_memory_free >= 0).all()
        assert (cluster.cpu_free >= 0).all() and (cluster.memory_free >= 0).all()
    for placement in held:
        cluster.release(placement)
    assert np.array_equal(cluster.milli_free, pristine[0])
    assert np.array_equal(cluster.gpu_memory_free, pristine[1])
    assert np.array_equal(cluster.cpu_free, pristine[2])


def naive_fragmentation(cluster, row, mix):
    """The FGD measure exactly as the paper states it, one task type and one GPU at a time."""
    total = 0.0
    weight_sum = sum(w for r, w in mix if r.gpu_count)
    free = [
        int(cluster.milli_free[row, s]) for s in range(cluster.present.shape[1]) if cluster.present[row, s]
    ]
    node = cluster.nodes[row]
    for request, weight in mix:
        if not request.gpu_count:
            continue
        usable = [
            request.allows(gpu) and f >= request.per_gpu_milli for gpu, f in zip(node.gpus, free, strict=True)
        ]
        fits = (
            cluster.cpu_free[row] >= request.cpu_milli
            and cluster.memory_free[row] >= request.memory_mib
            and sum(usable) >= request.gpu_count
        )
        fragment = sum(f for f, ok in zip(free, usable, strict=True) if not ok) if fits else sum(free)
        total += weight / weight_sum * fragment
    return total


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(requests, min_size=1, max_size=30), probe=requests)
def test_cached_fragmentation_moves_match_a_naive_recomputation(steps, probe):
    mix = [(request, 1.0 + i % 3) for i, request in enumerate(steps + [probe])]
    cluster = ClusterState(mixed_nodes())
    policy = get_policy("fgd", mix)
    for request in steps:
        placement = policy.place(cluster, request)
        if placement is not None:
            cluster.allocate(placement)
    # The exact measure (every type, memory counted, the change itself as the cost), which FGD's
    # integer score and our default's first rule are both read from.
    cache = placement_module._FragmentationCache(
        cluster, placement_module._TaskTypes.from_mix(mix, coverage=1.0, host_memory=True)
    )
    change, _ = cache.best_moves(probe)
    cache.refresh_aggregates()
    for row in range(len(cluster.nodes)):
        assert cache.fragmentation[row] == pytest.approx(naive_fragmentation(cluster, row, mix), abs=1e-6)
    fresh = placement_module._FragmentationCache(cluster, cache.types)
    fresh_change, _ = fresh.best_moves(probe)
    assert np.allclose(change, fresh_change, equal_nan=True)
    # And every finite move really is the change of the naive measure after that move.
    for row in np.flatnonzero(np.isfinite(change)):
        before = naive_fragmentation(cluster, row, mix)
        trial = ClusterState(mixed_nodes())
        trial.milli_free[:] = cluster.milli_free
        trial.gpu_memory_free[:] = cluster.gpu_memory_free
        trial.cpu_free[:] = cluster.cpu_free
        trial.memory_free[:] = cluster.memory_free
        slots = np.flatnonzero(trial.candidate_mask(probe)[row])
        options = [[s] for s in slots] if probe.is_fractional else [list(slots)] if probe.gpu_count else [[]]
        best = min(naive_after(trial, row, option, probe, mix) for option in options)
        assert change[row] == pytest.approx(best - before, abs=1e-6)


def naive_after(cluster, row, slots, request, mix):
    placement = cluster.placement_for(row, slots, request)
    cluster.allocate(placement)
    try:
        return naive_fragmentation(cluster, row, mix)
    finally:
        cluster.release(placement)
