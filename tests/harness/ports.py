"""Free loopback ports for the processes a test starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now.

    The probe socket is closed before the port is handed out, so another process could take it
    first; the kernel hands out ports in turn, which makes that rare enough for tests.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
