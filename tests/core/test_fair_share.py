"""Fair-share usage as the service and the simulator both advance it (``core.fair_share``)."""

from __future__ import annotations

import pytest

from spawner.core.fair_share import advance
from spawner.core.scheduler import decayed_usage

HOUR = 3600.0
WEEK = 7 * 24 * HOUR


def test_the_first_pass_adds_nothing_and_keeps_what_was_saved():
    assert advance({"vision": 50.0}, [("vision", 2, 0.0, None)], None, 100.0, WEEK) == {"vision": 50.0}


def test_a_running_job_adds_its_gpu_seconds_since_the_last_pass():
    usage = advance({}, [("vision", 2, 0.0, None)], 10.0, 20.0, WEEK)
    assert usage == {"vision": pytest.approx(20.0)}


def test_a_job_that_ended_between_passes_counts_only_until_its_end():
    usage = advance({}, [("speech", 4, 12.0, 15.0)], 10.0, 20.0, WEEK)
    assert usage == {"speech": pytest.approx(12.0)}


def test_old_usage_halves_over_one_half_life_and_idle_groups_keep_decaying():
    usage = advance({"vision": 1000.0, None: 8.0}, [], 0.0, WEEK, WEEK)
    assert usage == {"vision": pytest.approx(500.0), None: pytest.approx(4.0)}


def test_it_is_the_scheduler_decay_rule_applied_to_each_group():
    runs = [("vision", 1, 0.0, None), ("vision", 3, 50.0, 80.0), ("speech", 2, None, None)]
    usage = advance({"vision": 7.0}, runs, 40.0, 100.0, HOUR)
    assert usage["vision"] == pytest.approx(decayed_usage(7.0, (60 + 90) / 60, 60, HOUR))
    assert usage["speech"] == pytest.approx(decayed_usage(0.0, 2.0, 60, HOUR))


def test_no_time_elapsed_changes_nothing():
    assert advance({"vision": 3.0}, [("vision", 8, 0.0, None)], 5.0, 5.0, WEEK) == {"vision": 3.0}
