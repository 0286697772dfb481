"""Fixtures for the telemetry tests: a real SQLite ledger with an NVML-sourced inventory of faked
cards, real processes standing in for servers and jobs, and a clock the test moves."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

import pytest

from spawner.core.quota import QuotaPolicy
from spawner.core.units import GPU, Node, SliceRequest
from spawner.inventory import SOURCE_LABEL
from spawner.ledger import Ledger

from .fake_nvml import FakeCard, FakeNvml

DEV_UUIDS = ("GPU-dev-0", "GPU-dev-1")
TRAIN_UUID = "GPU-train-0"
START = 1_715_637_000.0  # 2024-05-13 21:50 UTC: a poll or two from the end of the day


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def inventory() -> list[Node]:
    """One host with two 80 GiB dev cards and one training card, found by NVML."""
    gpus = tuple(GPU(uuid, "gpu-host", index, "A100-80GB", 81920) for index, uuid in enumerate(DEV_UUIDS))
    train = GPU(TRAIN_UUID, "gpu-host", 2, "A100-80GB", 81920, pools=frozenset({"train"}))
    return [Node("gpu-host", 64000, 512000, (*gpus, train), labels={SOURCE_LABEL: "nvml"})]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path, clock):
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", clock=clock) as opened:
        opened.create_schema()
        opened.sync_inventory(inventory())
        yield opened


@pytest.fixture
def nvml() -> FakeNvml:
    return FakeNvml([FakeCard(uuid) for uuid in (*DEV_UUIDS, TRAIN_UUID)])


def grant(ledger: Ledger, lease_id: str, user: str = "alice", group: str | None = "vision", **kwargs):
    """A slice of ``milli_gpu`` (1/8 by default) for a server, or whole GPUs for a job."""
    workload = kwargs.pop("workload", "interactive")
    request = kwargs.pop("request", SliceRequest(milli_gpu=125, pool="dev"))
    holder = kwargs.pop("holder", f"{user}/")
    result = ledger.allocate(lease_id, holder, user, group, workload, request, QuotaPolicy())
    assert result.granted, result.reason
    return result.lease


@dataclass
class Tree:
    """A real process standing in for a server or job (``root``) and one child it started."""

    root: subprocess.Popen
    child_pid: int


@pytest.fixture
def process_tree():
    """Start ``sh`` with ``environment``; it starts a child under ``child_environment`` (a user
    forging another lease's variables, say); the root outlives its child, as a server outlives a kernel."""
    started: list[subprocess.Popen] = []

    def start(environment: dict[str, str], child_prefix: str = "") -> Tree:
        root = subprocess.Popen(
            ["sh", "-c", f"{child_prefix} sleep 300 & echo $!; wait; sleep 300"],
            env={"PATH": os.environ["PATH"], **environment},
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(root)
        return Tree(root, int(root.stdout.readline()))

    yield start
    for root in started:
        try:
            os.killpg(root.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        root.wait()
        root.stdout.close()
