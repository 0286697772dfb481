"""What the service refuses, and how: issue 10's findings 8 (numbers that are not numbers), 9 (other
500s and silent failures, bodies too large or malformed), 10 (the document and the code
disagreeing) and its low points on jobs (foreign ids, control characters in logs and terminals).

Every refusal is a JSON ``{"status", "message"}`` whose message names the field, and every answer is
strict JSON (no bare ``NaN`` or ``Infinity``). The live tests use the package's hub; the few jobs
they queue run no GPU and are cancelled at once.
"""

from __future__ import annotations

import io
import json
import logging
import math
import socket
import time
import uuid
from contextlib import redirect_stdout
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
from traitlets import TraitError

from spawner import cli
from spawner.service.app import GPUSliceService
from spawner.service.job_request import DEFAULT_MAX_TIME_LIMIT_S, JobBodyError, parse_job_body
from spawner.service.log_filter import EscapeControls
from spawner.service.serialize import to_json

SCRIPT_JOB = '{"name": "checked", "script": "print(1)\\n", "gpus": 0, %s}'
"""A valid job body with one more field written as raw JSON text (``%s``), e.g. ``"time_limit": NaN``."""


def strict_json(text: str):
    """JSON as the standard defines it: ``NaN`` and ``Infinity`` make it fail."""

    def refuse(constant: str):
        raise AssertionError(f"the answer holds {constant}, which is not JSON: {text[:300]}")

    return json.loads(text, parse_constant=refuse)


def assert_json_error(response, status: int) -> str:
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    error = strict_json(response.text)
    assert error["status"] == status and isinstance(error["message"], str) and error["message"]
    return error["message"]


def direct_api(hub) -> str:
    """The service's own API URL, not through the hub's proxy.

    The embedded hub's proxy (the Python configurable-http-proxy) reads every body itself before
    it forwards it: a body over its own 100 MB, or multipart it cannot parse, is answered by the
    proxy (a bare or HTML 400) and never reaches the service. What the service answers is tested
    here; the proxy is a separate program.
    """
    return hub.service_url + "/services/gpuslice/api/v1/"


def post_raw(hub, user: str, text: str | bytes, content_type: str = "application/json", api: str = ""):
    session = hub.as_user(user)
    data = text.encode() if isinstance(text, str) else text
    headers = {"Content-Type": content_type}
    return session.post((api or hub.api) + "jobs", data=data, headers=headers, timeout=30)


def cancel_soon(hub, user: str, job: dict) -> None:
    response = hub.as_user(user).post(hub.api + f"jobs/{job['id']}/cancel", timeout=30)
    assert response.status_code in (200, 409), response.text


# ------------------------------------------------------------------- 8: numbers that are numbers


@pytest.mark.slow
@pytest.mark.parametrize(
    "time_limit",
    ['"inf"', '"Infinity"', '"-inf"', '"nan"', '"NaN"', "Infinity", "NaN", "-Infinity", "1e400", '"1e400"'],
)
def test_a_time_limit_that_is_not_a_finite_number_is_refused_naming_the_field(hub, time_limit):
    response = post_raw(hub, "bob", SCRIPT_JOB % f'"time_limit": {time_limit}')
    message = assert_json_error(response, 400)
    assert message.startswith("time_limit"), message


@pytest.mark.slow
@pytest.mark.parametrize("time_limit", ['"1e308"', "1e308", '"31d"', "2592001", '"720h1s"'])
def test_a_time_limit_past_the_longest_is_refused_saying_the_limit(hub, time_limit):
    response = post_raw(hub, "bob", SCRIPT_JOB % f'"time_limit": {time_limit}')
    message = assert_json_error(response, 400)
    assert message.startswith("time_limit: ") and "the longest time limit here, 30d" in message, message


def test_time_limits_up_to_the_longest_pass_and_beyond_it_are_refused():
    def time_limit_s(value, **limits):
        body = {"name": "x", "script": "print(1)", "time_limit": value}
        return parse_job_body(body, max_payload_bytes=1000, default_time_limit_s=60, **limits).time_limit_s

    assert time_limit_s("30d") == time_limit_s(DEFAULT_MAX_TIME_LIMIT_S) == 30 * 86400
    assert time_limit_s("1h30m") == 5400
    assert time_limit_s("40d", max_time_limit_s=50 * 86400) == 40 * 86400
    with pytest.raises(JobBodyError, match="longest time limit here, 2h"):
        time_limit_s("3h", max_time_limit_s=7200)
    for value in ("inf", float("inf"), float("nan"), 10**400, "9" * 400 + "d"):
        with pytest.raises(JobBodyError, match="^time_limit: "):
            time_limit_s(value)


