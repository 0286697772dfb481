"""Load on the jobs API: N concurrent clients submitting and listing against a running service.

Run: ``.venv/bin/python -m benchmarks.load [--clients 1,8,32] [--seconds 20] [--users 4]`` in the
repository root.

It starts the embedded default (``hub_config.py``, the same hub ``make run`` starts) in a scratch
state directory, with two simulated GPUs: index 1 in the training pool. Two long jobs take both
GPUs first (one on the training GPU, one borrowing the idle dev GPU), so every job the clients
submit afterwards stays queued and the scheduler's pass (every 2 s) works on a queue that grows
during the run, as on a busy day. Each client is a thread with its own user token and
connection, alternating ``POST jobs`` and ``GET jobs?state=queued`` as fast as answers come.

The baseline, measured in the same run at each concurrency, is ``GET api/v1/health``: no token,
no database; the ratio of a call's p50 to it says what the call costs beyond HTTP and the event
loop. Clients reach the service the way a notebook does (``$GPUSLICE_SERVICE_URL``: the service's
own port); ``--via-proxy`` sends them through the hub's proxy, as a browser goes.

After the single-submit levels comes a batch level: ``--batch-clients`` threads each sending
``POST jobs/batch`` with ``--batch-size`` jobs as fast as answers come (jobs/s accepted).

``--kueue`` runs instead a Kueue-style run, after Kueue's own performance harness (15,000
workloads from 5 cohorts of 6 cluster queues): ``--jobs`` jobs from 30 users in 5 groups, each
group with a GPU guarantee and the right to borrow, submitted through ``POST jobs/batch`` by
``--batch-clients`` concurrent clients as fast as the service takes them, on ``--gpus`` simulated
GPUs. It reports the wall time to accept them all and to place the first 1,000 (until 1,000 jobs
have left ``queued``), with the health check measured during the same run. The jobs exit at once:
their interpreter is ``/bin/true`` (``JobService.python``), so each start costs the service's grant
and one supervisor process, not a Python start-up as well (``--real-python`` for that).

``--ledger postgres`` puts the service's ledger on a throwaway PostgreSQL server started from the
distribution's binaries (``tests/harness/postgres.py``); the default is SQLite, as shipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

# The tests' launcher of hub_config.py, importable as tests.harness from the repository root
# (python -m; tests/harness/__init__.py says why).
from tests.harness import HubProcess
from tests.harness.postgres import postgres_server

SERVICE_PREFIX = "services/gpuslice/"
QUEUED_SCRIPT = "print('never runs: the benchmark cancels it')\n"
HOLDING_SCRIPT = "import time\ntime.sleep(3600)\n"


@dataclass
class Timings:
    """Latencies (seconds) of one kind of call, and the calls that failed."""

    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, other: Timings) -> None:
        self.seconds.extend(other.seconds)
        self.failures.extend(other.failures)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def user_token(hub: HubProcess, user: str) -> str:
    """A new API token of ``user``, made the way a user makes one: logged in, on their token page."""
    session = hub.login(user)
    response = session.post(
        f"{hub.url}/hub/api/users/{user}/tokens", json={"note": "load benchmark"}, timeout=30
    )
    response.raise_for_status()
    return response.json()["token"]


def timed(session: requests.Session, method: str, url: str, timings: Timings, **kwargs) -> None:
    started = time.perf_counter()
    try:
        response = session.request(method, url, timeout=60, **kwargs)
    except requests.RequestException as error:
        timings.failures.append(str(error))
        return
    elapsed = time.perf_counter() - started
    if response.status_code >= 400:
        timings.failures.append(f"{response.status_code} {response.text[:200]}")
    else:
        timings.seconds.append(elapsed)


def client_loop(api: str, token: str, stop_at: float, submits: Timings, lists: Timings) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    body = {"name": "load", "script": QUEUED_SCRIPT, "gpus": 1, "time_limit": "1h"}
    while time.perf_counter() < stop_at:
        timed(session, "POST", api + "jobs", submits, json=body)
        timed(session, "GET", api + "jobs", lists, params={"state": "queued"})


def health_loop(api: str, stop_at: float, timings: Timings) -> None:
    session = requests.Session()
    while time.perf_counter() < stop_at:
        timed(session, "GET", api + "health", timings)


def run_level(api: str, tokens: list[str], clients: int, seconds: float) -> dict:
    """``clients`` threads for ``seconds``, then the same number of health-check threads."""
    submits, lists, health = Timings(), Timings(), Timings()
    per_thread = [(Timings(), Timings()) for _ in range(clients)]
    stop_at = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=client_loop, args=(api, tokens[i % len(tokens)], stop_at, *per_thread[i]))
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for thread_submits, thread_lists in per_thread:
        submits.add(thread_submits)
        lists.add(thread_lists)
    # The baseline gets the same concurrency and a quarter of the time: it is cheap and steady.
    health_per_thread = [Timings() for _ in range(clients)]
    stop_at = time.perf_counter() + max(3.0, seconds / 4)
    threads = [threading.Thread(target=health_loop, args=(api, stop_at, t)) for t in health_per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for thread_health in health_per_thread:
        health.add(thread_health)
    return {
        "clients": clients,
        "seconds": wall,
        "submits": len(submits.seconds),
        "submits_per_s": len(submits.seconds) / wall,
        "submit_p50_ms": 1000 * submits.quantile(0.5),
        "submit_p99_ms": 1000 * submits.quantile(0.99),
        "list_p50_ms": 1000 * lists.quantile(0.5),
        "list_p99_ms": 1000 * lists.quantile(0.99),
        "health_p50_ms": 1000 * health.quantile(0.5),
        "health_p99_ms": 1000 * health.quantile(0.99),
        "failures": submits.failures[:5] + lists.failures[:5] + health.failures[:5],
        "failure_count": len(submits.failures) + len(lists.failures) + len(health.failures),
    }


def queue_length(api: str, token: str) -> int:
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    answer = session.get(api + "jobs", params={"state": "queued", "limit": 10000}, timeout=60)
    return len(answer.json()["jobs"])


def hold_both_gpus(api: str, token: str) -> list[str]:
    """Two long jobs on the two GPUs, so that every later job queues; their ids, to cancel."""
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    ids = []
    for name in ("holds the training GPU", "borrows the dev GPU"):
        body = {"name": name, "script": HOLDING_SCRIPT, "gpus": 1, "time_limit": "2h"}
        response = session.post(api + "jobs", json=body, timeout=60)
        response.raise_for_status()
        ids.append(response.json()["job"]["id"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [session.get(api + f"jobs/{job_id}", timeout=60).json()["job"]["state"] for job_id in ids]
        if states == ["running", "running"]:
            return ids
        time.sleep(0.5)
    raise RuntimeError(f"the two holding jobs did not start: {states}")


def cancel_all(api: str, tokens: list[str]) -> None:
    """Cancel the jobs that run, so no job process outlives the benchmark's hub; the queued ones
    (tens of thousands after the batch level) never start once the hub has stopped."""
    for token in tokens:
        session = requests.Session()
        session.headers["Authorization"] = f"token {token}"
        running = session.get(api + "jobs", params={"state": "running"}, timeout=120).json()["jobs"]
        for job in running:
            session.post(api + f"jobs/{job['id']}/cancel", timeout=120)


def print_table(rows: list[dict], via: str) -> None:
    print(f"\nJobs API under load ({via}); latencies in ms, 'x health' = p50 / health-check p50\n")
    print(
        "| clients | submits/s | submit p50 | submit p99 | list p50 | list p99 | health p50 "
        "| submit x health | list x health | queue after | errors |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['clients']} | {row['submits_per_s']:.1f} | {row['submit_p50_ms']:.1f} "
            f"| {row['submit_p99_ms']:.1f} | {row['list_p50_ms']:.1f} | {row['list_p99_ms']:.1f} "
            f"| {row['health_p50_ms']:.1f} | {row['submit_p50_ms'] / row['health_p50_ms']:.1f} "
            f"| {row['list_p50_ms'] / row['health_p50_ms']:.1f} | {row['queue_after']} "
            f"| {row['failure_count']} |"
        )


UNLIMITED_QUEUE = """\
c.JobService.max_queued_jobs_per_user = 10**9
c.JobService.max_payload_bytes_per_user = 2**62
"""

KUEUE_FIGURE_S = 351.0
"""Kueue's published figure: 15,000 workloads (5 cohorts x 6 cluster queues) admitted in 351 s
wall time against a real API server (its scalability harness)."""
KUEUE_GROUPS = 5
KUEUE_USERS_PER_GROUP = 6
PLACED = 1000
"""The run reports the time until this many jobs have left the queue."""


# ------------------------------------------------------------------------------ batch level


def batch_loop(api: str, token: str, stop_at: float, size: int, timings: Timings, jobs: list[int]) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    body = {
        "jobs": [
            {"name": f"load {index}", "script": QUEUED_SCRIPT, "gpus": 1, "time_limit": "1h"}
            for index in range(size)
        ]
    }
    while time.perf_counter() < stop_at:
        before = len(timings.seconds)
        timed(session, "POST", api + "jobs/batch", timings, json=body)
        if len(timings.seconds) > before:
            jobs.append(size)


def run_batch_level(api: str, tokens: list[str], clients: int, seconds: float, size: int) -> dict:
    """``clients`` threads sending batches of ``size`` jobs for ``seconds``, then the health check
    at the same concurrency."""
    per_thread = [(Timings(), []) for _ in range(clients)]
    stop_at = time.perf_counter() + seconds
    threads = [
        threading.Thread(
            target=batch_loop, args=(api, tokens[i % len(tokens)], stop_at, size, *per_thread[i])
        )
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    batches = Timings()
    for timings, _ in per_thread:
        batches.add(timings)
    accepted = sum(sum(jobs) for _, jobs in per_thread)
    health = health_baseline(api, clients, max(3.0, seconds / 4))
    return {
        "clients": clients,
        "batch_size": size,
        "seconds": wall,
        "jobs": accepted,
        "jobs_per_s": accepted / wall,
        "batch_p50_ms": 1000 * batches.quantile(0.5),
        "batch_p99_ms": 1000 * batches.quantile(0.99),
        "health_p50_ms": 1000 * health.quantile(0.5),
        "failures": batches.failures[:5] + health.failures[:5],
        "failure_count": len(batches.failures) + len(health.failures),
    }


def health_baseline(api: str, clients: int, seconds: float) -> Timings:
    """``GET health`` from ``clients`` threads for ``seconds``: the baseline of a run."""
    per_thread = [Timings() for _ in range(clients)]
    stop_at = time.perf_counter() + seconds
    threads = [threading.Thread(target=health_loop, args=(api, stop_at, t)) for t in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    health = Timings()
    for timings in per_thread:
        health.add(timings)
    return health


def print_batch_table(rows: list[dict]) -> None:
    print("\nPOST jobs/batch under load; latencies in ms, 'x health' = batch p50 / health-check p50\n")
    print(
        "| clients | jobs per batch | jobs/s | batch p50 | batch p99 | health p50 | batch x health | errors |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['clients']} | {row['batch_size']} | {row['jobs_per_s']:.0f} | {row['batch_p50_ms']:.1f} "
            f"| {row['batch_p99_ms']:.1f} | {row['health_p50_ms']:.1f} "
            f"| {row['batch_p50_ms'] / row['health_p50_ms']:.1f} | {row['failure_count']} |"
        )


# ------------------------------------------------------------------------------ Kueue-style run


def kueue_groups() -> dict[str, list[str]]:
    """5 groups of 6 users, as Kueue's harness has 5 cohorts of 6 cluster queues."""
    return {
        f"cohort{group}": [f"cq{group}u{user}" for user in range(KUEUE_USERS_PER_GROUP)]
        for group in range(KUEUE_GROUPS)
    }


