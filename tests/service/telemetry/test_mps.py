"""The MPS control daemons, driven through the control program's real interface; a fake program on
PATH (tests/service/telemetry/fake_mps/) stands in for NVIDIA's where there is no GPU."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from spawner.core.units import GPU, Node, SliceRequest
from spawner.enforce.mps import MPSControl, MPSError, MPSLimits
from spawner.inventory import SOURCE_LABEL
from spawner.service.telemetry.mps_daemons import MPSDaemons, smallest_slice_limits

from .conftest import DEV_UUIDS, TRAIN_UUID, grant, inventory

FAKE_PROGRAM_DIR = Path(__file__).parent / "fake_mps"


@pytest.fixture
def fake_mps(monkeypatch):
    """The fake control program first on PATH (the real one, if installed, would need a GPU)."""
    monkeypatch.setenv("PATH", f"{FAKE_PROGRAM_DIR}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def control(tmp_path, fake_mps):
    daemon = MPSControl(DEV_UUIDS[0], tmp_path / "mps")
    yield daemon
    if daemon.pid() is not None:
        daemon.stop()


def state(control: MPSControl) -> dict:
    return json.loads((control.pipe_directory / "state.json").read_text())


def test_a_daemon_starts_once_sees_only_its_card_answers_and_quits(control):
    pid = control.start()

    assert control.start() == pid  # already running: not a second daemon
    assert control.healthy()
    assert state(control)["visible_devices"] == DEV_UUIDS[0]
    assert (control.log_directory / "control.log").exists()
    control.stop()
    assert control.pid() is None and not control.healthy()


def test_default_and_per_server_limits_are_set_on_the_daemon(control):
    control.start()
    control.set_default_limits(MPSLimits(memory_mib=10240, active_thread_percentage=13))
    control.command("start_server -uid 1000")
    [server] = control.server_pids()
    control.set_server_limits(server, MPSLimits(memory_mib=20480, active_thread_percentage=25))

    held = state(control)
    assert held["default_pinned_mem_limit"] == {"0": "10240M"}
    assert held["default_active_thread_percentage"] == 13
    assert held["servers"][str(server)]["pinned_mem_limit"] == {"0": "20480M"}
    assert held["servers"][str(server)]["active_thread_percentage"] == 25
    assert control.command("get_default_device_pinned_mem_limit 0") == "10240M"


def test_a_refused_command_and_a_missing_daemon_are_errors_that_say_so(control):
    with pytest.raises(MPSError, match="Cannot find MPS control daemon"):
        control.command("get_server_list")
    control.start()
    with pytest.raises(MPSError, match="refused 'set_device_pinned_mem_limit 4242 0 1M'"):
        control.set_server_limits(4242, MPSLimits(memory_mib=1, active_thread_percentage=10))


def test_a_missing_control_program_is_named(tmp_path):
    control = MPSControl(DEV_UUIDS[0], tmp_path, program="no-such-mps-control")
    with pytest.raises(MPSError, match="no-such-mps-control is not on PATH"):
        control.start()


def test_limits_out_of_range_are_refused():
    with pytest.raises(ValueError, match="1..100"):
        MPSLimits(memory_mib=1024, active_thread_percentage=0)


def test_the_smallest_slice_placeable_on_a_card_sets_its_defaults():
    [node] = inventory()
    dev, train = node.gpus[0], node.gpus[2]
    requests = [
        SliceRequest(milli_gpu=250, pool="dev"),
        SliceRequest(milli_gpu=125, pool="dev"),
        SliceRequest(gpus=1, pool="train"),
        SliceRequest(milli_gpu=500, pool="train"),
    ]
    assert smallest_slice_limits(dev, requests) == MPSLimits(10240, 13)
    assert smallest_slice_limits(train, requests) == MPSLimits(40960, 50)
    assert smallest_slice_limits(train, requests[:3]) is None


def test_daemons_run_on_the_shared_cards_of_the_chosen_pools_only(tmp_path, fake_mps):
    daemons = MPSDaemons(pools=["dev"], root=str(tmp_path / "mps"))
    started = daemons.start(inventory(), [SliceRequest(milli_gpu=125, pool="dev")])
    try:
        assert sorted(started) == sorted(DEV_UUIDS) and TRAIN_UUID not in daemons.controls
        assert daemons.unhealthy() == []
        for uuid in DEV_UUIDS:
            assert state(daemons.controls[uuid])["default_pinned_mem_limit"] == {"0": "10240M"}
        daemons.controls[DEV_UUIDS[1]].command("quit")
        assert daemons.unhealthy() == [DEV_UUIDS[1]]
    finally:
        daemons.stop()
    assert all(MPSControl(uuid, tmp_path / "mps").pid() is None for uuid in DEV_UUIDS)


def test_each_users_mps_server_is_started_and_held_to_their_slices(tmp_path, fake_mps, ledger):
    daemons = MPSDaemons(pools=["dev"], root=str(tmp_path / "mps"))
    daemons.start(inventory(), [SliceRequest(milli_gpu=125, pool="dev")])
    try:
        # root is a system account here (uid 0); the hub user "alice" has none.
        first = grant(ledger, "lease-root-1", user="root", holder="root/")
        grant(ledger, "lease-alice", user="alice", holder="alice/")
        card = first.placement.shares[0].gpu_uuid

        assert daemons.prepare_servers(ledger.list_leases()) == [(card, 0, MPSLimits(10240, 13))]
        [server] = daemons.controls[card].server_pids()
        assert state(daemons.controls[card])["servers"][str(server)]["uid"] == 0
        assert daemons.prepare_servers(ledger.list_leases()) == []  # nothing changed, nothing sent

        second = grant(ledger, "lease-root-2", user="root", holder="root/two")
        assert second.placement.shares[0].gpu_uuid == card  # the default policy packs a card first
        assert daemons.prepare_servers(ledger.list_leases()) == [(card, 0, MPSLimits(20480, 25))]
        held = state(daemons.controls[card])["servers"][str(server)]
        assert held["pinned_mem_limit"] == {"0": "20480M"} and held["active_thread_percentage"] == 25
    finally:
        daemons.stop()


def mixed_inventory() -> list[Node]:
    """The NVML host of the other tests, plus a node from a static inventory (a card NVML did not
    find) and a simulated card, both in the MPS pool."""
    static = Node(
        "static-a",
        16000,
        65536,
        (GPU("GPU-static-a-0", "static-a", 0, "A100-80GB", 81920),),
        labels={SOURCE_LABEL: "static"},
    )
    simulated = Node(
        "sim-a",
        16000,
        65536,
        (GPU("GPU-sim-a-0", "sim-a", 0, "A100-80GB", 81920, simulated=True),),
        labels={SOURCE_LABEL: "simulated"},
    )
    return [*inventory(), static, simulated]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_only_cards_whose_daemon_runs_are_served_and_each_other_says_why_once(tmp_path, fake_mps):
    daemons = MPSDaemons(pools=["dev"], root=str(tmp_path / "mps"))
    records = Records()
    daemons.log.addHandler(records)
    try:
        daemons.start(mixed_inventory(), [SliceRequest(milli_gpu=125, pool="dev")])
        daemons.start(mixed_inventory(), [])  # asked again: nothing new to say of those cards
    finally:
        daemons.stop()
        daemons.log.removeHandler(records)
    assert [daemons.serves(uuid) for uuid in (*DEV_UUIDS, TRAIN_UUID)] == [False, False, False]  # stopped
    assert set(daemons.without_daemon) == {"GPU-static-a-0", "GPU-sim-a-0", *DEV_UUIDS}
    assert (
        "NVML did not find it on this host (its inventory source is 'static')"
        in (daemons.without_daemon["GPU-static-a-0"])
    )
    assert "simulated GPU" in daemons.without_daemon["GPU-sim-a-0"]
    # The second start found no profile for the dev cards: said once each, as the others.
    assert daemons.without_daemon[DEV_UUIDS[0]] == "no profile places a fractional slice on it"
    said = [message for message in records.messages if "gets no daemon" in message]
    assert len(said) == 4 and sum("GPU-static-a-0" in message for message in said) == 1


def test_a_running_daemon_is_what_serves_says(tmp_path, fake_mps):
    daemons = MPSDaemons(pools=["dev"], root=str(tmp_path / "mps"))
    daemons.start(mixed_inventory(), [SliceRequest(milli_gpu=125, pool="dev")])
    try:
        assert [daemons.serves(uuid) for uuid in DEV_UUIDS] == [True, True]
        assert not daemons.serves(TRAIN_UUID) and not daemons.serves("GPU-static-a-0")
    finally:
        daemons.stop()


def test_a_missing_control_program_stops_the_start_only_where_a_daemon_was_due(tmp_path):
    daemons = MPSDaemons(pools=["dev"], root=str(tmp_path / "mps"), program="no-such-mps-control")
    with pytest.raises(MPSError, match="no-such-mps-control is not found on PATH"):
        daemons.start(inventory(), [SliceRequest(milli_gpu=125, pool="dev")])
    static_only = [node for node in mixed_inventory() if node.labels.get(SOURCE_LABEL) != "nvml"]
    assert daemons.start(static_only, [SliceRequest(milli_gpu=125, pool="dev")]) == []
    assert not daemons.controls