def test_the_longest_time_limit_is_configured_as_a_finite_duration():
    service = GPUSliceService()
    assert (service.max_time_limit, service.max_time_limit_s()) == ("30d", DEFAULT_MAX_TIME_LIMIT_S)
    service.max_time_limit = "2h"
    assert service.max_time_limit_s() == 7200
    for wrong in ("inf", "0", "soon"):
        with pytest.raises(TraitError, match="^GPUSliceService.max_time_limit: "):
            service.max_time_limit = wrong


def test_the_body_limit_leaves_room_for_the_largest_cell_in_base64():
    service = GPUSliceService()
    jobs = SimpleNamespace(max_cell_payload_bytes=64 * 2**20, max_payload_bytes=2**20)
    assert service.body_limit(jobs) == math.ceil(64 * 2**20 * 4 / 3) + 16 * 2**20  # 101.3 MiB
    jobs.max_cell_payload_bytes = 300 * 2**20
    assert service.body_limit(jobs) == 400 * 2**20 + 16 * 2**20
    service.max_body_bytes = 2**20
    assert service.body_limit(jobs) == 2**20


def test_answers_are_strict_json_even_for_a_non_finite_number_stored_before_the_checks():
    def strict(text: bytes) -> object:
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))

    assert strict(to_json({"time_limit_s": float("inf"), "nested": [float("nan"), 1.5]})) == {
        "time_limit_s": None,
        "nested": [None, 1.5],
    }
    assert strict(to_json({"fine": 1.0})) == {"fine": 1.0}
    # Integers past 64 bits (a job's free-form provenance may hold one) are written whole.
    huge = 29565332425936468253361443667600998400
    assert strict(to_json({"provenance": {"n": huge, "x": float("inf")}})) == {
        "provenance": {"n": huge, "x": None}
    }


@pytest.mark.slow
@pytest.mark.parametrize("field", ['"provenance": {"x": NaN}', '"provenance": {"x": [1, 1e999]}'])
def test_no_number_anywhere_in_a_body_may_be_nan_or_infinite(hub, field):
    message = assert_json_error(post_raw(hub, "bob", SCRIPT_JOB % field), 400)
    assert message.startswith("provenance/x"), message
    assert "not a finite number" in message


# ------------------------------------------------------------- 9: other 500s and silent failures


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["²", "٣", "1²", "1e3", " 5", "99999999999999999999"])
def test_a_list_limit_in_other_digits_is_a_400_not_a_500(hub, limit):
    response = hub.as_user("bob").get(hub.api + "jobs", params={"limit": limit}, timeout=30)
    message = assert_json_error(response, 400)
    assert message.startswith("limit: give a whole number of jobs from 1 to 10000"), message


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ('"name": "bad \\ud800 name", "script": "print(1)"', "name"),
        ('"name": "fine", "script": "print(\'\\udfff\')"', "script"),
        ('"name": "fine", "script": "print(1)", "workdir": "/tmp/\\ud800"', "workdir"),
        ('"name": "fine", "script": "print(1)", "environment": {"A\\ud800": "1"}', "environment"),
        ('"name": "fine", "script": "print(1)", "gpu_models": ["A100", "\\ud800"]', "gpu_models/1"),
    ],
)
def test_text_with_a_lone_surrogate_is_refused_naming_the_field(hub, fields, named):
    message = assert_json_error(post_raw(hub, "bob", "{" + fields + ', "gpus": 0}'), 400)
    assert message.startswith(f"{named}: "), message
    assert "lone UTF-16 surrogate" in message


@pytest.mark.slow
def test_utf8_bytes_of_a_surrogate_are_refused_too(hub):
    body = b'{"name": "bad \xed\xa0\x80", "script": "print(1)", "gpus": 0}'
    message = assert_json_error(post_raw(hub, "bob", body), 400)
    assert message.startswith("name: ") or "not JSON" in message, message


def nested(depth: int) -> str:
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("depth", "says"),
    [
        (40, "provenance: nested 40 levels deep; the limit is 32"),
        (100, "nested more than 64 levels deep"),
        (5000, "nested too deeply"),
    ],
)
def test_a_deeply_nested_provenance_is_refused_not_a_500(hub, depth, says):
    message = assert_json_error(post_raw(hub, "bob", SCRIPT_JOB % f'"provenance": {nested(depth)}'), 400)
    assert says in message, message
    if depth == 100:
        assert message.startswith("provenance/a/a/"), message


