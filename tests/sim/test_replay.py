import json

import numpy as np
import pytest

from spawner.cli import main
from spawner.core.units import SliceRequest
from spawner.sim.openb import TraceError, load_nodes, load_pods, load_published
from spawner.sim.paths import FGD_PUBLISHED_ENV, OPENB_NODES, openb_file, openb_pods, trace_name
from spawner.sim.replay import INFLATION, allocation_curve, arrival_order, compare, replay
from spawner.sim.synthetic import MIXES, random_mix, synthetic_pods

NODES_CSV = """sn,cpu_milli,memory_mib,gpu,model
n0,32000,262144,4,V100M16
n1,32000,262144,4,V100M16
n2,16000,131072,2,T4
"""
PODS_CSV = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec
p0,4000,8192,1,500,
p1,2000,4096,1,250,
p2,8000,16384,2,1000,
p3,1000,2048,0,0,
p4,4000,8192,1,1000,T4
p5,2000,4096,1,300,V100M16|T4
"""


@pytest.fixture
def small_trace(tmp_path):
    nodes, pods = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    nodes.write_text(NODES_CSV)
    pods.write_text(PODS_CSV)
    return nodes, pods


def test_trace_files_become_units(small_trace):
    nodes = load_nodes(small_trace[0])
    pods = load_pods(small_trace[1])
    assert [len(node.gpus) for node in nodes] == [4, 4, 2]
    assert pods[0].request == SliceRequest(milli_gpu=500, cpu_milli=4000, memory_mib=8192)
    assert pods[2].request.gpus == 2
    assert pods[3].request.gpu_count == 0
    assert pods[5].request.gpu_models == frozenset({"V100M16", "T4"})


def test_bad_trace_names_file_line_and_column(tmp_path):
    bad = tmp_path / "pods.csv"
    bad.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,lots,1,1,100\n")
    with pytest.raises(TraceError, match=r"pods.csv:2: column 'cpu_milli': expected an integer, got 'lots'"):
        load_pods(bad)
    bad.write_text("name,cpu_milli\n")
    with pytest.raises(TraceError, match="missing column"):
        load_pods(bad)
    with pytest.raises(TraceError, match="No such file"):
        load_nodes(tmp_path / "absent.csv")


def test_arrivals_are_the_shuffled_trace_then_draws_up_to_130_percent(small_trace):
    pods = load_pods(small_trace[1])
    first = arrival_order(pods, total_gpus=10, seed=3)
    assert first == arrival_order(pods, total_gpus=10, seed=3)
    assert first != arrival_order(pods, total_gpus=10, seed=4)
    # Every task of the trace once, in a seeded order, before any drawn copy.
    assert sorted(pod.name for pod in first[: len(pods)]) == sorted(pod.name for pod in pods)
    target = INFLATION * 10 * 1000
    demand = sum(pod.request.total_milli for pod in first)
    # Draws stop when the next one's share of a GPU would pass the target (the artifact's test).
    assert demand - first[-1].request.total_milli + first[-1].request.per_gpu_milli <= target
    assert demand > target - max(pod.request.per_gpu_milli for pod in pods)
    # A trace that alone asks for more than the target is replayed once, shuffled, and no more.
    assert len(arrival_order(pods, total_gpus=1, seed=3)) == len(pods)


def test_allocation_curve_reads_the_mean_at_each_arrived_percent():
    # 10 GPUs; records after each task: arrived 4.9, 5.0, 5.1 GPUs (49, 50, 51%), then 7 GPUs (70%).
    arrived = np.array([4900, 5000, 5100, 7000])
    allocated = np.array([4000, 4500, 5000, 6000])
    curve = allocation_curve(arrived, allocated, total_gpus=10, points=(50, 60, 69, 90))
    assert curve[50] == 45.0  # only the record that rounds to 50% counts
    assert 60 not in curve  # nothing within one point of 60%
    assert curve[69] == 60.0  # none at 69%: the records within one point stand in
    assert 90 not in curve


def test_replay_reports_consistent_figures(small_trace):
    nodes, pods = load_nodes(small_trace[0]), load_pods(small_trace[1])
    result = replay(nodes, pods, "default", seed=1)
    assert 0 < result.alloc_ratio_at_100 <= result.alloc_ratio_final <= 1
    assert result.unallocated_gpus_final == pytest.approx(10 * (1 - result.alloc_ratio_final))
    assert result.placed < result.arrived  # inflated past capacity, so some tasks were dropped
    assert replay(nodes, pods, "default", seed=1).alloc_ratio_final == result.alloc_ratio_final


def test_compare_runs_every_policy_on_the_same_seeds(small_trace):
    nodes, pods = load_nodes(small_trace[0]), load_pods(small_trace[1])
    summary = compare(nodes, pods, ["fgd", "spread"], seeds=2, workers=1)
    assert set(summary) == {"fgd", "spread"}
    assert set(summary["fgd"]) == {
        "alloc_ratio_at_100",
        "alloc_ratio_final",
        "unallocated_gpus_final",
        "decisions_per_s",
        "curve",
    }
    curve = summary["fgd"]["curve"]
    assert set(curve) <= set(range(0, 131, 5)) and all(0 <= value <= 100 for value in curve.values())


def test_cli_json_output(small_trace, capsys):
    assert (
        main(
            [
                "sim",
                "place",
                "--nodes",
                str(small_trace[0]),
                "--pods",
                str(small_trace[1]),
                "--policy",
                "default,fgd",
                "--seeds",
                "2",
                "--workers",
                "1",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"] == 2
    assert set(report["policies"]) == {"default", "fgd"}
    figures = report["policies"]["default"]
    for key in ("alloc_ratio_at_100", "alloc_ratio_final", "unallocated_gpus_final", "decisions_per_s"):
        assert isinstance(figures[key], float)


def test_cli_table_and_errors(small_trace, capsys):
    assert (
        main(
            [
                "sim",
                "place",
                "--nodes",
                str(small_trace[0]),
                "--pods",
                str(small_trace[1]),
                "--seeds",
                "1",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "unalloc vs fgd" in table and "best-fit" in table
    with pytest.raises(SystemExit):
        main(["sim", "place", "--policy", "first-fit"])
    assert "unknown policy first-fit" in capsys.readouterr().err
    assert main(["sim", "place", "--nodes", "/nonexistent.csv", "--pods", str(small_trace[1])]) == 2
    assert "pass --nodes" in capsys.readouterr().err


def test_synthetic_mixes_are_valid_and_seeded():
    for mix in list(MIXES.values()) + [random_mix(5)]:
        pods = synthetic_pods(mix, 200, seed=1)
        assert len(pods) == 200
        assert all(pod.request.gpu_count for pod in pods)
    assert synthetic_pods(random_mix(5), 50, 2) == synthetic_pods(random_mix(5), 50, 2)


@pytest.fixture
def openb():
    nodes_path = openb_file(OPENB_NODES)
    if not nodes_path.is_file():
        pytest.skip(f"shared openb traces not found at {nodes_path.parent} (set GPUSLICE_OPENB_DIR)")
    return load_nodes(nodes_path)


def test_openb_cluster_is_read_whole(openb):
    assert len(openb) == 1213
    assert sum(len(node.gpus) for node in openb) == 6212
    pods = load_pods(openb_pods("multigpu30"))  # the one list without a gpu_spec column
    assert len(pods) == 8508


PUBLISHED_CSV = """trace,policy,seeds,alloc_pct_at_0,alloc_pct_at_100,alloc_pct_at_130
pods,06-FGD,10,0.25,61.5,70.25
pods,05-BestFit,10,0.25,60.0,65.0
pods,01-Random,10,0.25,50.0,55.0
"""


def test_published_curves_are_read_by_our_policy_names(tmp_path):
    path = tmp_path / "allocation_means.csv"
    path.write_text(PUBLISHED_CSV)
    curves = load_published(path)
    assert curves[("pods", "fgd")] == {0: 0.25, 100: 61.5, 130: 70.25}
    assert set(curves) == {("pods", "fgd"), ("pods", "best-fit")}  # Random has no policy of ours
    path.write_text(PUBLISHED_CSV.replace("61.5", "lots"))
    with pytest.raises(
        TraceError, match=r"allocation_means.csv:2: column 'alloc_pct_at_100': expected a number"
    ):
        load_published(path)
    assert trace_name("/x/openb_pod_list_gpushare40.csv") == "gpushare40"


def test_cli_shows_the_published_figures_beside_ours(small_trace, tmp_path, capsys, monkeypatch):
    (tmp_path / "allocation_means.csv").write_text(PUBLISHED_CSV)
    monkeypatch.setenv(FGD_PUBLISHED_ENV, str(tmp_path))
    arguments = ["sim", "place", "--nodes", str(small_trace[0]), "--pods", str(small_trace[1])]
    assert main([*arguments, "--policy", "fgd,default", "--seeds", "1", "--workers", "1"]) == 0
    table = capsys.readouterr().out
    fgd_row = next(line for line in table.splitlines() if line.startswith("fgd "))
    assert "61.50%" in fgd_row and "70.25%" in fgd_row
    monkeypatch.setenv(FGD_PUBLISHED_ENV, str(tmp_path / "absent"))
    assert main([*arguments, "--policy", "fgd", "--seeds", "1", "--workers", "1"]) == 0
    assert "published FGD figures: skipped" in capsys.readouterr().out
