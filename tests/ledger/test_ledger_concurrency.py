"""Many writers at once, on one SQLite file and on PostgreSQL: no double grant, no overcommit.

Workers (threads sharing one ledger, or processes with a ledger each) walk through lease ids in
step, so that several of them ask for the same id at the same moment, and release ids a little
behind them. Afterwards every grant and release the ledger recorded is replayed in time order
(the ledger reads its clock after taking the allocator lock, so recorded times follow the order
of the transactions) and at every point the GPUs and quotas must hold.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import threading
from collections import Counter, defaultdict
from multiprocessing.synchronize import Barrier as ProcessBarrier

import pytest

from spawner.core.quota import BatchLimits, InteractiveLimits, Limits, QuotaPolicy, Usage
from spawner.core.units import GPU, Lease, Node, SliceRequest, WorkloadClass
from spawner.ledger import LeaseConflictError, Ledger

STEPS = 40
POLICY = QuotaPolicy(
    groups={
        "vision": Limits(InteractiveLimits(max_milli_gpu=1500), BatchLimits(borrowing_limit_gpus=2)),
        "nlp": Limits(InteractiveLimits(max_servers=3), BatchLimits(max_running_jobs=1)),
    },
    default_user=Limits(
        InteractiveLimits(max_servers=2, max_milli_gpu=1000), BatchLimits(max_running_jobs=1)
    ),
)
USERS = ["ana", "ben", "chen", "dana", "eli"]
GROUPS = ["vision", "nlp", None]


def inventory() -> list[Node]:
    nodes = [
        Node(name, 16000, 65536, gpus=tuple(GPU(f"{name}-{i}", name, i, "T4", 16384) for i in range(2)))
        for name in ("dev-a", "dev-b")
    ]
    train = tuple(GPU(f"train-{i}", "train", i, "A100", 81920, pools=frozenset({"train"})) for i in range(2))
    return [*nodes, Node("train", 32000, 262144, gpus=train)]


def ask_for(number: int) -> tuple[str, str | None, WorkloadClass, SliceRequest]:
    """The one request that lease id ``number`` stands for, so every worker asks the same."""
    rng = random.Random(number)
    user, group = rng.choice(USERS), rng.choice(GROUPS)
    if rng.random() < 0.25:
        return user, group, WorkloadClass.batch, SliceRequest(gpus=rng.choice([1, 2]), pool="train")
    milli = rng.choice([125, 250, 500, 1000])
    return user, group, WorkloadClass.interactive, SliceRequest(milli_gpu=milli, pool="dev", cpu_milli=2000)


def run_operations(ledger: Ledger, seed: int, steps: int = STEPS) -> list[tuple[str, str, Lease | None]]:
    """Allocate ids near ``2 * step`` and release ids a little behind; return what happened."""
    rng = random.Random(seed)
    outcomes = []
    for step in range(steps):
        if rng.random() < 0.6:
            number = 2 * step + rng.randrange(4)
            user, group, workload, request = ask_for(number)
            lease_id = f"lease-{number}"
            try:
                result = ledger.allocate(lease_id, f"holder-{number}", user, group, workload, request, POLICY)
            except LeaseConflictError:
                outcomes.append(("released-before", lease_id, None))
                continue
            if result.granted:
                outcomes.append(("existing" if result.existing else "granted", lease_id, result.lease))
            else:
                outcomes.append(("refused", lease_id, None))
        else:
            lease_id = f"lease-{max(0, 2 * step - rng.randrange(8))}"
            outcomes.append(("released", lease_id, ledger.release(lease_id)))
    return outcomes


_start_together: ProcessBarrier | None = None


def _await_start(barrier: ProcessBarrier) -> None:
    global _start_together
    _start_together = barrier


def hammer_process(url: str, seed: int) -> list[tuple[str, str, Lease | None]]:
    """A process's worker: its own ledger on the shared database, as a second replica would."""
    with contextlib.closing(Ledger(url)) as ledger:
        ledger.list_leases()  # connect before the start, so that all begin writing together
        _start_together.wait()
        return run_operations(ledger, seed)


def prepare(url: str) -> None:
    with contextlib.closing(Ledger(url)) as ledger:
        ledger.create_schema()
        ledger.sync_inventory(inventory())