@pytest.mark.slow
@pytest.mark.parametrize(
    ("field", "says"),
    [
        ('"environment": {"A=B": "1"}', "environment: 'A=B' is not a variable name"),
        ('"environment": {"": "1"}', "environment: '' is not a variable name"),
        ('"environment": {"A\\u0000B": "1"}', "environment: 'A\\x00B' is not a variable name"),
        ('"environment": {"A": "x\\u0000y"}', "environment/A: the value holds a NUL character"),
        ('"workdir": "/tmp\\u0000/x"', "workdir: the path holds a NUL character"),
    ],
)
def test_an_environment_or_workdir_the_os_cannot_take_is_refused_at_submission(hub, field, says):
    message = assert_json_error(post_raw(hub, "bob", SCRIPT_JOB % field), 400)
    assert message.startswith(says), message


def service_address(hub) -> tuple[str, int]:
    url = urlparse(hub.service_url)
    return url.hostname, url.port


def raw_exchange(hub, head: str, body: bytes = b"", wait: float = 10) -> bytes:
    """Send ``head`` and the start of a body straight to the service; read until it closes."""
    with socket.create_connection(service_address(hub), timeout=wait) as connection:
        connection.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        answer = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = connection.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            answer += chunk
        return answer


def split_answer(answer: bytes) -> tuple[str, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode("latin-1").splitlines()[0], strict_json(body.decode())


@pytest.mark.slow
def test_a_body_over_the_limit_gets_a_json_413_before_it_is_read(hub):
    """110 MB announced and 20 bytes sent: the answer comes from the headers alone."""
    head = (
        "POST /services/gpuslice/api/v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: {hub.as_user('bob').headers['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {110 * 10**6}"
    )
    started = time.monotonic()
    status, error = split_answer(raw_exchange(hub, head, b'{"name": "big", "scr'))
    assert time.monotonic() - started < 5
    assert status.startswith("HTTP/1.1 413"), status
    assert error["status"] == 413
    assert "the body is 104.9 MiB; the service takes at most" in error["message"]
    assert "GPUSliceService.max_body_bytes" in error["message"]


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_gets_a_json_413_too(hub):
    megabyte = b"x" * 2**20
    chunks = (megabyte for _ in range(120))  # requests sends a generator chunked
    response = hub.as_user("bob").post(direct_api(hub) + "jobs", data=chunks, timeout=60)
    message = assert_json_error(response, 413)
    assert "passed" in message and "GPUSliceService.max_body_bytes" in message


@pytest.mark.slow
def test_a_content_length_that_is_not_a_number_gets_a_json_400(hub):
    head = "POST /services/gpuslice/api/v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12, 13"
    status, error = split_answer(raw_exchange(hub, head))
    assert status.startswith("HTTP/1.1 400"), status
    assert error["status"] == 400 and "Content-Length" in error["message"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--x\r\nnot a part", "multipart/form-data; boundary=x"),
        (b"name=a&b", "multipart/form-data"),
        (b"\xff\xfe{", "application/json"),
        (b'{"name": "x",', "application/json"),
    ],
)
def test_a_malformed_body_gets_a_json_400(hub, body, content_type):
    assert_json_error(post_raw(hub, "bob", body, content_type, api=direct_api(hub)), 400)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "api/v1/nothing-here"),
        ("post", "api/v2/jobs"),
        ("delete", "api/v1/jobs/x/y/z"),
        ("get", "no/such/page"),
    ],
)
def test_a_path_the_service_does_not_serve_gets_a_json_404(hub, method, path):
    response = getattr(hub.as_user("bob"), method)(f"{hub.url}/services/gpuslice/{path}", timeout=30)
    message = assert_json_error(response, 404)
    assert "no such path" in message and "openapi.json" in message


# ------------------------------------------------------------ 10: the document says what is taken


@pytest.mark.slow
@pytest.mark.parametrize(
    "query", ["all=AAA", "all=", "all=True", "state=", "state=queued&state=", "state=Queued"]
)
def test_a_listing_flag_or_state_the_document_does_not_allow_is_a_400(hub, query):
    response = hub.as_user("dana").get(hub.api + f"jobs?{query}", timeout=30)
    message = assert_json_error(response, 400)
    assert message.split(":")[0] in ("all", "state"), message


@pytest.mark.slow
@pytest.mark.parametrize(
    "query", ["all=1", "all=true", "all=yes", "all=0", "all=false", "all=no", "state=queued"]
)
def test_every_listing_flag_the_document_allows_is_taken(hub, query):
    response = hub.as_user("dana").get(hub.api + f"jobs?{query}", timeout=30)
    assert response.status_code == 200, response.text


