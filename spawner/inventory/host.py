"""Facts about the machine this process runs on: its name, CPU count and memory.

Local sources (NVML, simulated GPUs) describe this host as one node; the allocator needs its CPU and
memory capacity beside its GPUs to place servers that ask for both.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

MIB = 1024 * 1024
MEMINFO = Path("/proc/meminfo")


def host_name() -> str:
    return socket.gethostname()


def cpu_milli() -> int:
    """CPUs this process may run on, in milli-CPU.

    The affinity mask is preferred over the machine's count because a hub started under taskset or
    in a cpuset container can only use the CPUs it is given.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 0
    return count * 1000


def memory_mib() -> int:
    """Physical memory of the host in MiB, from sysconf or else /proc/meminfo; 0 if neither says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
    except (AttributeError, ValueError, OSError):
        return _meminfo_total_mib()


def _meminfo_total_mib() -> int:
    try:
        text = MEMINFO.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) // 1024
    return 0
