import os
import subprocess
import sys
from dataclasses import replace
from itertools import product
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spawner.sim.headroom import headroom, online_waste, packed_waste, waste_floor
from spawner.sim.openb import load_nodes, load_pods
from spawner.sim.replay import replay

from .test_replay import small_trace  # noqa: F401  (fixture)


def optimal_waste(fractions: list[int]) -> int:
    """The least free milli-GPU of any packing, by trying every assignment of tasks to GPUs."""
    best = None
    for assignment in product(range(len(fractions)), repeat=len(fractions)):
        loads: dict[int, int] = {}
        for size, gpu in zip(fractions, assignment, strict=True):
            loads[gpu] = loads.get(gpu, 0) + size
        if all(load <= 1000 for load in loads.values()):
            waste = 1000 * len(loads) - sum(fractions)
            best = waste if best is None else min(best, waste)
    return best or 0


def test_offline_packing_puts_each_task_on_the_tightest_gpu_largest_first():
    assert packed_waste([]) == 0
    assert packed_waste([810, 160]) == 30  # the small task fills the 0.81's gap
    assert packed_waste([810, 810]) == 2 * 190  # two tasks above half a GPU never share
    assert packed_waste([300, 500, 300, 500, 300]) == 100  # 0.5 + 0.5, then 3 x 0.3
    # Largest first: 0.6 opens a GPU and a 0.4 closes it; the second 0.4 opens another.
    assert packed_waste([400, 600, 400]) == 600
    with pytest.raises(ValueError, match="between 0 and 1000"):
        packed_waste([1000])
    with pytest.raises(ValueError, match="between 0 and 1000"):
        packed_waste([0])


def test_online_packing_takes_the_tasks_as_they_come():
    # 0.3 opens a GPU, 0.5 joins it (0.2 left), the next 0.3 cannot: 1.1 GPUs free in the end,
    # where the offline packer, seeing both 0.5s first, pairs them and leaves 0.1.
    assert online_waste([300, 500, 300, 500, 300]) == 1100
    assert online_waste([400, 600, 400]) == 600
    assert online_waste([600, 300, 100, 400]) == 600  # 0.3 and 0.1 fill the 0.6's GPU; 0.4 opens one
    with pytest.raises(ValueError, match="between 0 and 1000"):
        online_waste([1200])


def test_floor_counts_the_gaps_beside_tasks_above_half_a_gpu():
    assert waste_floor([]) == 0
    assert waste_floor([300, 300, 400]) == 0  # nothing above half a GPU: no bound
    # Two 0.81s keep 0.38 free, less the 0.16 that can join one of them.
    assert waste_floor([810, 810, 160]) == 220
    # The 0.19 gap alone gives 190; counting the 0.65's 0.35 gap too, less the 0.32 that fits
    # one of the gaps, gives 220, which is exactly what the best packing leaves.
    assert waste_floor([810, 650, 320]) == 220 == optimal_waste([810, 650, 320])
    # Small tasks enough to fill every gap: the bound says nothing.
    assert waste_floor([810, 190]) == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=999), max_size=5))
def test_floor_never_exceeds_the_best_packing_and_the_offline_packing_never_beats_it(fractions):
    best = optimal_waste(fractions)
    assert waste_floor(fractions) <= best <= min(packed_waste(fractions), online_waste(fractions))
    assert (packed_waste(fractions) + sum(fractions)) % 1000 == 0  # whole GPUs opened


def test_replay_observer_sees_every_arrival_without_changing_the_result(small_trace):  # noqa: F811
    nodes, pods = load_nodes(small_trace[0]), load_pods(small_trace[1])
    seen = []
    observed = replay(nodes, pods, "default", seed=1, observe=lambda *args: seen.append(args))
    plain = replay(nodes, pods, "default", seed=1)
    assert replace(observed, decisions_per_s=0) == replace(plain, decisions_per_s=0)
    assert len(seen) == observed.arrived
    assert sum(placed for _, placed, _, _ in seen) == observed.placed
    demands = [arrived for _, _, arrived, _ in seen]
    assert demands == sorted(demands) and demands[-1] == sum(r.total_milli for r, *_ in seen)


def test_headroom_reads_each_point_once_and_bounds_what_the_policy_left(small_trace):  # noqa: F811
    nodes, pods = load_nodes(small_trace[0]), load_pods(small_trace[1])
    points = headroom(nodes, pods, "default", seed=1, points=(50, 100, 500))
    assert [point.arrived_pct for point in points] == [50, 100, 500]
    final = replay(nodes, pods, "default", seed=1)
    # 500% is never reached: it is read at the end, where the replay's own figure stands.
    assert points[-1].unallocated_gpus == pytest.approx(final.unallocated_gpus_final)
    for point in points:
        assert point.waste_floor_gpus <= point.fraction_gpus_free <= point.unallocated_gpus
        assert point.unallocated_gpus == pytest.approx(point.fraction_gpus_free + point.idle_gpus)
        assert point.waste_floor_gpus <= min(point.packed_waste_gpus, point.online_waste_gpus)
    assert points[0].fractions_placed <= points[1].fractions_placed <= points[2].fractions_placed


def test_headroom_benchmark_prints_a_row_per_trace_and_point(small_trace, tmp_path):  # noqa: F811
    openb = tmp_path / "openb"
    openb.mkdir()
    (openb / "openb_node_list_gpu_node.csv").write_text(small_trace[0].read_text())
    (openb / "openb_pod_list_default.csv").write_text(small_trace[1].read_text())
    published = tmp_path / "published"
    published.mkdir()
    (published / "allocation_means.csv").write_text(
        "trace,policy,seeds,alloc_pct_at_100,alloc_pct_at_130\ndefault,06-FGD,10,80.0,90.0\n"
    )
    environment = {
        **os.environ,
        "GPUSLICE_OPENB_DIR": str(openb),
        "GPUSLICE_FGD_PUBLISHED_DIR": str(published),
    }
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "placement_headroom.py"
    run = subprocess.run(
        [sys.executable, str(script), "--seeds", "2", "--traces", "default", "--workers", "1"],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    rows = [line for line in run.stdout.splitlines() if line.startswith("| default |")]
    assert [row.split("|")[2].strip() for row in rows] == ["100%", "130%"]
    # 10 GPUs: the published 80% at 100% arrived leaves 2.0 GPUs, and 10% below that is 1.8.
    assert rows[0].split("|")[3:5] == [" 2.0 ", " 1.8 "]
