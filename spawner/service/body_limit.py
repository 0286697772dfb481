"""Request bodies over the service's limit are refused from their headers, with a JSON 413.

The service never holds a body it will refuse: a cell payload is tens of MiB at most, and a client
announcing 110 MB gets its answer before a byte of it is read. Tornado's own limit answers a bare
400; this one answers as every other error of the service does.
"""

from __future__ import annotations

import re
from typing import Any

from tornado import httputil, web

from spawner.core.units import describe_size

from .api.base import error_json


class BodyLimit(httputil.HTTPMessageDelegate):
    """Refuses a request whose body is over ``limit`` bytes with the service's JSON 413, before
    the body is read.

    Tornado's own limit (``HTTPServer(max_body_size=)``) answers a bare 400 with no body. This
    delegate sees each request's headers first: a ``Content-Length`` over the limit (or one that is
    not a byte count) is answered at once, and the body is never read: the headers tornado reads
    next lose their length, and the connection closes once the answer is sent, as tornado does
    for any answer that comes before the body. A chunked body has no length to read in advance: it
    is counted as it arrives and answered as soon as it passes the limit, nothing of it kept.
    """

    def __init__(self, delegate: httputil.HTTPMessageDelegate, connection: Any, limit: int):
        self.delegate = delegate
        self.connection = connection
        self.limit = limit
        self.received = 0
        self.refused = False

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        declared = headers.get("Content-Length")
        if declared is not None:
            lengths = set(re.split(r",[ \t]*", declared.strip()))  # a proxy may repeat it
            length = lengths.pop() if len(lengths) == 1 else ""
            if not re.fullmatch(r"[0-9]{1,19}", length):
                message = f"the Content-Length header {declared[:40]!r} is not one byte count"
                return self.refuse(headers, 400, message)
            if int(length) > self.limit:
                return self.refuse(headers, 413, self.too_large(int(length)))
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            # Counted here instead, so that the answer is the JSON one (tornado's check stays off).
            self.connection.set_max_body_size(2**63 - 1)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        if self.refused:
            return None
        self.received += len(chunk)
        if self.received > self.limit:
            self.delegate.on_connection_close()
            return self.refuse(None, 413, self.too_large(None))
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.delegate.on_connection_close()

    def too_large(self, size: int | None) -> str:
        sent = f"is {describe_size(size)}" if size is not None else f"passed {describe_size(self.limit)}"
        return (
            f"the body {sent}; the service takes at most {describe_size(self.limit)} "
            "(GPUSliceService.max_body_bytes) — put large data in files the job reads"
        )

    def refuse(self, headers: httputil.HTTPHeaders | None, status: int, message: str) -> None:
        self.refused = True
        if headers is not None:
            # Tornado reads next the body these headers announce: without them, it reads none.
            for name in ("Content-Length", "Transfer-Encoding"):
                headers.pop(name, None)
        body = error_json(status, message).encode()
        self.connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", status, httputil.responses[status]),
            httputil.HTTPHeaders(
                {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"}
            ),
            body,
        )
        self.connection.finish()
        return None


class ServiceWebApplication(web.Application):
    """The service's tornado application: every request passes :class:`BodyLimit` first."""

    def start_request(self, server_conn: object, request_conn: Any) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        return BodyLimit(delegate, request_conn, self.settings["max_body_bytes"])
