"""Load on the jobs API: N concurrent clients submitting and listing against a running service.

Run: ``.venv/bin/python benchmarks/load.py [--clients 1,8,32] [--seconds 20] [--users 4]``.

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
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from integration.hubprocess import HubProcess  # noqa: E402 - the tests' launcher of hub_config.py

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
    """Cancel what the run left, so no job process outlives the benchmark's hub."""
    for token in tokens:
        session = requests.Session()
        session.headers["Authorization"] = f"token {token}"
        for job in session.get(api + "jobs", params={"state": ["queued", "running"]}, timeout=120).json()[
            "jobs"
        ]:
            session.post(api + f"jobs/{job['id']}/cancel", timeout=60)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load per level")
    parser.add_argument("--users", type=int, default=4, help="distinct hub users the clients act as")
    parser.add_argument("--via-proxy", action="store_true", help="go through the hub's proxy")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    options = parser.parse_args(argv)
    levels = [int(level) for level in options.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="gpuslice-load-") as state:
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
            finally:
                cancel_all(api, tokens)
            via = "through the hub's proxy" if options.via_proxy else "service port, as notebooks"
            print_table(rows, via)
            for row in rows:
                for failure in row["failures"]:
                    print(f"  error at {row['clients']} clients: {failure}")
            if options.json:
                options.json.write_text(json.dumps({"via_proxy": options.via_proxy, "rows": rows}, indent=2))
        finally:
            hub.stop()
    return 0 if all(row["failure_count"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
