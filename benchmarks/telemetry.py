"""What the GPU monitor costs: CPU per poll on an 8-GPU host with 100 GPU processes, faked NVML.

Run: ``.venv/bin/python -m benchmarks.telemetry [--polls 200] [--interval 5]`` in the repository root.

Only the GPU is faked (``tests/service/telemetry/fake_nvml.py``: the calls NVML would answer); the
rest is what the service runs: a real SQLite ledger holding 50 slices of 1/8 on 8 cards, and 100
real processes (two under each of 50 ``sh`` "servers" started with their lease id), which the
monitor maps to their leases through ``/proc`` each poll. CPU time is the process's own
(``time.process_time``: every thread, so the worker thread's NVML and ``/proc`` work counts),
not wall time, so other load on the machine does not inflate it.

Rows, each measured in the same run (the baseline first):

- ``NVML read``: the sampler alone (8 cards x memory, utilisation, processes, their utilisation);
- ``map cold``: the sampler plus finding every process's lease from scratch (as when all 100
  processes are new), i.e. the walk of each one's ancestors and environments;
- ``full poll``: :meth:`GPUMonitor.poll` as the service runs it every interval: the ledger's
  holdings, the sample, the mapping (cached per process), enforcement, accounting, and the
  rollup written every 60 s of the clock (which the run advances by the interval each poll).

``% of a core`` is CPU per poll divided by the interval: the monitor's steady cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from spawner.core.quota import QuotaPolicy
from spawner.core.units import GPU, Node, SliceRequest
from spawner.inventory import SOURCE_LABEL
from spawner.ledger import Ledger
from spawner.service.telemetry import GPUMonitor
from spawner.service.telemetry.owners import ProcessOwners
from spawner.service.telemetry.readings import NvmlSampler
from tests.service.telemetry.fake_nvml import FakeCard, FakeNvml

GPUS = 8
LEASES = 50
PROCESSES_PER_LEASE = 2
RESULTS = Path(__file__).resolve().parent / "results" / "telemetry.json"


class Clock:
    def __init__(self) -> None:
        self.now = 1_715_594_400.0

    def __call__(self) -> float:
        return self.now


def start_servers(lease_ids: list[str]) -> tuple[list[subprocess.Popen], dict[str, list[int]]]:
    """One ``sh`` per lease, with its lease id, each running PROCESSES_PER_LEASE sleeping children."""
    roots, children = [], {}
    script = " ".join(["sleep 600 & echo $!;"] * PROCESSES_PER_LEASE) + " wait"
    for lease_id in lease_ids:
        root = subprocess.Popen(
            ["sh", "-c", script],
            env={"PATH": os.environ["PATH"], "GPUSLICE_LEASE_ID": lease_id},
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        roots.append(root)
        children[lease_id] = [int(root.stdout.readline()) for _ in range(PROCESSES_PER_LEASE)]
    return roots, children


def cpu_per_call(function, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        function()
    return (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=200, help="polls measured per row")
    parser.add_argument("--interval", type=float, default=5.0, help="the monitor's interval (s)")
    options = parser.parse_args()

    uuids = [f"GPU-bench-{index}" for index in range(GPUS)]
    gpus = tuple(GPU(uuid, "bench", index, "A100-80GB", 81920) for index, uuid in enumerate(uuids))
    node = Node("bench", 64000, 512000, gpus, labels={SOURCE_LABEL: "nvml"})
    cards = {uuid: FakeCard(uuid, gpu_percent=40) for uuid in uuids}
    nvml = FakeNvml(list(cards.values()))
    clock = Clock()
    with (
        tempfile.TemporaryDirectory() as scratch,
        Ledger(f"sqlite:///{scratch}/ledger.sqlite", clock=clock) as ledger,
    ):
        ledger.create_schema()
        ledger.sync_inventory([node])
        leases = [
            ledger.allocate(
                f"lease-{index}",
                f"user{index}/",
                f"user{index}",
                "lab",
                "interactive",
                SliceRequest(milli_gpu=125, pool="dev"),
                QuotaPolicy(),
            ).lease
            for index in range(LEASES)
        ]
        roots, children = start_servers([lease.id for lease in leases])
        try:
            for lease in leases:
                card = cards[lease.placement.shares[0].gpu_uuid]
                for pid in children[lease.id]:
                    card.processes[pid] = 2048
                    card.sm_percent[pid] = 5
            processes = sum(len(card.processes) for card in cards.values())

            sampler = NvmlSampler(nvml)
            sampler.start()
            nvml_only = cpu_per_call(lambda: sampler.read(clock.now), options.polls)

            def cold() -> None:
                sample = sampler.read(clock.now)
                ProcessOwners().owners(process.pid for process in sample.processes)

            cold_map = cpu_per_call(cold, max(1, options.polls // 4))

            monitor = GPUMonitor(ledger, nvml_library=nvml, clock=clock, interval_s=options.interval)

            async def polls() -> float:
                await monitor.poll()  # the first poll learns every process's owner
                started = time.process_time()
                for _ in range(options.polls):
                    clock.now += options.interval
                    poll = await monitor.poll()
                    assert len(poll.lease_use) == LEASES and not poll.unowned and not poll.actions
                return (time.process_time() - started) / options.polls

            full = asyncio.run(polls())
            asyncio.run(monitor.stop())
        finally:
            for root in roots:
                os.killpg(root.pid, signal.SIGKILL)
                root.wait()
                root.stdout.close()

    rows = [("NVML read (baseline)", nvml_only), ("NVML read + map cold", cold_map), ("full poll", full)]
    print(f"GPU monitor on {GPUS} faked GPUs, {processes} real processes, {LEASES} leases")
    print(f"interval {options.interval:g} s, {options.polls} polls per row; CPU time of this process")
    print(f"{'row':<24}{'CPU ms/poll':>12}{'% of a core':>13}{'x baseline':>12}")
    for name, seconds in rows:
        share = 100 * seconds / options.interval
        print(f"{name:<24}{seconds * 1000:>12.2f}{share:>12.3f}%{seconds / nvml_only:>12.1f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "gpus": GPUS,
                "processes": processes,
                "leases": LEASES,
                "interval_s": options.interval,
                "polls": options.polls,
                "cpu_ms_per_poll": {name: round(seconds * 1000, 3) for name, seconds in rows},
                "percent_of_a_core": {
                    name: round(100 * seconds / options.interval, 4) for name, seconds in rows
                },
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
