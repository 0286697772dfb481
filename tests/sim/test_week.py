"""``gpuslice sim week`` on small scenarios: the invariants at every instant, the policies' rules,
determinism, the scenario file's errors, and the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from spawner.cli import main
from spawner.core.units import GPUShare, Placement
from spawner.sim.scenario import ScenarioError, load_scenario
from spawner.sim.trace_week import TraceMissing, trace_path, trace_workload
from spawner.sim.week import POLICIES, InvariantError, WeekReplay, replay_week

REPO = Path(__file__).resolve().parents[2]

# One node of 4 GPUs (2 dev, 2 train), two groups of two developers who come in the morning,
# and a backlog of two-hour runs that checkpoint every 30 minutes: the mornings take lent dev
# GPUs back from training runs, which resume later from their checkpoints.
SMALL = """\
name: small
days: 2
warmup_days: 1
timing: {pass_interval_s: 2, preemption_grace_s: 30, interactive_hold_s: 60}
cluster:
  nodes:
    - {name: box, count: 1, gpu_model: V100, gpu_memory_gib: 32, dev_gpus: 2, train_gpus: 2}
groups:
  - {name: team, count: 2, developers: 2, guaranteed_gpus: 0, borrowing_limit_gpus: null}
developers:
  workdays: [mon, tue, wed, thu, fri]
  arrive_between: ["08:00", "09:00"]
  leave_between: ["17:00", "18:00"]
  slice: 1/2
  busy_fraction: 0.5
training:
  backlog_per_group: 2
  run_hours: 2
  checkpoint_every_min: 30
  checkpoint_on_stop: false
