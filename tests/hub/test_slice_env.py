"""The environment a server holding a lease starts with, built from the service's lease JSON."""

import pytest

from spawner.enforce import kernel
from spawner.enforce.env import CardDaemons, kernels_data_dir, slice_environment, with_kernel_limits
from spawner.enforce.mps import MPSDirectories, card_directories

GPU = {"uuid": "GPU-5c1f7a2e", "memory_mib": 81920, "simulated": False}
SIM_GPU = {"uuid": "GPU-sim-node-1", "memory_mib": 81920, "simulated": True}


def lease(*shares, node="gpu-a", lease_id="server-1"):
    return {
        "id": lease_id,
        "node": node,
        "shares": [{"gpu_uuid": uuid, "milli_gpu": milli, "memory_mib": mib} for uuid, milli, mib in shares],
    }


def test_an_eighth_of_a_real_card():
    env = slice_environment(
        lease(("GPU-5c1f7a2e", 125, 10240)),
        profile="a100-1-8",
        gpus=[GPU],
        service_url="http://hub/services/gpuslice/",
    )
    assert env == {
        "CUDA_VISIBLE_DEVICES": "GPU-5c1f7a2e",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPUSLICE_LEASE_ID": "server-1",
        "GPUSLICE_PROFILE": "a100-1-8",
        "GPUSLICE_MILLI_GPU": "125",
        "GPUSLICE_GPUS": "1",
        "GPUSLICE_GPU_MEMORY_MIB": "10240",
        "GPUSLICE_GPU_UUIDS": "GPU-5c1f7a2e",
        "GPUSLICE_NODE": "gpu-a",
        "GPUSLICE_MEMORY_FRACTION": "0.1250",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.12",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "GPUSLICE_SERVICE_URL": "http://hub/services/gpuslice/",
    }


def test_memory_fraction_follows_the_memory_granted_not_the_compute_share():
    env = slice_environment(lease(("GPU-5c1f7a2e", 125, 20480)), profile="p", gpus=[GPU])
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.25"
    assert env["GPUSLICE_MEMORY_FRACTION"] == "0.2500"


def test_without_the_gpu_list_the_fraction_follows_the_compute_share():
    env = slice_environment(lease(("GPU-5c1f7a2e", 290, 0)), profile="p")
    # 0.29 is 0.28999... as a float; rounding down must not lose the hundredth.
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.29"
    assert "GPUSLICE_SIMULATED" not in env
    assert "GPUSLICE_SERVICE_URL" not in env


def test_simulated_gpus_say_so_from_the_inventory_or_the_uuid():
    assert (
        slice_environment(lease(("GPU-sim-node-1", 125, 10240)), profile="p", gpus=[SIM_GPU])[
            "GPUSLICE_SIMULATED"
        ]
        == "1"
    )
    assert slice_environment(lease(("GPU-sim-node-1", 125, 10240)), profile="p")["GPUSLICE_SIMULATED"] == "1"


def test_whole_gpus_are_listed_in_order_and_the_fraction_is_one():
    env = slice_environment(lease(("GPU-a", 1000, 81920), ("GPU-b", 1000, 81920)), profile="full")
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"
    assert env["GPUSLICE_GPUS"] == "2"
    assert env["GPUSLICE_MILLI_GPU"] == "2000"
    assert env["GPUSLICE_GPU_MEMORY_MIB"] == "163840"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "1.00"


def test_mps_limits_use_client_ordinals_and_round_the_thread_share_up():
    mps = MPSDirectories("/run/mps", "/var/log/mps")
    env = slice_environment(lease(("GPU-5c1f7a2e", 125, 10240)), profile="p", enforcement="mps", mps=mps)
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/run/mps"
    assert env["CUDA_MPS_LOG_DIRECTORY"] == "/var/log/mps"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "13"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=10240M"
    two = slice_environment(
        lease(("GPU-a", 1000, 81920), ("GPU-b", 1000, 40960)), profile="p", enforcement="mps", mps=mps
    )
    assert two["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=81920M,1=40960M"
    assert two["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "100"


def test_env_enforcement_sets_no_mps_variables():
    env = slice_environment(lease(("GPU-a", 125, 10240)), profile="p")
    assert not [name for name in env if name.startswith("CUDA_MPS_")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"enforcement": "mig"}, "enforcement must be one of env, mps"),
        ({"enforcement": "mps"}, "needs the MPS pipe and log directories"),
    ],
)
def test_bad_enforcement_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        slice_environment(lease(("GPU-a", 125, 10240)), profile="p", **kwargs)


def test_a_lease_without_gpus_has_no_slice_environment():
    with pytest.raises(ValueError, match="holds no GPU"):
        slice_environment(lease(), profile="cpu")


