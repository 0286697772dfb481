"""The spawner's side of the gpuslice service's REST API: availability, grant, release, GPUs.

Every call goes through tornado's AsyncHTTPClient so that the hub's event loop never waits on the
service. Failures come back as two kinds of exception the spawner turns into messages for people:
:class:`ServiceUnavailable` (the service did not answer, or answered with its own failure) and
:class:`LeaseRefused` (it answered, and said no: quota, no capacity, or a bad request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

API_PATH = "api/v1/"


class ServiceUnavailable(Exception):
    """The gpuslice service could not be reached or failed to answer; ``str()`` says how."""


class LeaseRefused(Exception):
    """The service answered a lease request with a refusal (HTTP 409 or 400).

    ``reason`` is the service's word for it: ``quota``, ``no_capacity``, or ``reclaiming`` (batch
    jobs are giving back the dev GPUs the slice needs: ask again under the same lease id after
    ``retry_after`` seconds); ``details`` is the whole answer, e.g. the ``gpus`` being given back.
    """

    def __init__(
        self, message: str, status: int, reason: str | None = None, details: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        self.details = details or {}

    @property
    def reclaiming(self) -> bool:
        return self.reason == "reclaiming"

    @property
    def retry_after(self) -> float:
        """Seconds the service asks the caller to wait before asking again (1 if it gave none)."""
        try:
            return max(1.0, float(self.details.get("retry_after", 1)))
        except (TypeError, ValueError):
            return 1.0


@dataclass(frozen=True)
class ServiceClient:
    """Calls under ``base_url`` (the service's prefix, e.g. http://127.0.0.1:10101/services/gpuslice/)."""

    base_url: str
    api_token: str
    timeout: float = 10.0

    def url(self, path: str, **query: str) -> str:
        url = self.base_url.rstrip("/") + "/" + API_PATH + path
        return f"{url}?{urlencode(query)}" if query else url

    async def call(self, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """``(status, JSON body)`` for any answer the service gave; raises only when it gave none."""
        request = HTTPRequest(
            url,
            method=method,
            headers={"Authorization": f"token {self.api_token}", "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else None,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError as error:
            raise ServiceUnavailable(f"cannot reach {self.base_url} ({error.strerror or error})") from error
        except HTTPClientError as error:
            raise ServiceUnavailable(f"no answer from {self.base_url} ({error})") from error
        if response.code == 599:
            raise ServiceUnavailable(f"no answer from {self.base_url} ({response.error})")
        try:
            payload = json.loads(response.body) if response.body else {}
        except ValueError:
            payload = {"message": response.body.decode("utf-8", "replace")[:200]}
        return response.code, payload

    @staticmethod
    def failure(status: int, payload: Any) -> ServiceUnavailable:
        message = payload.get("message") if isinstance(payload, dict) else None
        return ServiceUnavailable(f"the service answered {status}: {message or 'no message'}")

    async def availability(self, user: str) -> dict[str, Any]:
        """Every profile ``user`` may choose, with free slices and the reason when refused."""
        status, payload = await self.call("GET", self.url("availability", user=user))
        if status != 200:
            raise self.failure(status, payload)
        return payload

    async def gpus(self) -> list[dict[str, Any]]:
        status, payload = await self.call("GET", self.url("gpus"))
        if status != 200:
            raise self.failure(status, payload)
        return payload["gpus"]

    async def allocate(self, *, lease_id: str, user: str, holder: str, profile: str) -> dict[str, Any]:
        """The lease granted (or already granted under ``lease_id``); :class:`LeaseRefused` if not."""
        body = {"lease_id": lease_id, "user": user, "holder": holder, "profile": profile}
        status, payload = await self.call("POST", self.url("leases"), body)
        if status in (200, 201):
            return payload["lease"]
        if status in (400, 409):
            details = payload if isinstance(payload, dict) else {}
            message = details.get("message")
            raise LeaseRefused(
                message or f"refused with HTTP {status}", status, details.get("reason"), details
            )
        raise self.failure(status, payload)

    async def lease(self, lease_id: str) -> dict[str, Any] | None:
        """The lease ``lease_id`` (live or released), or None when the service has none."""
        status, payload = await self.call("GET", self.url(f"leases/{quote(lease_id, safe='')}"))
        if status == 404:
            return None
        if status != 200:
            raise self.failure(status, payload)
        return payload["lease"]

    async def release(self, lease_id: str) -> bool:
        """Give the lease back; True if the service had it, False if it never did (404)."""
        status, payload = await self.call("DELETE", self.url(f"leases/{quote(lease_id, safe='')}"))
        if status == 404:
            return False
        if status != 200:
            raise self.failure(status, payload)
        return True