def within(limits: Limits, held) -> bool:
    def ok(value, limit):
        return limit is None or value <= limit

    max_gpus = limits.batch.max_gpus
    return (
        ok(held.servers, limits.interactive.max_servers)
        and ok(held.interactive_milli, limits.interactive.max_milli_gpu)
        and ok(held.batch_jobs, limits.batch.max_running_jobs)
        and ok(held.batch_milli, None if max_gpus is None else max_gpus * 1000)
    )


def assert_consistent(url: str, outcomes: list[tuple[str, str, Lease | None]]) -> None:
    kinds = Counter(kind for kind, _, _ in outcomes)
    assert kinds["granted"] and kinds["refused"] and kinds["existing"], kinds

    # No lease id was granted twice, and every answer for an id is the one lease the ledger holds.
    grants = Counter(lease_id for kind, lease_id, _ in outcomes if kind == "granted")
    assert max(grants.values()) == 1, [lease_id for lease_id, count in grants.items() if count > 1]
    with contextlib.closing(Ledger(url)) as ledger:
        for kind, lease_id, lease in outcomes:
            if lease is not None:
                assert ledger.get(lease_id) == lease, (kind, lease_id)
        records = [ledger.record(lease.id) for lease in ledger.list_leases(live_only=False)]
        assert {record.lease.id for record in records} == set(grants)
        final_usage = ledger.usage()

    # Replay every grant and release in the order they happened: nothing ever went over.
    gpus = {gpu.uuid: gpu for node in inventory() for gpu in node.gpus}
    events = [(record.lease.created_at, 1, record.lease) for record in records]
    events += [(record.released_at, 0, record.lease) for record in records if not record.live]
    milli: dict[str, int] = defaultdict(int)
    memory: dict[str, int] = defaultdict(int)
    live: dict[str, Lease] = {}
    for _, starts, lease in sorted(events, key=lambda event: event[:2]):
        sign = 1 if starts else -1
        if starts:
            live[lease.id] = lease
        else:
            del live[lease.id]
        for share in lease.placement.shares:
            milli[share.gpu_uuid] += sign * share.milli_gpu
            memory[share.gpu_uuid] += sign * share.memory_mib
            assert milli[share.gpu_uuid] <= 1000, share.gpu_uuid
            assert memory[share.gpu_uuid] <= gpus[share.gpu_uuid].memory_mib, share.gpu_uuid
        usage = Usage.from_leases(live.values())
        for name, held in usage.users.items():
            assert within(POLICY.for_user(name), held), (name, held)
        for name, held in usage.groups.items():
            assert within(POLICY.for_group(name), held), (name, held)

    def holdings(usage: Usage) -> dict[str, tuple[int, int, int, int]]:
        return {
            name: (held.servers, held.interactive_milli, held.batch_jobs, held.batch_milli)
            for name, held in usage.users.items()
            if held.servers or held.batch_jobs
        }

    assert holdings(Usage.from_leases(live.values())) == holdings(final_usage)


def hammer_with_threads(url: str, threads: int = 8) -> list[tuple[str, str, Lease | None]]:
    prepare(url)
    outcomes: list[tuple[str, str, Lease | None]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)
    with contextlib.closing(Ledger(url)) as shared:

        def worker(seed: int) -> None:
            try:
                start.wait()
                outcomes.extend(run_operations(shared, seed))
            except BaseException as error:  # surfaced below, with the thread's traceback
                errors.append(error)

        workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    if errors:
        raise errors[0]
    return outcomes


def hammer_with_processes(url: str, processes: int = 4) -> list[tuple[str, str, Lease | None]]:
    prepare(url)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with context.Pool(processes, initializer=_await_start, initargs=(barrier,)) as pool:
        results = pool.starmap(hammer_process, [(url, 100 + seed) for seed in range(processes)])
    return [outcome for result in results for outcome in result]


def test_threads_on_one_sqlite_file(sqlite_url):
    assert_consistent(sqlite_url, hammer_with_threads(sqlite_url))


def test_processes_on_one_sqlite_file(sqlite_url):
    assert_consistent(sqlite_url, hammer_with_processes(sqlite_url))


@pytest.mark.postgres
def test_threads_on_postgresql(postgres_url):
    assert_consistent(postgres_url, hammer_with_threads(postgres_url))


@pytest.mark.postgres
def test_processes_on_postgresql(postgres_url):
    assert_consistent(postgres_url, hammer_with_processes(postgres_url))
