"""The service's MPS daemons and the hub's server environment follow one layout and one pool list."""

from __future__ import annotations

from spawner.enforce.mps import MPSControl, card_directories, default_root, pools_from_environment
from spawner.service.telemetry.mps_daemons import MPSDaemons


def test_the_daemon_uses_the_directories_servers_are_given(tmp_path):
    control = MPSControl("GPU-5c1f7a2e", tmp_path / "mps")
    directories = card_directories(tmp_path / "mps", "GPU-5c1f7a2e")
    assert str(control.pipe_directory) == directories.pipe_directory == f"{tmp_path}/mps/GPU-5c1f7a2e/pipe"
    assert str(control.log_directory) == directories.log_directory == f"{tmp_path}/mps/GPU-5c1f7a2e/log"
    assert control.environment()["CUDA_MPS_PIPE_DIRECTORY"] == directories.pipe_directory


def test_pools_and_root_default_to_what_the_hub_defaults_to(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUSLICE_MPS_POOLS", " dev, train ,")
    monkeypatch.setenv("GPUSLICE_STATE_DIR", str(tmp_path))
    daemons = MPSDaemons()
    assert daemons.pools == ["dev", "train"] == pools_from_environment({"GPUSLICE_MPS_POOLS": "dev,train"})
    assert daemons.root == str(default_root(tmp_path)) == f"{tmp_path}/mps"


def test_no_pool_variable_means_no_mps_pool(monkeypatch):
    monkeypatch.delenv("GPUSLICE_MPS_POOLS", raising=False)
    assert MPSDaemons().pools == []
    assert pools_from_environment({"GPUSLICE_MPS_POOLS": " "}) == []
