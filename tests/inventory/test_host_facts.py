"""This host's CPU and memory, which local sources report beside its GPUs."""

from __future__ import annotations

import os

from spawner.inventory import host


def test_this_host_has_some_cpu_and_memory():
    assert host.cpu_milli() >= 1000
    assert host.cpu_milli() % 1000 == 0
    assert host.memory_mib() > 0
    assert host.host_name()


def test_cpu_count_falls_back_when_affinity_is_unknown(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)

    assert host.cpu_milli() == 3000


def test_memory_falls_back_to_proc_meminfo_when_sysconf_cannot_say(monkeypatch, tmp_path):
    def no_sysconf(name):
        raise ValueError(f"unrecognized configuration name {name}")

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:         1000 kB\nMemTotal:       16384000 kB\n")
    monkeypatch.setattr(os, "sysconf", no_sysconf)
    monkeypatch.setattr(host, "MEMINFO", meminfo)

    assert host.memory_mib() == 16000


def test_memory_is_zero_when_nothing_can_say(monkeypatch, tmp_path):
    def no_sysconf(name):
        raise OSError("no sysconf here")

    monkeypatch.setattr(os, "sysconf", no_sysconf)
    monkeypatch.setattr(host, "MEMINFO", tmp_path / "absent")

    assert host.memory_mib() == 0