def kueue_quotas(gpus: int) -> str:
    """Each group guaranteed a fifth of the GPUs and allowed to borrow all of them; users unbounded
    (the groups are the queues here), and no weekly budget."""
    share = max(1, gpus // KUEUE_GROUPS)
    lines = ["quotas:", "  default_user:", "    interactive: {servers: 2, milli_gpu: 1000}", "  groups:"]
    for group in kueue_groups():
        lines += [f"    {group}:", f"      batch: {{guaranteed_gpus: {share}, borrow_gpus: {gpus}}}"]
    return "\n".join(lines) + "\n"


def submit_batches(api: str, work: list[tuple[str, dict]], answers: Timings, done: list[float]) -> None:
    """Send the batches of ``work`` (token, body), taken from the shared list, until it is empty."""
    sessions: dict[str, requests.Session] = {}
    while True:
        try:
            token, body = work.pop()
        except IndexError:
            return
        session = sessions.get(token)
        if session is None:
            session = sessions[token] = requests.Session()
            session.headers["Authorization"] = f"token {token}"
        timed(session, "POST", api + "jobs/batch", answers, json=body)
        done.append(time.perf_counter())


def placed_count(session: requests.Session, api: str) -> int:
    """How many jobs have left the queue (running or ended), as an admin's listing counts them."""
    params = {"all": "1", "state": ["running", "succeeded", "failed", "cancelled"], "limit": PLACED}
    answer = session.get(api + "jobs", params=params, timeout=120)
    answer.raise_for_status()
    return len(answer.json()["jobs"])


def run_kueue(hub: HubProcess, api: str, jobs: int, clients: int, size: int, timeout_s: float) -> dict:
    """Submit ``jobs`` jobs from the 30 users through ``clients`` batch clients; the times to accept
    them all and to place the first 1,000, and the health check meanwhile."""
    users = [user for members in kueue_groups().values() for user in members]
    tokens = {user: user_token(hub, user) for user in users}
    idle_health = health_baseline(api, 1, 3.0)
    body = {"name": "kueue", "script": "pass\n", "gpus": 1, "time_limit": "10m"}
    work = []
    for index in range(0, jobs, size):
        user = users[(index // size) % len(users)]
        work.append((tokens[user], {"jobs": [body] * min(size, jobs - index)}))
    work.reverse()  # popped from the end: the batches go in the order made
    answers, done, health = Timings(), [], Timings()
    admin = requests.Session()
    admin.headers["Authorization"] = f"token {hub.service_token}"
    threads = [
        threading.Thread(target=submit_batches, args=(api, work, answers, done)) for _ in range(clients)
    ]
    stop_probing = threading.Event()

    def probe() -> None:
        session = requests.Session()
        while not stop_probing.is_set():
            timed(session, "GET", api + "health", health)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    started = time.perf_counter()
    for thread in [*threads, prober]:
        thread.start()
    placed_at = None
    accepted_at = None
    while time.perf_counter() - started < timeout_s:
        if accepted_at is None and not any(thread.is_alive() for thread in threads):
            accepted_at = max(done, default=started) - started
        if placed_at is None and placed_count(admin, api) >= PLACED:
            placed_at = time.perf_counter() - started
        if accepted_at is not None and placed_at is not None:
            break
        time.sleep(0.5)
    stop_probing.set()
    for thread in threads:
        thread.join()
    prober.join()
    accepted = len(answers.seconds) * size
    return {
        "jobs": jobs,
        "batch_size": size,
        "clients": clients,
        "accepted_jobs": min(jobs, accepted),
        "accept_all_s": accepted_at,
        "accept_jobs_per_s": jobs / accepted_at if accepted_at else None,
        "place_first_s": placed_at,
        "batch_p50_ms": 1000 * answers.quantile(0.5),
        "batch_p99_ms": 1000 * answers.quantile(0.99),
        "health_idle_p50_ms": 1000 * idle_health.quantile(0.5),
        "health_p50_ms": 1000 * health.quantile(0.5),
        "health_p99_ms": 1000 * health.quantile(0.99),
        "failures": answers.failures[:5] + health.failures[:5],
        "failure_count": len(answers.failures) + len(health.failures),
    }


def print_kueue_table(rows: list[dict]) -> None:
    print(
        f"\nKueue-style run: jobs from {KUEUE_GROUPS * KUEUE_USERS_PER_GROUP} users in {KUEUE_GROUPS} groups,"
    )
    print(f"POST jobs/batch; times in s from the first request; Kueue: {KUEUE_FIGURE_S:.0f} s for 15,000\n")
    print(
        "| ledger | jobs | clients x batch | accept all s | jobs/s | place first 1,000 s | batch p50/p99 ms "
        "| health p50 idle / during ms | Kueue s / ours (accept) | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        accept = row["accept_all_s"]
        place = row["place_first_s"]
        print(
            f"| {row['ledger']} | {row['jobs']} | {row['clients']} x {row['batch_size']} "
            f"| {accept:.1f} | {row['accept_jobs_per_s']:.0f} "
            f"| {place if place is None else f'{place:.1f}'} "
            f"| {row['batch_p50_ms']:.0f} / {row['batch_p99_ms']:.0f} "
            f"| {row['health_idle_p50_ms']:.1f} / {row['health_p50_ms']:.1f} "
            f"| {KUEUE_FIGURE_S / accept:.1f} | {row['failure_count']} |"
            if accept
            else f"| {row['ledger']} | {row['jobs']} | not accepted | | | | | | | {row['failure_count']} |"
        )


@contextlib.contextmanager
def ledger_env(ledger: str) -> Iterator[dict[str, str]]:
    """The hub's environment for the ledger chosen: nothing for SQLite (the shipped default), a
    throwaway PostgreSQL server's URL for postgres."""
    if ledger == "sqlite":
        yield {}
        return
    with postgres_server(database="gpuslice_load") as server:
        yield {"GPUSLICE_LEDGER_URL": server.url()}


def kueue_main(options: argparse.Namespace) -> int:
    rows = []
    for ledger in options.ledger.split(","):
        with tempfile.TemporaryDirectory(prefix="gpuslice-kueue-") as state, ledger_env(ledger) as env:
            profiles = Path(state) / "profiles"
            profiles.mkdir()
            shutil.copy(Path(__file__).resolve().parents[1] / "profiles" / "default.yaml", profiles)
            (profiles / "quotas.yaml").write_text(kueue_quotas(options.gpus))
            service_config = Path(state) / "service_config.py"
            python = "" if options.real_python else 'c.JobService.python = "/bin/true"\n'
            service_config.write_text(UNLIMITED_QUEUE + python)
            groups = ";".join(f"{group}={','.join(users)}" for group, users in kueue_groups().items())
            hub = HubProcess(
                Path(state),
                {
                    "GPUSLICE_INVENTORY": "simulated",
                    "GPUSLICE_SIMULATED_GPUS": str(options.gpus),
                    "GPUSLICE_TRAIN_GPUS": ",".join(str(index) for index in range(options.gpus)),
                    "GPUSLICE_PROFILES_DIR": str(profiles),
                    "GPUSLICE_GROUPS": groups,
                    "GPUSLICE_SERVICE_CONFIG": str(service_config),
                    **env,
                },
            )
            hub.start(timeout=180)
            try:
                api = hub.service_url + "/" + SERVICE_PREFIX + "api/v1/"
                row = run_kueue(
                    hub, api, options.jobs, options.batch_clients, options.batch_size, options.timeout
                )
                row["ledger"] = ledger
                rows.append(row)
                print(
                    f"{ledger}: accepted in {row['accept_all_s']} s, placed in {row['place_first_s']} s",
                    file=sys.stderr,
                )
            finally:
                hub.stop()
    print_kueue_table(rows)
    for row in rows:
        for failure in row["failures"]:
            print(f"  error ({row['ledger']}): {failure}")
    if options.json:
        options.json.write_text(json.dumps({"kueue": rows}, indent=2))
    return 0 if all(row["failure_count"] == 0 and row["accept_all_s"] for row in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load per level")
    parser.add_argument("--users", type=int, default=4, help="distinct hub users the clients act as")
    parser.add_argument("--via-proxy", action="store_true", help="go through the hub's proxy")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--batch-clients", type=int, default=8, help="concurrent POST jobs/batch clients")
    parser.add_argument(
        "--batch-size", type=int, default=100, help="jobs per POST jobs/batch (0: no batch level)"
    )
    parser.add_argument("--kueue", action="store_true", help="the Kueue-style run instead of the levels")
    parser.add_argument("--jobs", type=int, default=15000, help="jobs of the Kueue-style run")
    parser.add_argument("--gpus", type=int, default=1000, help="simulated GPUs of the Kueue-style run")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the Kueue-style run may take")
    parser.add_argument("--real-python", action="store_true", help="Kueue-style jobs run a real Python")
    parser.add_argument(
        "--ledger", default="sqlite", help="sqlite, postgres, or both for --kueue (sqlite,postgres)"
    )
    options = parser.parse_args(argv)
    if options.kueue:
        return kueue_main(options)
    levels = [int(level) for level in options.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="gpuslice-load-") as state, ledger_env(options.ledger) as ledger:
        # The queue grows by thousands of jobs per user here: lift the per-user limits on queued
        # jobs and stored payloads, which would otherwise refuse the load being measured.
        service_config = Path(state) / "service_config.py"
        service_config.write_text(UNLIMITED_QUEUE)
        hub = HubProcess(
            Path(state),
            {
                "GPUSLICE_INVENTORY": "simulated",
                "GPUSLICE_SIMULATED_GPUS": "2",
                "GPUSLICE_TRAIN_GPUS": "1",
                "GPUSLICE_SERVICE_CONFIG": str(service_config),
                **ledger,
            },
        )
        hub.start(timeout=120)
        try:
            service = f"http://127.0.0.1:{hub.env['GPUSLICE_SERVICE_PORT']}/"
            api = (f"{hub.url}/" if options.via_proxy else service) + SERVICE_PREFIX + "api/v1/"
            tokens = [user_token(hub, f"load{index}") for index in range(options.users)]
            hold_both_gpus(api, tokens[0])
            rows = []
            try:
                for clients in levels:
                    row = run_level(api, tokens, clients, options.seconds)
                    row["queue_after"] = sum(queue_length(api, token) for token in tokens)
                    rows.append(row)
                    print(f"{clients} clients: {row['submits_per_s']:.1f} submits/s", file=sys.stderr)
                batch_rows = []
                if options.batch_size:
                    row = run_batch_level(
                        api, tokens, options.batch_clients, options.seconds, options.batch_size
                    )
                    batch_rows.append(row)
                    print(
                        f"{options.batch_clients} batch clients: {row['jobs_per_s']:.0f} jobs/s",
                        file=sys.stderr,
                    )
            finally:
                cancel_all(api, tokens)
            via = "through the hub's proxy" if options.via_proxy else "service port, as notebooks"
            print(f"\nledger: {options.ledger}")
            print_table(rows, via)
            if batch_rows:
                print_batch_table(batch_rows)
            for row in rows + batch_rows:
                for failure in row["failures"]:
                    print(f"  error at {row['clients']} clients: {failure}")
            if options.json:
                document = {
                    "via_proxy": options.via_proxy,
                    "ledger": options.ledger,
                    "rows": rows,
                    "batch": batch_rows,
                }
                options.json.write_text(json.dumps(document, indent=2))
        finally:
            hub.stop()
    return 0 if all(row["failure_count"] == 0 for row in rows + batch_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