@pytest.mark.slow
@pytest.mark.parametrize("query", ["follow=AAA", "follow=", "offset=-1", "offset=²", "offset=1.5"])
def test_a_log_flag_or_offset_the_document_does_not_allow_is_a_400(hub, query):
    response = hub.as_user("bob").get(hub.api + f"jobs/job-000000000000/logs?{query}", timeout=30)
    message = assert_json_error(response, 400)
    assert message.split(":")[0] in ("follow", "offset"), message


@pytest.mark.slow
@pytest.mark.parametrize("field", ["lease_id", "user", "holder"])
def test_an_empty_lease_field_is_refused_as_the_document_says(hub, service, field):
    body = {"lease_id": f"t-{uuid.uuid4().hex}", "user": "alice", "holder": "alice/", "profile": "a100-1-8"}
    body[field] = ""
    message = assert_json_error(service.post(hub.api + "leases", json=body, timeout=30), 400)
    assert message.startswith(f"{field}: ''"), message


@pytest.mark.slow
def test_an_empty_cell_python_is_refused_as_the_document_says(hub):
    body = {"name": "cell", "cell": {"payload": "AA==", "python": ""}}
    message = assert_json_error(hub.as_user("bob").post(hub.api + "jobs", json=body, timeout=30), 400)
    assert message.startswith("cell/python: '' is not a Python version"), message


# --------------------------------------------------------------- low: foreign ids, control characters

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\nforged line"


@pytest.fixture
def escaped_job(hub):
    """A job of bob's whose name is full of terminal escape sequences, cancelled before it runs long."""
    body = {"name": f"evil {ESCAPES}", "script": "import time; time.sleep(60)\n", "gpus": 0}
    response = hub.as_user("bob").post(hub.api + "jobs", json=body, timeout=30)
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    yield job
    cancel_soon(hub, "bob", job)


@pytest.mark.slow
def test_another_users_job_answers_404_exactly_as_an_unknown_one(hub, escaped_job):
    alice = hub.as_user("alice")
    unknown = "job-000000000000"
    for method, suffix in [
        ("get", ""),
        ("get", "/logs"),
        ("get", "/result"),
        ("get", "/result/values"),
        ("post", "/cancel"),
        ("delete", ""),
    ]:
        foreign = getattr(alice, method)(hub.api + f"jobs/{escaped_job['id']}{suffix}", timeout=30)
        nobody = getattr(alice, method)(hub.api + f"jobs/{unknown}{suffix}", timeout=30)
        message = assert_json_error(foreign, 404)
        assert message == assert_json_error(nobody, 404).replace(unknown, escaped_job["id"]), (method, suffix)
        assert "bob" not in message
    assert hub.as_user("bob").get(hub.api + f"jobs/{escaped_job['id']}", timeout=30).status_code == 200


@pytest.mark.slow
def test_a_job_name_with_escape_sequences_reaches_the_service_log_escaped(hub, escaped_job):
    deadline = time.monotonic() + 10
    while escaped_job["id"] not in hub.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [line for line in hub.log().splitlines() if escaped_job["id"] in line]
    assert any("\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\r\\nforged line" in line for line in lines), lines
    assert not any("\x1b" in line or "\x07" in line or "\r" in line for line in lines), lines
    assert "forged line" not in [line.strip() for line in hub.log().splitlines()]


def test_the_service_log_escapes_what_it_interpolates_and_keeps_its_own_words():
    record = logging.LogRecord(
        "GPUSliceService", logging.INFO, __file__, 1, "job %s (%s) of %s queued: %d GPUs",
        ("job-1", f"evil {ESCAPES}", "bob", 2), None,
    )  # fmt: skip
    assert EscapeControls().filter(record)
    assert record.getMessage() == (
        "job job-1 (evil \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\r\\nforged line) of bob queued: 2 GPUs"
    )
    startup = logging.LogRecord(
        "GPUSliceService", logging.CRITICAL, __file__, 1, "cannot start:\n%s",
        (ValueError("a.yaml: one\nb.yaml: two\x1b[2J"),), None,
    )  # fmt: skip
    EscapeControls().filter(startup)
    assert startup.getMessage() == "cannot start:\na.yaml: one\nb.yaml: two\\x1b[2J"


class ListingClient:
    def jobs(self, state=None, all_users=False):
        return [
            {"id": "job-1", "state": "queued", "gpus": 1, "priority": "normal", "name": f"evil {ESCAPES}"}
        ]


def test_gpuslice_jobs_list_prints_other_users_job_names_escaped(monkeypatch):
    monkeypatch.setattr(cli, "_client", lambda args: ListingClient())
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert cli.main(["jobs", "list", "--all"]) == 0
    (line,) = printed.getvalue().splitlines()
    assert line.endswith("evil \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\r\\nforged line")
    assert "\x1b" not in printed.getvalue()
