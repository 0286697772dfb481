"""The service test hub (``hub_test_config.py``) on a static GPU inventory instead of simulated GPUs.

Used by tests that need several nodes (gangs, backfill): ``GPUSLICE_TEST_GPUS_FILE`` names the
inventory YAML. Everything else is the plain test hub, loaded first.
"""

import os
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
load_subconfig(str(Path(__file__).with_name("hub_test_config.py")))  # noqa: F821 - likewise

INVENTORY_ARGS = ("--Inventory.source=", "--Inventory.simulated_gpu_count=", "--Inventory.node_name=")

for service in c.JupyterHub.services:
    if service["name"] == "gpuslice":
        service["command"] = [
            *(arg for arg in service["command"] if not arg.startswith(INVENTORY_ARGS)),
            "--Inventory.source=static",
            f"--Inventory.static_path={os.environ['GPUSLICE_TEST_GPUS_FILE']}",
        ]
