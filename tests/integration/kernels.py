"""Driving a real kernel of a spawned server, as a notebook frontend does (``jupyter_client``)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from harness import HubProcess
from jupyter_client import BlockingKernelClient

JOB_ID = re.compile(r"submitted (job-[0-9a-z]+)")


@dataclass
class CellRun:
    """What one execution sent back on iopub, as a notebook would show it."""

    def __str__(self) -> str:
        tracebacks = ["\n".join(error["traceback"]) for error in self.errors]
        return "\n".join([self.text, *tracebacks])

    reply: dict
    stdout: str = ""
    stderr: str = ""
    displays: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join([self.stdout, self.stderr, *self.displays])

    def job_id(self) -> str:
        found = JOB_ID.search(self.stdout)
        assert found, f"no job was submitted:\n{self.text}"
        return found.group(1)

    def assert_quiet_refusal(self, *phrases: str) -> None:
        """The sentence is in the cell's stderr, and no traceback came from our code."""
        for phrase in phrases:
            assert phrase in self.stderr, f"{phrase!r} not in:\n{self.text}"
        assert not self.errors, self.errors
        assert "Traceback" not in self.text and "spawner/" not in self.text, self.text
        assert "submitted job-" not in self.stdout


def run(kernel: BlockingKernelClient, code: str, timeout: float = 180) -> CellRun:
    result = CellRun(reply={})

    def collect(message: dict) -> None:
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            if content["name"] == "stdout":
                result.stdout += content["text"]
            else:
                result.stderr += content["text"]
        elif kind in ("display_data", "execute_result", "update_display_data"):
            result.displays.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            result.errors.append(content)

    result.reply = kernel.execute_interactive(code, output_hook=collect, timeout=timeout)
    return result


def evaluate(kernel: BlockingKernelClient, expression: str) -> str:
    """``print(expression)`` in the kernel, asserting it ran cleanly; the printed text."""
    done = run(kernel, f"print(({expression}))")
    assert not done.errors and done.reply["content"]["status"] == "ok", done.text
    return done.stdout.strip()


def spawn_server(hub: HubProcess, user: str, profile: str) -> requests.Session:
    """Log ``user`` in and start their server on ``profile``, as the spawn page's form does."""
    session = hub.login(user)
    started = session.post(f"{hub.url}/hub/api/users/{user}/server", json={"profile": profile}, timeout=30)
    assert started.status_code in (201, 202), started.text
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        model = session.get(f"{hub.url}/hub/api/users/{user}", timeout=10).json()
        if model["servers"].get("", {}).get("ready"):
            return session
        time.sleep(0.5)
    pytest.fail(f"{user}'s server never became ready:\n{hub.log()}")


def start_kernel(hub: HubProcess, session: requests.Session, user: str, home: Path) -> BlockingKernelClient:
    """A kernel started through the server's REST API, with the user's token, then connected to."""
    token = session.post(f"{hub.url}/hub/api/users/{user}/tokens", json={"note": "e2e"}, timeout=10)
    assert token.status_code == 201, token.text
    headers = {"Authorization": f"token {token.json()['token']}"}
    created = requests.post(f"{hub.url}/user/{user}/api/kernels", json={}, headers=headers, timeout=60)
    assert created.status_code == 201, created.text
    kernel_id = created.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list(home.rglob(f"kernel-{kernel_id}.json"))
        if found:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"no connection file for kernel {kernel_id} under {home}")
    client = BlockingKernelClient(connection_file=str(found[0]))
    client.load_connection_file()
    client.start_channels()
    client.wait_for_ready(timeout=90)
    return client
