"""The REST client of the gpuslice service, shared by the ``gpuslice`` command and the notebook magic.

Inside a server started by our spawners, ``JUPYTERHUB_API_TOKEN`` and ``GPUSLICE_SERVICE_URL`` are
in the environment, so ``GPUSliceClient()`` needs no arguments. Every refusal of the service
becomes a :class:`ServiceError` carrying the service's own sentence, so callers print what the
service said rather than a traceback.

A submission is sent with a fresh ``Idempotency-Key`` and sent again, under the same key, when its
answer is lost: the service could not be reached, the connection broke or timed out, or the proxy
answered 502, 503 or 504 (the service restarting). The service answers a key it has seen with the
job the first submission created, so a retry never queues a job twice.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import requests

from spawner.core.vocabulary import TERMINAL_STATES, Priority

IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_STATUSES = frozenset({502, 503, 504})
"""What the proxy answers while the service restarts: the request may have been stored, or not."""
SUBMIT_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Waits between the sends of one submission: about a minute in all, longer than the hub takes to
start a service that died again (it looks every 30 s)."""


class ServiceError(RuntimeError):
    """The service refused a call, or could not be reached; ``str()`` is the sentence to show.

    ``retryable``: the answer was lost rather than given (no connection, a timeout, or the proxy's
    502/503/504), so the same request may be sent again (a submission under the same key).
    """

    def __init__(self, message: str, status: int | None = None, body: Any = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.body = body
        self.retryable = retryable or status in RETRY_STATUSES


RetryNotice = Callable[[ServiceError, float], None]
"""Told of a lost answer before the submission is sent again: the error, and the wait in seconds."""

ANSWER_LOST = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
"""Failures of a request after which its answer is unknown (it may have reached the service)."""


def new_idempotency_key() -> str:
    """A fresh key for one submission (and all the retries of it)."""
    return str(uuid.uuid4())


class GPUSliceClient:
    """Calls the service's API v1 with a JupyterHub token."""

    def __init__(
        self,
        service_url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        retry_delays_s: Sequence[float] = SUBMIT_RETRY_DELAYS_S,
    ):
        service_url = service_url or os.environ.get("GPUSLICE_SERVICE_URL", "")
        token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not service_url:
            raise ServiceError(
                "GPUSLICE_SERVICE_URL is not set: run this inside a server started by the hub, "
                "or pass the service URL (e.g. http://127.0.0.1:8000/services/gpuslice/)"
            )
        if not token:
            raise ServiceError("JUPYTERHUB_API_TOKEN is not set: a JupyterHub API token is needed")
        self.api = service_url.rstrip("/") + "/api/v1/"
        self.timeout = timeout
        self.retry_delays_s = tuple(retry_delays_s)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    def request(self, method: str, path: str, *, timeout: float | None = None, **kwargs) -> requests.Response:
        """The service's answer to one call; ServiceError with its sentence for any refusal."""
        try:
            response = self.session.request(
                method, self.api + path, timeout=timeout or self.timeout, **kwargs
            )
        except requests.RequestException as error:
            raise ServiceError(
                f"the gpuslice service at {self.api} cannot be reached ({type(error).__name__}); "
                "it may be restarting: try again in a minute, or ask your admin",
                retryable=isinstance(error, ANSWER_LOST),
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            message = body.get("message") if isinstance(body, dict) else None
            if not message and response.status_code in (502, 503, 504):
                message = (
                    f"the gpuslice service at {self.api} is not answering (HTTP {response.status_code}); "
                    "it may be restarting: try again in a minute, or ask your admin"
                )
            raise ServiceError(
                message or f"the gpuslice service answered HTTP {response.status_code}",
                response.status_code,
                body,
            )
        return response

    def call(self, method: str, path: str, *, timeout: float | None = None, **kwargs) -> Any:
        response = self.request(method, path, timeout=timeout, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServiceError(
                f"the gpuslice service answered {path} with something that is not JSON "
                f"(HTTP {response.status_code}); is {self.api} the service's URL?",
                response.status_code,
            ) from None

    # ------------------------------------------------------------------ jobs

    def submit(
        self,
        script: str,
        *,
        name: str,
        idempotency_key: str | None = None,
        on_retry: RetryNotice | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Queue a Python script; ``options`` are :meth:`submit_body`'s, the rest :meth:`post_job`'s."""
        body = self.submit_body({"script": script}, name=name, **options)
        return self.post_job(body, idempotency_key=idempotency_key, on_retry=on_retry)

    def submit_cell(
        self,
        payload: bytes,
        *,
        python: str,
        name: str,
        idempotency_key: str | None = None,
        on_retry: RetryNotice | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Queue a cell packed by ``%%submit`` (the payload bytes as the magic made them)."""
        cell = {"payload": base64.b64encode(payload).decode("ascii"), "python": python}
        body = self.submit_body({"cell": cell}, name=name, **options)
        return self.post_job(body, idempotency_key=idempotency_key, on_retry=on_retry)

    def post_job(
        self, body: dict[str, Any], *, idempotency_key: str | None = None, on_retry: RetryNotice | None = None
    ) -> dict[str, Any]:
        """``POST jobs`` under an idempotency key (a fresh one unless given), sent again under the
        same key while the answer is lost (:attr:`ServiceError.retryable`), after each of
        ``retry_delays_s``; ``on_retry(error, delay_s)`` is told before each wait. The answer is
        the job, whichever send stored it."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()}
        for delay_s in (*self.retry_delays_s, None):
            try:
                return self.call("POST", "jobs", json=body, headers=headers)
            except ServiceError as error:
                if delay_s is None or not error.retryable:
                    raise
                if on_retry is not None:
                    on_retry(error, delay_s)
                time.sleep(delay_s)
        raise AssertionError("unreachable: the last send raises or returns")

    @staticmethod
    def submit_body(
        payload: dict[str, Any],
        *,
        name: str,
        gpus: int = 1,
        priority: str = Priority.normal.name,
        time_limit: str | float | None = None,
        workdir: str | None = None,
        gpu_models: list[str] | None = None,
        environment: dict[str, str] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The body of ``POST jobs``: the payload (``script`` or ``cell``) and the job's request,
        leaving out what was not given so that the service's defaults apply."""
        body: dict[str, Any] = {"name": name, **payload, "gpus": gpus, "priority": priority}
        optional = {
            "time_limit": time_limit,
            "workdir": workdir,
            "gpu_models": gpu_models,
            "environment": environment,
            "provenance": provenance,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return body

    def result(self, job_id: str) -> dict[str, Any]:
        """How a job ended; for a cell job the names of its values or its exception (see the API)."""
        return self.call("GET", f"jobs/{job_id}/result")

    def result_values(self, job_id: str) -> bytes:
        """The pickled ``{name: value}`` a cell job returned, as bytes; unpickle only what you trust."""
        return self.request("GET", f"jobs/{job_id}/result/values", timeout=self.timeout + 60).content

    def jobs(self, state: str | None = None, all_users: bool = False) -> list[dict[str, Any]]:
        params = {
            key: value for key, value in (("state", state), ("all", "1" if all_users else None)) if value
        }
        return self.call("GET", "jobs", params=params)["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"jobs/{job_id}")

    def logs(self, job_id: str, offset: int = 0, follow: bool = False) -> dict[str, Any]:
        params = {"offset": offset, **({"follow": "1"} if follow else {})}
        return self.call("GET", f"jobs/{job_id}/logs", params=params, timeout=self.timeout + 30)

    def follow_logs(self, job_id: str, offset: int = 0) -> Iterator[str]:
        """Log text as it is written, until the job has ended and everything was read."""
        while True:
            chunk = self.logs(job_id, offset, follow=True)
            if chunk["data"]:
                yield chunk["data"]
            offset = chunk["next_offset"]
            if chunk["done"] and not chunk["data"]:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.call("POST", f"jobs/{job_id}/cancel")

    def wait(self, job_id: str, poll_seconds: float = 2.0, timeout: float | None = None) -> dict[str, Any]:
        """The job once it has ended; ``TimeoutError`` if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job_state(job) in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job_state(job)} after {timeout:g}s")
            time.sleep(poll_seconds)


def job_state(job: dict[str, Any]) -> str:
    """The state of a job answer, whether the job is at the top level or under ``"job"``."""
    return (job.get("job") or job).get("state", "")