def test_kernel_limits_lead_the_jupyter_path():
    env = with_kernel_limits({"A": "1"}, "/opt/share/jupyter:")
    assert env["JUPYTER_PATH"] == f"{kernels_data_dir()}:/opt/share/jupyter"
    kernelspec = kernels_data_dir() + "/kernels/python3/kernel.json"
    assert "--IPKernelApp.extensions=spawner.enforce.kernel" in open(kernelspec).read()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("0.1250", 0.125), ("1", 1.0), ("0", None), ("2", None), ("x", None)],
)
def test_kernel_reads_the_fraction_or_nothing(value, expected):
    environ = {} if value is None else {"GPUSLICE_MEMORY_FRACTION": value}
    assert kernel.slice_fraction(environ) == expected


def test_kernel_extension_is_quiet_without_torch_or_cuda(monkeypatch):
    monkeypatch.setenv("GPUSLICE_MEMORY_FRACTION", "0.125")
    kernel.load_ipython_extension(ipython=None)
    try:
        import torch
    except ImportError:
        assert kernel.apply_torch_limit(0.125) == 0
    else:
        assert kernel.apply_torch_limit(0.125) == (
            torch.cuda.device_count() if torch.cuda.is_available() else 0
        )


MPS_ROOT = "/var/lib/gpuslice/mps"
# As GET gpus describes them: mps_daemon says whether the service runs the card's daemon now.
DEV_CARD = {
    "uuid": "GPU-5c1f7a2e",
    "memory_mib": 81920,
    "simulated": False,
    "pools": ["dev"],
    "mps_daemon": True,
}
NO_DAEMON_DEV_CARD = {"uuid": "GPU-7b2c0d55", "memory_mib": 81920, "simulated": False, "pools": ["dev"]}
TRAIN_CARD = {"uuid": "GPU-9d0e4b11", "memory_mib": 81920, "simulated": False, "pools": ["train"]}
SIM_DEV_CARD = {"uuid": "GPU-sim-node-1", "memory_mib": 81920, "simulated": True, "pools": ["dev"]}
DEV_DAEMONS = CardDaemons(pools=frozenset({"dev"}), root=MPS_ROOT)


def test_a_slice_of_an_mps_card_talks_to_that_cards_daemon():
    env = slice_environment(
        lease(("GPU-5c1f7a2e", 125, 10240)),
        profile="p",
        gpus=[DEV_CARD, TRAIN_CARD],
        card_daemons=DEV_DAEMONS,
    )
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == f"{MPS_ROOT}/GPU-5c1f7a2e/pipe"
    assert env["CUDA_MPS_LOG_DIRECTORY"] == f"{MPS_ROOT}/GPU-5c1f7a2e/log"
    # The same directories the service starts the card's daemon with: one layout rule.
    assert card_directories(MPS_ROOT, "GPU-5c1f7a2e") == MPSDirectories(
        env["CUDA_MPS_PIPE_DIRECTORY"], env["CUDA_MPS_LOG_DIRECTORY"]
    )
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "13"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=10240M"


def test_the_cards_daemon_wins_over_the_host_wide_one():
    env = slice_environment(
        lease(("GPU-5c1f7a2e", 125, 10240)),
        profile="p",
        gpus=[DEV_CARD],
        enforcement="mps",
        mps=MPSDirectories("/tmp/nvidia-mps", "/tmp/nvidia-log"),
        card_daemons=DEV_DAEMONS,
    )
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == f"{MPS_ROOT}/GPU-5c1f7a2e/pipe"


@pytest.mark.parametrize(
    ("shares", "why"),
    [
        ((("GPU-9d0e4b11", 125, 10240),), "a card of a pool not shared through MPS"),
        ((("GPU-sim-node-1", 125, 10240),), "a simulated card has no daemon"),
        ((("GPU-5c1f7a2e", 1000, 81920),), "a whole card is shared with no one"),
        ((("GPU-5c1f7a2e", 1000, 81920), ("GPU-9d0e4b11", 1000, 81920)), "two cards: two daemons"),
        ((("GPU-unknown", 125, 10240),), "a card the service did not list"),
        ((("GPU-7b2c0d55", 125, 10240),), "a card of an MPS pool whose daemon the service does not run"),
    ],
)
def test_other_leases_keep_the_hosts_setting(shares, why):
    gpus = [DEV_CARD, TRAIN_CARD, SIM_DEV_CARD, NO_DAEMON_DEV_CARD]
    env = slice_environment(lease(*shares), profile="p", gpus=gpus, card_daemons=DEV_DAEMONS)
    assert not [name for name in env if name.startswith("CUDA_MPS_")], why
    host_wide = slice_environment(
        lease(*shares),
        profile="p",
        gpus=gpus,
        enforcement="mps",
        mps=MPSDirectories("/tmp/nvidia-mps", "/tmp/nvidia-log"),
        card_daemons=DEV_DAEMONS,
    )
    assert host_wide["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/nvidia-mps", why
