"""A submission whose answer is lost is sent again under the same key, and queued once.

The service here is a fake of ``POST jobs`` with the service's idempotency rule (the same key
answers the job it made), in front of which the first answer to every key is lost: a 503, as the
hub's proxy answers while the service restarts, although the job was stored. The client, the
``gpuslice`` command and ``%%submit`` must each end up with the one job.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from IPython.testing.globalipapp import start_ipython

from spawner import cli
from spawner.client import GPUSliceClient, ServiceError
from spawner.magic import magics as magics_module

TOKEN = "test-token"


class FakeService:
    """Jobs by idempotency key; ``lose`` says which sends' answers are replaced by a 503."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.by_key: dict[str, str] = {}
        self.posts: list[tuple[str | None, dict]] = []
        self.lose = lambda number, key: number == 1  # the first send of each key
        self.refuse: int | None = None

    def post(self, key: str | None, body: dict) -> tuple[int, dict]:
        self.posts.append((key, body))
        if self.refuse:
            return self.refuse, {"status": self.refuse, "message": "refused on purpose"}
        job_id = self.by_key.get(key) if key else None
        status = 200
        if job_id is None:
            job_id = f"job-{uuid.uuid4().hex[:12]}"
            self.jobs[job_id] = {"id": job_id, "state": "queued", "name": body["name"], "gpus": 1}
            if key:
                self.by_key[key] = job_id
            status = 201
        sends = sum(1 for sent, _ in self.posts if sent == key)
        if self.lose(sends, key):
            return 503, {}  # stored, but the answer never reaches the client
        return status, {"job": self.jobs[job_id]}


@pytest.fixture
def service() -> Iterator[tuple[FakeService, str]]:
    fake = FakeService()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode() if body else b"<html>503: Service Unavailable</html>"
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if body else "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            assert self.headers["Authorization"] == f"token {TOKEN}"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.answer(*fake.post(self.headers.get("Idempotency-Key"), body))

        def do_GET(self) -> None:
            job_id = self.path.split("/jobs/")[1].split("/")[0].split("?")[0]
            if "/logs" in self.path:
                self.answer(200, {"data": "", "next_offset": 0, "done": True, "state": "succeeded"})
            else:
                self.answer(200, {"job": {**fake.jobs[job_id], "state": "succeeded"}, "events": []})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_port}/services/gpuslice/"
    server.shutdown()
    server.server_close()


def test_the_client_sends_a_lost_submission_again_under_its_key(service):
    fake, url = service
    notices = []
    client = GPUSliceClient(url, TOKEN, retry_delays_s=(0.01, 0.01))
    answer = client.submit("print(1)\n", name="once", on_retry=lambda error, _: notices.append(error.status))
    assert list(fake.jobs) == [answer["job"]["id"]]
    keys = [key for key, _ in fake.posts]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    assert fake.posts[0][1] == fake.posts[1][1], "the same body"
    assert notices == [503]


def test_every_submission_has_a_key_of_its_own(service):
    fake, url = service
    fake.lose = lambda number, key: False
    client = GPUSliceClient(url, TOKEN, retry_delays_s=())
    client.submit("print(1)\n", name="one")
    client.submit("print(1)\n", name="two")
    assert len({key for key, _ in fake.posts}) == 2 and len(fake.jobs) == 2


def test_the_client_gives_up_after_its_retries_and_never_resends_a_refusal(service):
    fake, url = service
    fake.lose = lambda number, key: True
    client = GPUSliceClient(url, TOKEN, retry_delays_s=(0.01, 0.01, 0.01))
    with pytest.raises(ServiceError) as lost:
        client.submit("print(1)\n", name="never answered")
    assert lost.value.status == 503 and len(fake.posts) == 4
    assert len({key for key, _ in fake.posts}) == 1 and len(fake.jobs) == 1

    fake.posts.clear()
    fake.refuse = 400
    with pytest.raises(ServiceError, match="refused on purpose"):
        client.submit("print(1)\n", name="refused")
    assert len(fake.posts) == 1


def test_an_unreachable_service_is_tried_again():
    client = GPUSliceClient("http://127.0.0.1:9/services/gpuslice/", TOKEN, retry_delays_s=(0.01,))
    seen = []
    with pytest.raises(ServiceError, match="cannot be reached") as lost:
        client.submit("print(1)\n", name="x", on_retry=lambda error, delay: seen.append(error))
    assert lost.value.retryable and len(seen) == 1


def test_gpuslice_jobs_submit_queues_once_through_a_lost_answer(service, tmp_path, monkeypatch, capsys):
    fake, url = service
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    script = tmp_path / "train.py"
    script.write_text("print('trained')\n")
    assert cli.main(["jobs", "--service-url", url, "submit", str(script)]) == 0
    out, err = capsys.readouterr()
    (job_id,) = fake.jobs
    assert out.startswith(job_id)
    assert "sending it again" in err and "same idempotency key" in err
    keys = [key for key, _ in fake.posts]
    assert len(keys) == 2 and keys[0] == keys[1]


def test_submit_magic_queues_once_through_a_lost_answer(service, tmp_path, monkeypatch, capsys):
    fake, url = service
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(magics_module, "LiveStatus", _NoLiveStatus)
    shell = start_ipython()
    shell.run_line_magic("load_ext", "spawner.magic")
    magics = shell.magics_manager.registry["SubmitMagics"]
    magics._client = GPUSliceClient(url, TOKEN, retry_delays_s=(0.01, 0.01))
    try:
        shell.run_cell("%%submit --gpus 1\nanswer = 6 * 7\n")
        out, err = capsys.readouterr()
        (job_id,) = fake.jobs
        assert f"submitted {job_id}" in out
        assert "sending the cell again" in err
        keys = [key for key, _ in fake.posts]
        assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
        assert "cell" in fake.posts[0][1]
    finally:
        magics._client = None
        shell.run_line_magic("unload_ext", "spawner.magic")


class _NoLiveStatus:
    """The status line, which would poll the fake service from a thread, left out."""

    def __init__(self, client, job) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