"""


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return load_scenario(path)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_the_invariants_hold_at_every_instant_of_every_policy(small, policy):
    # check_invariants runs after every event and every pass: no GPU over-allocated, no quota
    # exceeded, every job in exactly one place, every lease held by someone.
    result = replay_week(small, policy, seed=3, check_invariants=True)
    figures = result.figures
    assert figures["runs_completed"] > 0
    assert figures["interactive_requests"] == 8  # 4 developers on each measured workday (Mon, Tue)


def test_a_preempted_run_resumes_from_its_last_checkpoint_and_counts_once(small):
    result = replay_week(small, "gpuslice", seed=3, check_invariants=True)
    preempted = [event for event in result.history if event[0] == "preempted"]
    assert preempted, "the developers' mornings must take lent dev GPUs back"
    resumed_runs = 0
    for _kind, at, job_id, done, saved, _reason in preempted:
        # checkpoint_every_min: 30 and no checkpoint on stop: the work since the last one is lost.
        assert saved <= done and (done - saved) < 30 * 60
        later = [event for event in result.history if event[2] == job_id and event[1] > at]
        resumed = next((event for event in later if event[0] == "started"), None)
        if resumed is not None:
            resumed_runs += 1
            assert resumed[3] == saved, f"job {job_id} resumed from {resumed[3]}, not its checkpoint {saved}"
    assert resumed_runs
    succeeded = [event[2] for event in result.history if event[0] == "succeeded"]
    assert len(succeeded) == len(set(succeeded))
    assert result.figures["gpu_hours_lost_to_preemption"] > 0


def test_gpuslice_gives_developers_their_slice_within_the_grace_period_and_refuses_none(small):
    figures = replay_week(small, "gpuslice", seed=3).figures
    timing = small.timing
    assert figures["interactive_refused"] == 0
    # A reclaim costs the borrowers' grace period, plus the spawner's next poll, plus a pass.
    assert figures["max_interactive_wait_s"] <= timing.preemption_grace_s + timing.spawner_retry_s + 2


def test_static_pins_whole_gpus_and_trains_only_what_leaving_developers_launch(small):
    result = replay_week(small, "static", seed=3)
    assert result.figures["preemptions"] == 0
    # 4 developers, 4 cards: everyone gets one; each launches a run when leaving on a workday.
    assert result.figures["interactive_refused"] == 0
    submitted = [event for event in result.history if event[0] == "submitted"]
    assert len(submitted) == 4 * 2  # Monday (warm-up) and Tuesday evenings


def test_split_lends_dev_gpus_only_for_runs_that_end_before_the_developers_return(small):
    replay = WeekReplay(small, "split", seed=3, check_invariants=True)
    result = replay.run()
    assert result.figures["preemptions"] == 0
    dev_starts = [event for event in result.history if event[0] == "started" and event[4] == "dev"]
    assert dev_starts
    arrive = small.developers.arrive_between[0]
    for _, at, *_ in dev_starts:
        day_start = (at // 86400) * 86400
        next_arrival = day_start + arrive if at < day_start + arrive else day_start + 86400 + arrive
        assert at + small.training.time_limit_s <= next_arrival


def test_skipping_idle_ticks_decides_the_same_week_as_a_pass_every_tick(small):
    # A coarser tick keeps a pass on every tick affordable; the rule does not depend on its length.
    small = replace(small, days=1, warmup_days=0, timing=replace(small.timing, pass_interval_s=10))
    skipping = replay_week(small, "gpuslice", seed=5)
    every_tick = replay_week(small, "gpuslice", seed=5, every_pass=True)
    assert every_tick.passes > skipping.passes * 10
    decisions = {"started", "preempted", "succeeded", "failed"}
    decided = [event for event in skipping.history if event[0] in decisions]
    assert decided == [event for event in every_tick.history if event[0] in decisions]
    assert skipping.figures["runs_completed"] == every_tick.figures["runs_completed"]


def test_a_seed_gives_the_same_week_and_another_seed_another(small):
    first, again = replay_week(small, "gpuslice", seed=7), replay_week(small, "gpuslice", seed=7)
    assert first.history == again.history and first.figures == again.figures
    other = replay_week(small, "gpuslice", seed=8)
    assert other.history != first.history


def test_the_invariant_check_catches_an_over_allocated_gpu(small):
    replay = WeekReplay(small, "gpuslice", seed=0)
    replay.run()
    gpu = replay.nodes[0].gpus[0]
    whole = Placement(gpu.node, (GPUShare(gpu.uuid, 1000, gpu.memory_mib),))
    from spawner.core.units import Lease, SliceRequest, WorkloadClass

    for number in range(2):
        replay.leases[f"rogue-{number}"] = Lease(
            f"rogue-{number}", "x", "x", None, WorkloadClass.interactive, SliceRequest(gpus=1), whole, 0.0
        )
    with pytest.raises(InvariantError, match="over-allocates"):
        replay.check_invariants()


def test_the_invariant_check_catches_a_job_in_two_places(small):
    replay = WeekReplay(small, "gpuslice", seed=0)
    replay.run()
    job_id, run = next(iter(replay.ended.items()))
    replay.queued[job_id] = run
    with pytest.raises(InvariantError, match="both"):
        replay.check_invariants()


def test_scenario_errors_name_the_file_the_line_and_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        SMALL.replace("dev_gpus: 2,", "dev_gpu: 2,")
        .replace('arrive_between: ["08:00", "09:00"]', 'arrive_between: ["9:00", "08:00"]')
        .replace("slice: 1/2", "slice: half")
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    errors = caught.value.errors
    assert any(
        error.startswith(f"{path}:7: cluster.nodes[0].dev_gpu: unknown field (did you mean 'dev_gpus'?)")
        for error in errors
    ), errors
    assert any(
        f"{path}:12: developers.arrive_between[0]: expected a time of day as HH:MM" in e for e in errors
    )
    assert any(
        f"{path}:14: developers.slice: expected a fraction of one GPU such as 1/8" in e for e in errors
    )


def test_a_scenario_that_makes_no_sense_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text(SMALL.replace('leave_between: ["17:00", "18:00"]', 'leave_between: ["08:30", "18:00"]'))
    expected = r"odd.yaml:\d+: developers.leave_between: expected developers to leave"
    with pytest.raises(ScenarioError, match=expected):
        load_scenario(path)


def test_the_command_prints_the_issue_json_shape_and_writes_plots(tmp_path, capsys, small):
    pytest.importorskip("matplotlib", reason="matplotlib is a dependency: `make` installs it")
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    assert main(["sim", "week", "--scenario", str(path), "--json", "--plot", str(tmp_path / "plots")]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["scenario"] == "small" and set(document["policies"]) == set(POLICIES)
    types = {
        "runs_per_week": float,
        "busy_hours_per_card_per_day": float,
        "max_interactive_wait_s": float,
        "interactive_refused": int,
        "p95_queue_wait_s": float,
        "preemptions": int,
        "gpu_hours_lost_to_preemption": float,
    }
    for figures in document["policies"].values():
        for key, kind in types.items():
            assert type(figures[key]) is kind, key
    written = sorted(path.name for path in (tmp_path / "plots").iterdir())
    busy = ["small-gpuslice-busy.png", "small-queue.png", "small-split-busy.png", "small-static-busy.png"]
    assert written == busy
    assert all((tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in written)


def test_the_command_prints_a_table_against_the_first_policy(tmp_path, capsys):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    assert main(["sim", "week", "--scenario", str(path), "--policy", "static,gpuslice"]) == 0
    out = capsys.readouterr().out
    assert "runs vs static" in out and "gpuslice" in out and "split" not in out.split("\n")[1]


def test_the_command_refuses_a_bad_scenario_with_its_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(SMALL.replace("run_hours: 2", "run_hours: -2"))
    assert main(["sim", "week", "--scenario", str(path)]) == 2
    assert f"{path}:" in capsys.readouterr().err


def test_the_published_scenarios_load():
    aistation = load_scenario(REPO / "benchmarks" / "scenarios" / "aistation.yaml")
    assert sum(len(node.gpus) for node in aistation.nodes()) == 32
    assert sum(group.developers for group in aistation.groups) == 50
    openb = load_scenario(REPO / "benchmarks" / "scenarios" / "openb.yaml")
    assert openb.trace is not None


def test_the_openb_scenario_reads_the_trace_times():
    scenario = load_scenario(REPO / "benchmarks" / "scenarios" / "openb.yaml")
    if not trace_path(scenario).is_file():
        pytest.skip(f"the shared openb trace is not there: {trace_path(scenario)}")
    sessions, runs = trace_workload(scenario, whole_gpu_slices=False)
    assert sessions and runs
    week = 7 * 86400
    assert all(0 <= session.arrive_at < session.leave_at <= 2 * week for session in sessions)
    assert all(0 < run.work_s <= week and run.gpus >= 1 for run in runs)


def test_a_missing_trace_is_a_clear_skip(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPUSLICE_OPENB_DIR", str(tmp_path / "nowhere"))
    scenario = load_scenario(REPO / "benchmarks" / "scenarios" / "openb.yaml")
    with pytest.raises(TraceMissing):
        trace_workload(scenario, whole_gpu_slices=False)
    path = REPO / "benchmarks" / "scenarios" / "openb.yaml"
    assert main(["sim", "week", "--scenario", str(path), "--policy", "static"]) == 0
    assert "skipped" in capsys.readouterr().err
